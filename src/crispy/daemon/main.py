"""crispyd: flags, config, then the daemon until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from crispy import __version__, config
from crispy.daemon.app import Daemon, StartupError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="crispyd",
        description="crispy: a Kubernetes container runtime serving the CRI on a unix socket.",
    )
    p.add_argument(
        "--config",
        help=f"TOML config file (default: {config.DEFAULT_CONFIG_PATH} when it exists)",
    )
    p.add_argument("--root", help=f"persistent state dir (default: {config.DEFAULT_ROOT})")
    p.add_argument("--state", help=f"runtime state dir, tmpfs (default: {config.DEFAULT_STATE})")
    p.add_argument("--listen", help=f"CRI socket (default: {config.DEFAULT_ENDPOINT})")
    p.add_argument("--log-level", choices=config.LOG_LEVELS, help="default: info")
    p.add_argument("--version", action="version", version=f"crispyd {__version__}")
    return p.parse_args(argv)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # grpc's and asyncio's own debug chatter drowns crispy's.
    logging.getLogger("grpc").setLevel(logging.INFO)
    logging.getLogger("asyncio").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {
        "root": args.root,
        "state": args.state,
        "listen": args.listen,
        "log_level": args.log_level,
    }
    try:
        cfg = config.load(args.config, overrides)
    except config.ConfigError as e:
        print(f"crispyd: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    try:
        return asyncio.run(Daemon(cfg).run())
    except StartupError as e:
        print(f"crispyd: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
