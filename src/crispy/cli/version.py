"""`crispy version` and `crispy info`."""

from __future__ import annotations

import argparse
from typing import Any

from crispy.api import pb
from crispy.cli import output
from crispy.cli.client import CriClient


def register(sub: Any) -> None:
    p = sub.add_parser("version", help="print the runtime's name and versions")
    p.add_argument("-o", "--output", choices=output.FORMATS, default="table")
    p.set_defaults(func=version)

    p = sub.add_parser("info", help="print the runtime's status and configuration")
    p.add_argument("-o", "--output", choices=output.FORMATS, default="json")
    p.set_defaults(func=info)


def version(client: CriClient, args: argparse.Namespace) -> int:
    resp = client.runtime.Version(pb.VersionRequest(version="v1"), timeout=client.timeout)
    if args.output == "table":
        output.print_pairs(
            [
                ("Version", resp.version),
                ("RuntimeName", resp.runtime_name),
                ("RuntimeVersion", resp.runtime_version),
                ("RuntimeApiVersion", resp.runtime_api_version),
            ]
        )
    else:
        output.print_data(output.to_dict(resp), args.output)
    return 0


def status_document(resp: pb.StatusResponse) -> dict[str, Any]:
    """crictl info's shape: the status message, then each info entry decoded from JSON."""
    doc: dict[str, Any] = {"status": output.to_dict(resp.status)}
    if resp.runtime_handlers:
        doc["runtimeHandlers"] = [output.to_dict(h) for h in resp.runtime_handlers]
    doc.update(output.decode_info(resp.info))
    return doc


def info(client: CriClient, args: argparse.Namespace) -> int:
    resp = client.runtime.Status(pb.StatusRequest(verbose=True), timeout=client.timeout)
    if args.output != "table":
        output.print_data(status_document(resp), args.output)
        return 0
    output.print_table(
        ["CONDITION", "STATUS", "REASON", "MESSAGE"],
        [(c.type, str(c.status).lower(), c.reason, c.message) for c in resp.status.conditions],
    )
    print()
    output.print_table(
        ["HANDLER", "RECURSIVE READ-ONLY MOUNTS", "USER NAMESPACES"],
        [
            (
                h.name or "(default)",
                str(h.features.recursive_read_only_mounts).lower(),
                str(h.features.user_namespaces).lower(),
            )
            for h in resp.runtime_handlers
        ],
    )
    return 0
