"""crispyd's baseline: cold start to first answer, CRI call latency, resident memory.

kubelet calls Status and Version every few seconds and ListPodSandbox/ListContainers
every second per PLEG relist, so a runtime's per-call overhead is paid all day.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from crispy.api import pb
from support.daemon import Crispyd


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _latencies(call, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append((time.perf_counter() - t) * 1000)
    return out


def run(calls: int = 2000) -> list[tuple[str, str]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="crispy-bench-") as tmp:
        d = Crispyd(Path(tmp), config='log_level = "warning"\n')
        t = time.perf_counter()
        d.start()
        results.append(("cold start to first Version", f"{(time.perf_counter() - t):.2f} s"))
        try:
            with d.client() as c:
                for name, call in (
                    ("Version", lambda: c.runtime.Version(pb.VersionRequest())),
                    ("Status", lambda: c.runtime.Status(pb.StatusRequest())),
                ):
                    _latencies(call, 100)  # warm up
                    lat = sorted(_latencies(call, calls))
                    p50 = statistics.median(lat)
                    p99 = lat[int(len(lat) * 0.99)]
                    results.append((f"{name} latency p50 / p99", f"{p50:.3f} / {p99:.3f} ms"))
            assert d.proc is not None
            results.append(("crispyd RSS after calls", f"{_rss_kib(d.proc.pid) / 1024:.1f} MiB"))
        finally:
            d.stop()
    return results
