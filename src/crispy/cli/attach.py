"""`crispy attach [-i] [-t] [--transport spdy|websocket] ID`, as crictl has it.

CRI Attach gives a single-use streaming URL onto a running container's own stdio; the session
runs like a streamed exec (cli/terminal.py stream_session) until the container's output ends
or we are stopped. `-t` must match the container's config (`tty`): the runtime attaches to
the terminal, or to the separate stdout and stderr, that the container was created with.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from crispy.api import pb
from crispy.cli.client import CriClient
from crispy.cli.lookups import IDLookupError, resolve_container
from crispy.cli.terminal import add_stream_flags, stream_session


def register(sub: Any) -> None:
    p = sub.add_parser("attach", help="attach to a running container's stdio")
    add_stream_flags(p)
    p.add_argument("id", metavar="ID", help="container ID or unique prefix")
    p.set_defaults(func=cmd_attach)


def cmd_attach(client: CriClient, args: argparse.Namespace) -> int:
    try:
        cid = resolve_container(client, args.id)
    except IDLookupError as e:
        print(f"crispy attach: {e}", file=sys.stderr)
        return 1
    req = pb.AttachRequest(
        container_id=cid,
        stdin=args.interactive,
        tty=args.tty,
        stdout=True,
        stderr=not args.tty,
    )
    url = client.runtime.Attach(req, timeout=client.timeout).url
    return stream_session(
        url, stdin=args.interactive, tty=args.tty, transport=args.transport, name="attach"
    )
