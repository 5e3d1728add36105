"""crispyd's metrics registry and its HTTP endpoint (Prometheus text format).

Everything lives in a crispy-owned registry (never prometheus-client's global one),
so two daemons or tests in one process don't collide. While an endpoint runs, its
`Metrics` is the process's current one (`crispy.metrics.current()`), which the call
wrappers and pulls record into.

Pod and container counts by state, and the bytes pulls fetched, are read at scrape
time from callables the daemon hands over (`set_state_sources`,
`set_pull_bytes_source`); the scrape runs on the event loop, like the managers.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from crispy import metrics as hooks
from crispy.config import split_host_port
from crispy.containers import record as container_record
from crispy.sandbox import pod as pod_record

log = logging.getLogger(__name__)

# 0.5 ms (Version, ListPodSandbox) .. 60 s (a slow StopContainer, ExecSync); pulls longer.
RPC_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
PULL_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

# States always reported (as 0 when empty), so a dashboard sees every series.
POD_STATES = (pod_record.CREATING, pod_record.READY, pod_record.NOTREADY)
CONTAINER_STATES = (
    container_record.CREATING,
    container_record.CREATED,
    container_record.RUNNING,
    container_record.EXITED,
)

# A scrape in flight when crispyd stops gets this long to finish.
SHUTDOWN_GRACE = 2.0

StateSource = Callable[[], Iterable[str]]
BytesSource = Callable[[], float]


class Metrics:
    """One daemon's metrics: a registry of its own, with crispy's series and process ones."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpc_requests = Counter(
            "crispy_grpc_requests",
            "gRPC calls handled, by service, method and status code.",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.rpc_duration = Histogram(
            "crispy_grpc_request_duration_seconds",
            "Time from a gRPC call's start to its last response or error.",
            ["service", "method"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.pull_duration = Histogram(
            "crispy_image_pull_duration_seconds",
            "Duration of each successful image pull.",
            buckets=PULL_BUCKETS,
            registry=self.registry,
        )
        self.streams = Counter(
            "crispy_streaming_sessions",
            "Streaming sessions (exec, attach, portforward) upgraded, by kind and transport.",
            ["kind", "transport"],
            registry=self.registry,
        )
        self.streams_active = Gauge(
            "crispy_streaming_sessions_active",
            "Streaming sessions open now, by kind and transport.",
            ["kind", "transport"],
            registry=self.registry,
        )
        self._pods: StateSource | None = None
        self._containers: StateSource | None = None
        self._pull_bytes: BytesSource | None = None
        self.registry.register(_ScrapeTimeCollector(self))
        ProcessCollector(namespace="", registry=self.registry)

    def set_state_sources(
        self, pods: StateSource | None = None, containers: StateSource | None = None
    ) -> None:
        """Callables giving the state of every pod and every container, read per scrape."""
        if pods is not None:
            self._pods = pods
        if containers is not None:
            self._containers = containers

    def set_pull_bytes_source(self, source: BytesSource) -> None:
        """A callable giving the compressed bytes pulls fetched so far, read per scrape."""
        self._pull_bytes = source

    def observe_rpc(self, service: str, method: str, code: str, seconds: float) -> None:
        self.rpc_requests.labels(service, method, code).inc()
        self.rpc_duration.labels(service, method).observe(seconds)

    def observe_pull(self, seconds: float) -> None:
        self.pull_duration.observe(seconds)

    def observe_stream(self, kind: str, transport: str, delta: int) -> None:
        if delta > 0:
            self.streams.labels(kind, transport).inc()
        self.streams_active.labels(kind, transport).inc(delta)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape body and its content type (OpenMetrics when the scraper asks)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _ScrapeTimeCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield _by_state("crispy_pods", "Pod sandboxes by state.", m._pods, POD_STATES)
        yield _by_state(
            "crispy_containers", "Containers by state.", m._containers, CONTAINER_STATES
        )
        pulled = CounterMetricFamily(
            "crispy_image_pull_bytes",
            "Compressed layer bytes image pulls fetched from registries.",
        )
        if m._pull_bytes is not None:
            try:
                pulled.add_metric([], m._pull_bytes())
            except Exception:
                log.exception("metrics: reading pulled bytes failed")
        else:
            pulled.add_metric([], 0)
        yield pulled


def _by_state(
    name: str, doc: str, source: StateSource | None, known: tuple[str, ...]
) -> GaugeMetricFamily:
    counts: Tally[str] = Tally(dict.fromkeys(known, 0))
    if source is not None:
        try:
            counts.update(source())
        except Exception:
            log.exception("metrics: reading %s failed", name)
    family = GaugeMetricFamily(name, doc, labels=["state"])
    for state, n in sorted(counts.items()):
        family.add_metric([state], n)
    return family


# -- the HTTP endpoint --------------------------------------------------------------------


class MetricsEndpoint:
    """GET /metrics over HTTP, served by aiohttp in the daemon's event loop."""

    def __init__(self, metrics: Metrics, address: str) -> None:
        self.metrics = metrics
        self.address = address
        self._runner: web.AppRunner | None = None
        self.urls: list[str] = []

    async def start(self) -> list[str]:
        """Bind and serve; make `metrics` current. The URLs served; OSError if it can't bind."""
        host, port = split_host_port(self.address)
        # A `_created` timestamp series beside every counter and histogram doubles the
        # scrape for nothing a dashboard uses (process-wide: crispyd has only these).
        prometheus_client.disable_created_metrics()
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE)
        # Current before the first await: calls the gRPC server takes meanwhile count.
        hooks.set_current(self.metrics)
        try:
            await runner.setup()
            # No host: every interface (IPv4 and IPv6 where the host has it).
            await web.TCPSite(runner, host or None, port).start()
        except BaseException:
            hooks.set_current(None)
            await runner.cleanup()
            raise
        self._runner = runner
        self.urls = [_url(a) for a in runner.addresses]
        for url in self.urls:
            log.info("metrics on %s", url)
        return self.urls

    async def stop(self) -> None:
        if hooks.current() is self.metrics:
            hooks.set_current(None)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _scrape(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})


def _url(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


__all__ = ["Metrics", "MetricsEndpoint"]
