"""crispyd's own metrics: the [metrics] config, the registry, the call wrappers' counts,
and the /metrics endpoint of a real crispyd over loopback."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crispy import errors, metrics
from crispy.api import pb
from crispy.config import ConfigError, from_table, split_host_port
from crispy.cri import interceptor as cri_errors
from crispy.metrics.prometheus import Metrics
from support.daemon import Crispyd, default_config, run_crispyd
from support.registry_fixtures import TestImages

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

RUNTIME = "runtime.v1.RuntimeService"
IMAGE = "runtime.v1.ImageService"


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by (sample name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


# -- config ---------------------------------------------------------------------------------


def test_metrics_are_off_by_default() -> None:
    assert from_table({}).metrics.address == ""
    assert from_table({}).to_dict()["metrics"] == {"address": ""}


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("127.0.0.1:9433", ("127.0.0.1", 9433)),
        (":9433", ("", 9433)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:65535", ("::1", 65535)),
        ("localhost:1", ("localhost", 1)),
        ("node-1.example.org:80", ("node-1.example.org", 80)),
    ],
)
def test_good_addresses(address: str, parsed: tuple[str, int]) -> None:
    assert split_host_port(address) == parsed
    assert from_table({"metrics": {"address": address}}).metrics.address == address


@pytest.mark.parametrize(
    "address",
    [
        "9433",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:http",
        "127.0.0.1:\u0663",  # a non-ASCII digit
        "::1:9433",
        "[not-v6]:9433",
        "bad host:9433",
        "http://127.0.0.1:9433",
        "127.0.0.1:9433/metrics",
        9433,
        True,
    ],
)
def test_bad_address_names_the_key(address: object) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.address"):
        from_table({"metrics": {"address": address}})


def test_unknown_metrics_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'metrics\.port'"):
        from_table({"metrics": {"port": 9433}})


# -- the registry ---------------------------------------------------------------------------


def test_registries_are_crispys_own() -> None:
    a, b = Metrics(), Metrics()  # a second one does not collide with the first
    a.observe_rpc(RUNTIME, "Version", "OK", 0.001)
    got = parse(prometheus_client.generate_latest(a.registry).decode())
    assert value(got, "crispy_grpc_requests_total", service=RUNTIME, method="Version", code="OK")
    assert (
        value(
            parse(prometheus_client.generate_latest(b.registry).decode()),
            "crispy_grpc_requests_total",
            service=RUNTIME,
            method="Version",
            code="OK",
        )
        is None
    )
    default = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "crispy_" not in default


def test_state_gauges_count_by_state_and_show_known_states_empty() -> None:
    m = Metrics()
    got = parse(m.exposition()[0].decode())
    for state in ("creating", "ready", "notready"):
        assert value(got, "crispy_pods", state=state) == 0
    for state in ("creating", "created", "running", "exited"):
        assert value(got, "crispy_containers", state=state) == 0
    assert value(got, "crispy_image_pull_bytes_total") == 0

    pods = ["ready", "ready", "notready"]
    m.set_state_sources(pods=lambda: pods, containers=lambda: iter(["running", "odd"]))
    m.set_pull_bytes_source(lambda: 1234)
    got = parse(m.exposition()[0].decode())
    assert value(got, "crispy_pods", state="ready") == 2
    assert value(got, "crispy_pods", state="notready") == 1
    assert value(got, "crispy_pods", state="creating") == 0
    assert value(got, "crispy_containers", state="running") == 1
    assert value(got, "crispy_containers", state="odd") == 1
    assert value(got, "crispy_image_pull_bytes_total") == 1234
    pods.append("creating")  # read again at every scrape
    assert value(parse(m.exposition()[0].decode()), "crispy_pods", state="creating") == 1


def test_a_failing_source_does_not_break_the_scrape() -> None:
    m = Metrics()

    def broken() -> list[str]:
        raise RuntimeError("boom")

    m.set_state_sources(pods=broken)
    got = parse(m.exposition()[0].decode())
    assert value(got, "crispy_pods", state="ready") == 0
    assert value(got, "crispy_containers", state="running") == 0


def test_process_metrics_and_openmetrics() -> None:
    m = Metrics()
    body, content_type = m.exposition()
    assert content_type.startswith("text/plain")
    got = parse(body.decode())
    assert (value(got, "process_resident_memory_bytes") or 0) > 0
    body, content_type = m.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


# -- the call wrappers ----------------------------------------------------------------------


class FakeContext:
    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        raise grpc.aio.AbortError()

    def code(self) -> grpc.StatusCode | None:
        return self._code


class Group:
    SERVICE = "RuntimeService"

    async def Version(self, request: Any, context: Any) -> str:
        return "v"

    async def PodSandboxStatus(self, request: Any, context: Any) -> str:
        raise errors.NotFound("no such pod")

    async def Broken(self, request: Any, context: Any) -> str:
        raise ValueError("bug")

    async def GetContainerEvents(self, request: Any, context: Any) -> AsyncIterator[int]:
        yield 1
        yield 2


@pytest.fixture
def current() -> Iterator[Metrics]:
    m = Metrics()
    metrics.set_current(m)
    try:
        yield m
    finally:
        metrics.set_current(None)


def test_wrappers_count_and_time_calls(current: Metrics) -> None:
    g = Group()

    async def calls() -> list[int]:
        version = cri_errors.unary("Version", g.Version)
        for _ in range(3):
            assert await version(None, FakeContext()) == "v"
        for name in ("PodSandboxStatus", "Broken"):
            with pytest.raises(grpc.aio.AbortError):
                await cri_errors.unary(name, getattr(g, name))(None, FakeContext())
        stream = cri_errors.streaming("GetContainerEvents", g.GetContainerEvents)
        items = [i async for i in stream(None, FakeContext())]
        # A handler of no call group: the service comes from the caller.
        await cri_errors.unary("Import", g.Version, service="crispy.v1.Images")(None, FakeContext())
        return items

    assert asyncio.run(calls()) == [1, 2]
    got = parse(current.exposition()[0].decode())
    total = "crispy_grpc_requests_total"
    assert value(got, total, service=RUNTIME, method="Version", code="OK") == 3
    assert value(got, total, service=RUNTIME, method="PodSandboxStatus", code="NOT_FOUND") == 1
    assert value(got, total, service=RUNTIME, method="Broken", code="UNKNOWN") == 1
    assert value(got, total, service=RUNTIME, method="GetContainerEvents", code="OK") == 1
    assert value(got, total, service="crispy.v1.Images", method="Import", code="OK") == 1
    hist = "crispy_grpc_request_duration_seconds"
    assert value(got, f"{hist}_count", service=RUNTIME, method="Version") == 3
    assert value(got, f"{hist}_bucket", service=RUNTIME, method="Version", le="+Inf") == 3
    assert value(got, f"{hist}_bucket", service=RUNTIME, method="Version", le="60.0") == 3
    assert value(got, f"{hist}_bucket", service=RUNTIME, method="Version", le="0.0005") is not None


def test_wrappers_record_nothing_without_an_endpoint() -> None:
    assert metrics.current() is None

    async def call() -> str:
        return str(await cri_errors.unary("Version", Group().Version)(None, FakeContext()))

    assert asyncio.run(call()) == "v"


def test_a_cancelled_call_counts_as_cancelled(current: Metrics) -> None:
    async def slow(request: Any, context: Any) -> None:
        await asyncio.sleep(60)

    handler = cri_errors.unary("Slow", slow, "s")

    async def call() -> None:
        await handler(None, FakeContext())

    async def run() -> None:
        task = asyncio.create_task(call())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    got = parse(current.exposition()[0].decode())
    assert value(got, "crispy_grpc_requests_total", service="s", method="Slow", code="CANCELLED")


# -- a real crispyd ---------------------------------------------------------------------------


def metrics_url(d: Crispyd, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", d.log())
        if m:
            return m.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no metrics URL in the log:\n{d.log()}")


def scrape(url: str) -> tuple[Samples, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return parse(resp.read().decode()), resp.headers["Content-Type"]


def listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports `pid` listens on: its socket inodes matched against /proc/net/tcp{,6}."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture(scope="module")
def metrics_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crispyd]:
    base = tmp_path_factory.mktemp("metricsd")
    d = Crispyd(base, default_config(base) + '[metrics]\naddress = "127.0.0.1:0"\n')
    d.start()
    yield d
    assert d.stop() == 0


def test_endpoint_serves_call_counts_and_latencies(metrics_daemon: Crispyd) -> None:
    url = metrics_url(metrics_daemon)
    assert metrics_daemon.proc is not None
    assert int(url.split(":")[2].split("/")[0]) in listening_tcp_ports(metrics_daemon.proc.pid)
    before, content_type = scrape(url)
    assert content_type.startswith("text/plain; version=")
    with metrics_daemon.client() as cri:
        for _ in range(3):
            cri.runtime.Version(pb.VersionRequest(), timeout=10)
        missing = pb.ImageStatusRequest(image=pb.ImageSpec(image="example.invalid/none:1"))
        assert not cri.image.ImageStatus(missing, timeout=10).HasField("image")
        with pytest.raises(grpc.RpcError) as e:
            cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id="f00d"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    after, _ = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    total = "crispy_grpc_requests_total"
    assert delta(total, service=RUNTIME, method="Version", code="OK") == 3
    assert delta(total, service=IMAGE, method="ImageStatus", code="OK") == 1
    assert delta(total, service=RUNTIME, method="PodSandboxStatus", code="NOT_FOUND") == 1
    assert delta(total, service=RUNTIME, method="PodSandboxStatus", code="OK") == 0
    hist = "crispy_grpc_request_duration_seconds"
    assert delta(f"{hist}_count", service=RUNTIME, method="Version") == 3
    assert delta(f"{hist}_bucket", service=RUNTIME, method="Version", le="+Inf") == 3
    assert delta(f"{hist}_count", service=RUNTIME, method="PodSandboxStatus") == 1
    assert delta(f"{hist}_sum", service=IMAGE, method="ImageStatus") > 0

    assert value(after, "crispy_pods", state="ready") == 0
    assert value(after, "crispy_pods", state="notready") == 0
    assert value(after, "crispy_containers", state="running") == 0
    assert value(after, "crispy_containers", state="exited") == 0
    assert (value(after, "process_resident_memory_bytes") or 0) > 0
    assert (value(after, "process_open_fds") or 0) > 0
    assert not [name for name, _ in after if name.endswith("_created")]


def test_only_metrics_is_served(metrics_daemon: Crispyd) -> None:
    url = metrics_url(metrics_daemon)
    for path in ("/", "/metric", "/metrics/x"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url.replace("/metrics", path), timeout=10)
        assert e.value.code == 404


def test_pull_bytes_and_duration(metrics_daemon: Crispyd, test_images: TestImages) -> None:
    url = metrics_url(metrics_daemon)
    before, _ = scrape(url)
    img = test_images.layers
    with metrics_daemon.client() as cri:
        cri.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=img.reference)))
    after, _ = scrape(url)
    pulled = (value(after, "crispy_image_pull_bytes_total") or 0) - (
        value(before, "crispy_image_pull_bytes_total") or 0
    )
    assert pulled == sum(layer.size for layer in img.layers)
    count = "crispy_image_pull_duration_seconds_count"
    assert (value(after, count) or 0) - (value(before, count) or 0) == 1
    assert (
        value(after, "crispy_grpc_requests_total", service=IMAGE, method="PullImage", code="OK")
        == 1
    )


def test_a_daemon_without_the_key_has_no_endpoint(crispyd: Crispyd) -> None:
    with crispyd.client() as cri:
        cri.runtime.Version(pb.VersionRequest(), timeout=10)
    assert "metrics on" not in crispyd.log()
    assert crispyd.proc is not None
    # Whatever else it may listen on (a streaming server), none of it serves metrics.
    for port in listening_tcp_ports(crispyd.proc.pid):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                assert b"crispy_" not in r.read()
        except (urllib.error.URLError, ConnectionError):
            pass


def test_a_taken_port_stops_startup(daemon_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = default_config(daemon_dir) + f'[metrics]\naddress = "127.0.0.1:{port}"\n'
        r = run_crispyd(daemon_dir, config)
    assert r.returncode == 1, r.stderr
    assert f"metrics.address: cannot listen on 127.0.0.1:{port}" in r.stderr
    assert not (daemon_dir / "crispy.sock").exists()


def test_streaming_sessions_are_counted_by_kind_and_transport(current: Metrics) -> None:
    from crispy.streaming import portforward
    from crispy.streaming.server import StreamingServer
    from support.portforward_client import spdy

    async def test() -> None:
        server = StreamingServer("127.0.0.1", 0)
        server.handle(portforward.KIND, [portforward.PROTOCOL], portforward.serve)
        await server.start()
        try:
            target = portforward.PortForwardTarget("p", "")
            client = await spdy(
                server.url(portforward.KIND, server.register("portforward", target))
            )
            await asyncio.sleep(0.1)
            got = parse(current.exposition()[0].decode())
            labels = {"kind": "portforward", "transport": "spdy"}
            assert value(got, "crispy_streaming_sessions_total", **labels) == 1
            assert value(got, "crispy_streaming_sessions_active", **labels) == 1
            await client.close()
            for _ in range(50):
                got = parse(current.exposition()[0].decode())
                if value(got, "crispy_streaming_sessions_active", **labels) == 0:
                    break
                await asyncio.sleep(0.05)
            assert value(got, "crispy_streaming_sessions_active", **labels) == 0
            assert value(got, "crispy_streaming_sessions_total", **labels) == 1
        finally:
            await server.stop()

    asyncio.run(asyncio.wait_for(test(), 20))
