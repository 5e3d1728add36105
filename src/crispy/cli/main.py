"""crispy: a CRI client for people at a terminal, for any CRI runtime."""

from __future__ import annotations

import argparse
import sys

import grpc

from crispy import __version__
from crispy.cli import (
    archive,
    attach,
    containers,
    images,
    logs,
    pods,
    portforward,
    run,
    stats,
    version,
)
from crispy.cli.client import ENDPOINT_ENV, CriClient, describe_error
from crispy.config import DEFAULT_ENDPOINT

# Each command module adds its subcommands; later issues add theirs here.
COMMAND_MODULES = [
    version,
    images,
    archive,
    pods,
    containers,
    attach,
    logs,
    run,
    stats,
    portforward,
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crispy",
        description="Talk to a Kubernetes container runtime (crispy, containerd, CRI-O) "
        "over the CRI.",
    )
    p.add_argument(
        "-r",
        "--runtime-endpoint",
        help=f"CRI socket (env {ENDPOINT_ENV}; default {DEFAULT_ENDPOINT})",
    )
    p.add_argument(
        "-i",
        "--image-endpoint",
        help="image service socket, when it differs from the runtime's",
    )
    p.add_argument(
        "-t", "--timeout", type=float, default=10.0, help="seconds per call (default 10)"
    )
    p.add_argument("--version", action="version", version=f"crispy {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    client = CriClient(args.runtime_endpoint, args.image_endpoint, args.timeout)
    try:
        return int(args.func(client, args))
    except grpc.RpcError as e:
        print(f"crispy: {describe_error(e, client.endpoint)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
