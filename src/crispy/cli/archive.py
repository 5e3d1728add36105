"""`crispy import FILE` and `crispy export REF... -o FILE`: images as tar files.

These are crispy's own calls (service crispy.v1.Images), not CRI ones: other
runtimes answer UNIMPLEMENTED. The `images` command group may mount the same
commands as `crispy images import|export` with add_*_args and cmd_*.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import grpc

from crispy.cli.client import CriClient
from crispy.cri.extensions import SERVICE


class Unsupported(Exception):
    """The runtime lacks crispy's extension service."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "import", help="import images from a tar file (OCI image layout or docker save)"
    )
    add_import_args(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export images to an OCI image layout tar file")
    add_export_args(p)
    p.set_defaults(func=cmd_export)


def add_import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="tar file, plain or gzip-compressed")
    p.add_argument(
        "--name",
        metavar="REF",
        help="record the image under this name instead of the archive's (one-image archives)",
    )


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "refs",
        nargs="+",
        metavar="REF",
        help="images to export; without -o, the last argument is the file to write",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="tar file to write")


def _call(client: CriClient, method: str, request: dict[str, Any]) -> dict[str, Any]:
    call = client._image_channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=lambda doc: json.dumps(doc).encode(),
        response_deserializer=lambda data: json.loads(data or b"{}"),
    )
    try:
        # No deadline: an archive of several GB takes as long as the disk needs.
        result: dict[str, Any] = call(request, timeout=None)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise Unsupported() from None
        raise
    return result


def _unsupported(what: str) -> int:
    print(
        f"crispy: this runtime does not support image {what}; crispy's own daemon does",
        file=sys.stderr,
    )
    return 1


def cmd_import(client: CriClient, args: argparse.Namespace) -> int:
    # The daemon opens the file: the path must not depend on our working directory.
    request: dict[str, Any] = {"path": os.path.abspath(args.file)}
    if args.name:
        request["name"] = args.name
    try:
        resp = _call(client, "Import", request)
    except Unsupported:
        return _unsupported("import")
    for image in resp.get("images", []):
        tags = image.get("repoTags") or []
        print(f"imported {image['id']}  {', '.join(tags) if tags else '(no name)'}")
    return 0


def cmd_export(client: CriClient, args: argparse.Namespace) -> int:
    refs = list(args.refs)
    output = args.output
    if output is None:
        if len(refs) < 2:
            print("crispy: export needs a file: REF... FILE, or -o FILE", file=sys.stderr)
            return 2
        output = refs.pop()
    path = os.path.abspath(output)
    try:
        _call(client, "Export", {"refs": refs, "path": path})
    except Unsupported:
        return _unsupported("export")
    print(f"exported {len(refs)} image{'s' if len(refs) != 1 else ''} to {path}")
    return 0
