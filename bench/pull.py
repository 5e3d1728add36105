"""Cold pull of a ~200 MB, 5-layer gzip image of random bytes from a local registry.

Reports MB/s (compressed bytes over wall time of PullImage) and the runtime's peak
RSS (VmHWM), for crispy and, where installed, containerd 1.6's CRI plugin on the
same registry and image in the same run. The bench speaks only CRI, so any runtime
works with `--endpoint` (its RSS is then not measured).

    python -m bench.pull [--mb 200] [--layers 5] [--runs 3] [--no-containerd]
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import contextlib

from bench.runtimes import Containerd
from crispy.api import pb
from crispy.cli.client import CriClient
from support.daemon import Crispyd
from support.images import Layer, image_config, push_image
from support.registry import Registry, sha256_digest


def random_layer(mb: int, seed: int) -> Layer:
    """A layer of incompressible files: what makes a pull network- and disk-bound."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dinfo = tarfile.TarInfo(f"data{seed}")
        dinfo.type = tarfile.DIRTYPE
        dinfo.mode = 0o755
        tf.addfile(dinfo)
        remaining = mb << 20
        i = 0
        while remaining > 0:
            size = min(remaining, 8 << 20)
            info = tarfile.TarInfo(f"data{seed}/blob{i}")
            info.size = size
            tf.addfile(info, io.BytesIO(os.urandom(size)))
            remaining -= size
            i += 1
    tar = buf.getvalue()
    blob = gzip.compress(tar, compresslevel=1, mtime=0)
    return Layer(tar, blob, sha256_digest(blob), sha256_digest(tar), len(blob))


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pull_once(client: CriClient, ref: str) -> float:
    start = time.perf_counter()
    client.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=900)
    return time.perf_counter() - start


def remove(client: CriClient, ref: str) -> None:
    client.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=300)


def drop_caches() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


def measure(name: str, endpoint: str, pid: int | None, ref: str, mb: float, runs: int) -> str:
    times = []
    with CriClient(endpoint, timeout=900) as c:
        for _ in range(runs):
            with contextlib.suppress(Exception):
                remove(c, ref)
            drop_caches()
            times.append(pull_once(c, ref))
        remove(c, ref)
    best, med = min(times), statistics.median(times)
    rss = f"{peak_rss_mib(pid):7.1f} MiB" if pid else "      n/a"
    return (
        f"{name:12} best {mb / best:7.1f} MB/s  median {mb / med:7.1f} MB/s  "
        f"({med:.2f} s)  peak RSS {rss}"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=200)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--endpoint", help="also measure this CRI endpoint")
    p.add_argument("--no-containerd", action="store_true")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="crispy-bench-pull-") as tmp:
        base = Path(tmp)
        registry = Registry(base / "registry").start()
        try:
            t = time.perf_counter()
            layers = [random_layer(args.mb // args.layers, i) for i in range(args.layers)]
            img = push_image(
                registry, "bench/random", "latest", layers, image_config(layers, cmd=["sh"])
            )
            mb = img.size / 1e6
            print(
                f"image: {args.layers} gzip layers, {mb:.1f} MB compressed "
                f"(built and pushed in {time.perf_counter() - t:.1f} s)"
            )
            results = []
            d = Crispyd(base / "crispyd", config='log_level = "warning"\n')
            d.start()
            try:
                assert d.proc is not None
                results.append(
                    measure("crispy", d.endpoint, d.proc.pid, img.reference, mb, args.runs)
                )
            finally:
                d.stop()
            if not args.no_containerd and shutil.which("containerd"):
                ctd = Containerd(base / "containerd")
                ctd.start()
                try:
                    assert ctd.proc is not None
                    results.append(
                        measure(
                            "containerd",
                            f"unix://{ctd.socket}",
                            ctd.proc.pid,
                            img.reference,
                            mb,
                            args.runs,
                        )
                    )
                finally:
                    ctd.stop()
            if args.endpoint:
                results.append(
                    measure(args.endpoint, args.endpoint, None, img.reference, mb, args.runs)
                )
            for line in results:
                print(line)
        finally:
            registry.stop()


if __name__ == "__main__":
    main()
