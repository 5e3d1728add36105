"""Run every benchmark and print what it measured."""

from __future__ import annotations

from bench import daemon_baseline, lifecycle, pull, stats
from bench import exec as exec_bench


def main() -> None:
    for name, value in daemon_baseline.run():
        print(f"{name:40} {value}")
    print()
    pull.main([])
    print()
    lifecycle.main([])
    print()
    stats.main([])
    print()
    exec_bench.main([])


if __name__ == "__main__":
    main()
