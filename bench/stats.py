"""ListContainerStats and ListPodSandboxMetrics latency over many running containers:
crispy vs containerd 1.6.

containerd is measured where it is installed.

Each runtime gets the same set of pods: `--containers` busybox containers (default 100,
five to a pod: 20 pods) running the trap-and-sleep script of bench.lifecycle, so stopping
them is quick. Once every one is RUNNING, 3 untimed ListContainerStats calls warm up (a
runtime's first sample of a container is its costliest), then `--runs` calls (default 50)
are timed one after the other, then the same for ListPodSandboxMetrics (every metric
family of every pod and container; containerd 1.6 has no such call: n/a there); the
report gives p50 and p95 in ms and checks each answer held every container. Both
runtimes run the same local images on their own CNI bridge network, as bench.lifecycle
sets them up; everything the bench made is removed after.
The bench speaks only CRI, so any runtime works with `--endpoint`.

    python -m bench.stats [--containers 100] [--per-pod 5] [--runs 50]
                          [--endpoint unix:///run/x.sock] [--no-containerd] [--no-crispy]
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench import lifecycle
from bench.lifecycle import (
    CALL_TIMEOUT,
    Bench,
    CallFailed,
    HostNetwork,
    Images,
    Net,
    mounts_under,
    on_containerd,
    on_crispy,
    p95,
    push_images,
)
from crispy.api import pb
from crispy.cli.client import CriClient
from support.registry import Registry

WARMUP = 3
START_THREADS = 4  # pods started at a time
RUNNING_TIMEOUT = 120.0  # from the last StartContainer to every container RUNNING
CRISPY_NET = Net("crbstat0", "10.252.4.0/22")
CONTAINERD_NET = Net("crbstatc0", "10.253.4.0/22")
CALL = "ListContainerStats"
METRICS_CALL = "ListPodSandboxMetrics"


@dataclass
class Result(lifecycle.Result):
    containers: int = 0
    samples: list[float] = field(default_factory=list)  # ms per call
    metrics_samples: list[float] = field(default_factory=list)  # ms per ListPodSandboxMetrics
    metrics_count: int = 0  # metrics in the last ListPodSandboxMetrics answer
    setup_s: float = 0.0  # to start every pod and container
    notes: list[str] = field(default_factory=list)

    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


class StatsBench(Bench):
    """bench.lifecycle's Bench, with several containers to a pod (named apart)."""

    def start_pod_with(self, pod_name: str, per_pod: int) -> list[str]:
        pod, pod_cfg = self.start_pod(pod_name, None)
        assert self.image is not None
        cids = []
        for i in range(per_pod):
            config = lifecycle.container_config(self.image, self.token)
            name = f"sleeper-{i}"
            config.metadata.name = name
            config.log_path = f"{name}/0.log"
            create = pb.CreateContainerRequest(
                pod_sandbox_id=pod, config=config, sandbox_config=pod_cfg
            )
            cid = self.call(
                None,
                "CreateContainer",
                functools.partial(self.c.runtime.CreateContainer, create, timeout=CALL_TIMEOUT),
            ).container_id
            start = pb.StartContainerRequest(container_id=cid)
            self.call(
                None,
                "StartContainer",
                functools.partial(self.c.runtime.StartContainer, start, timeout=CALL_TIMEOUT),
            )
            cids.append(cid)
        return cids

    def ours(self, state: pb.ContainerState.ValueType | None = None) -> list[pb.Container]:
        flt = pb.ContainerFilter(label_selector={lifecycle.LABEL: self.token})
        if state is not None:
            flt.state.state = state
        resp = self.call(
            None,
            "ListContainers",
            lambda: self.c.runtime.ListContainers(
                pb.ListContainersRequest(filter=flt), timeout=CALL_TIMEOUT
            ),
        )
        return list(resp.containers)

    def start_all(self, containers: int, per_pod: int) -> list[str]:
        """`containers` containers, `per_pod` to a pod (the last pod may have fewer),
        until ListContainers says every one is RUNNING."""
        sizes = [min(per_pod, containers - i) for i in range(0, containers, per_pod)]
        with ThreadPoolExecutor(START_THREADS) as pool:
            futures = [
                pool.submit(self.start_pod_with, f"bench-stats-{i}", n) for i, n in enumerate(sizes)
            ]
        cids = [cid for f in futures for cid in f.result()]
        deadline = time.monotonic() + RUNNING_TIMEOUT
        while True:
            running = {c.id for c in self.ours(pb.CONTAINER_RUNNING)}
            if running >= set(cids):
                return cids
            if time.monotonic() > deadline:
                raise CallFailed(
                    "ListContainers",
                    RuntimeError(f"{len(set(cids) - running)} containers not RUNNING yet"),
                )
            time.sleep(0.1)

    def list_stats(self) -> list[pb.ContainerStats]:
        resp = self.c.runtime.ListContainerStats(
            pb.ListContainerStatsRequest(
                filter=pb.ContainerStatsFilter(label_selector={lifecycle.LABEL: self.token})
            ),
            timeout=CALL_TIMEOUT,
        )
        return list(resp.stats)

    def list_metrics(self) -> list[pb.PodSandboxMetrics]:
        resp = self.c.runtime.ListPodSandboxMetrics(
            pb.ListPodSandboxMetricsRequest(), timeout=CALL_TIMEOUT
        )
        return list(resp.pod_metrics)


def time_metrics(bench: StatsBench, result: Result, cids: set[str], runs: int) -> None:
    """ListPodSandboxMetrics, warmed up then timed as ListContainerStats is."""
    try:
        for _ in range(WARMUP):
            bench.list_metrics()
    except Exception as e:  # containerd 1.6: Unimplemented
        result.notes.append(f"{METRICS_CALL}: {type(e).__name__}")
        return
    short = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        pods = bench.call(None, METRICS_CALL, bench.list_metrics)
        result.metrics_samples.append((time.perf_counter() - t0) * 1000)
        seen = {c.container_id for p in pods for c in p.container_metrics}
        if not cids <= seen:
            short += 1
    result.metrics_count = sum(
        len(p.metrics) + sum(len(c.metrics) for c in p.container_metrics) for p in pods
    )
    if short:
        result.notes.append(f"{short} of {runs} {METRICS_CALL} answers missed containers")


def measure(
    name: str, endpoint: str, logs: Path, args: argparse.Namespace, pull: list[str], image: str
) -> Result:
    result = Result(name)
    with CriClient(endpoint, timeout=CALL_TIMEOUT) as client:
        bench = StatsBench(client, logs, image)
        try:
            for ref in pull:
                req = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
                bench.call(
                    None, "PullImage", functools.partial(client.image.PullImage, req, timeout=300)
                )
            start = time.perf_counter()
            cids = set(bench.start_all(args.containers, args.per_pod))
            result.setup_s = time.perf_counter() - start
            result.containers = len(cids)
            for _ in range(WARMUP):
                bench.call(None, CALL, bench.list_stats)
            short = 0
            for _ in range(args.runs):
                t0 = time.perf_counter()
                stats = bench.call(None, CALL, bench.list_stats)
                result.samples.append((time.perf_counter() - t0) * 1000)
                if {s.attributes.id for s in stats} != cids:
                    short += 1
            if short:
                result.notes.append(
                    f"{short} of {args.runs} answers did not hold exactly the "
                    f"{len(cids)} containers"
                )
            time_metrics(bench, result, cids, args.runs)
            last = bench.list_stats()
            no_cpu = [s for s in last if not s.cpu.HasField("usage_core_nano_seconds")]
            no_mem = [s for s in last if not s.memory.HasField("working_set_bytes")]
            if no_cpu or no_mem:
                result.notes.append(
                    f"last answer: {len(no_cpu)} without usage_core_nano_seconds, "
                    f"{len(no_mem)} without working_set_bytes"
                )
        except CallFailed as e:
            result.error = str(e)
        finally:
            result.leaks += bench.cleanup()
    return result


# -- runtimes --------------------------------------------------------------------------------


def run_crispy(base: Path, images: Images, args: argparse.Namespace) -> Result:
    pull = [images.pause, images.busybox]
    return on_crispy(
        base,
        images,
        CRISPY_NET,
        lambda endpoint: measure("crispy", endpoint, base / "logs", args, pull, images.busybox),
        lambda error: Result("crispy", error=error),
    )


def run_containerd(base: Path, images: Images, registry: str, args: argparse.Namespace) -> Result:
    pull = [images.pause, images.busybox]
    return on_containerd(
        base,
        images,
        registry,
        CONTAINERD_NET,
        lambda endpoint, _: measure(
            "containerd", endpoint, base / "logs", args, pull, images.busybox
        ),
        lambda error: Result("containerd", error=error),
    )


# -- report ----------------------------------------------------------------------------------


def report(results: list[Result], containers: int) -> None:
    w = max([12, *(len(r.name) + 1 for r in results)])
    for r in results:
        if r.samples:
            v = r.samples
            print(
                f"{r.name:{w}} {CALL} over {r.containers} containers: "
                f"p50 {statistics.median(v):8.2f} ms  p95 {p95(v):8.2f} ms  "
                f"({len(v)} calls; started in {r.setup_s:.1f} s)"
            )
        if r.metrics_samples:
            v = r.metrics_samples
            print(
                f"{r.name:{w}} {METRICS_CALL} over {r.containers} containers: "
                f"p50 {statistics.median(v):8.2f} ms  p95 {p95(v):8.2f} ms  "
                f"({len(v)} calls; {r.metrics_count} metrics an answer)"
            )
        lifecycle.print_outcome(r, r.notes)
    by_name = {r.name: r for r in results}
    crispy, containerd = by_name.get("crispy"), by_name.get("containerd")
    if crispy or containerd:
        a = crispy.median() if crispy else None
        b = containerd.median() if containerd else None
        sa = f"{a:.2f} ms" if a is not None else "n/a"
        sb = f"{b:.2f} ms" if b is not None else "n/a"
        ratio = f" ({a / b:.2f}x)" if a and b else ""
        print(f"{CALL} p50 over {containers} containers: crispy {sa} vs containerd {sb}{ratio}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--containers", type=int, default=100, help="running containers (default 100)")
    p.add_argument("--per-pod", type=int, default=5, help="containers to a pod (default 5)")
    p.add_argument("--runs", type=int, default=50, help="timed calls (default 50)")
    p.add_argument("--endpoint", help="also measure this CRI endpoint")
    p.add_argument("--no-containerd", action="store_true")
    p.add_argument("--no-crispy", action="store_true")
    args = p.parse_args(argv)
    if args.containers < 1 or args.per_pod < 1 or args.runs < 1:
        p.error("--containers, --per-pod and --runs must be at least 1")

    host = HostNetwork()
    base = Path(tempfile.mkdtemp(prefix="crbs-", dir="/tmp"))  # short: crispyd's pod sockets
    results: list[Result] = []
    try:
        registry = Registry(base / "registry").start()
        try:
            images = push_images(registry, base)
            pods = -(-args.containers // args.per_pod)
            print(
                f"stats: {args.containers} running busybox containers in {pods} pods "
                f"({args.per_pod} to a pod); {WARMUP} untimed then {args.runs} timed "
                f"{CALL} calls"
            )
            if not args.no_crispy:
                results.append(run_crispy(base / "c", images, args))
            if not args.no_containerd and shutil.which("containerd"):
                results.append(run_containerd(base / "containerd", images, registry.host, args))
            if args.endpoint:
                try:
                    result = measure(
                        args.endpoint,
                        args.endpoint,
                        base / "logs",
                        args,
                        [images.busybox],
                        images.busybox,
                    )
                except Exception as e:
                    result = Result(args.endpoint, error=f"{type(e).__name__}: {e}")
                results.append(result)
        finally:
            registry.stop()
        report(results, args.containers)
    finally:
        host.restore()
        left = mounts_under(base)
        if left:
            print(f"warning: {base} kept: still mounted there: {', '.join(left)}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
