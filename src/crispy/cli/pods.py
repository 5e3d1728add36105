"""Pod sandbox commands, as crictl has them: runp, pods, inspectp, stopp, rmp.

All plain CRI RuntimeService calls, so they work against any runtime. IDs may be given
as unique prefixes: they are resolved against ListPodSandbox before any call is made.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from google.protobuf.message import Message

from crispy.api import pb
from crispy.cli import output
from crispy.cli.client import CriClient, cancellable, describe_error, unreachable
from crispy.cli.lookups import list_pods, newest, resolve_pods

TRUNCATED_ID = 13  # crictl's truncatedIDLen
DEFAULT_HANDLER = "(default)"
STATES = {"ready": pb.SANDBOX_READY, "notready": pb.SANDBOX_NOTREADY}
STATE_NAMES: dict[int, str] = {pb.SANDBOX_READY: "Ready", pb.SANDBOX_NOTREADY: "NotReady"}


def register(sub: Any) -> None:
    p = sub.add_parser("runp", help="run a pod sandbox from a JSON or YAML PodSandboxConfig")
    p.add_argument("config", metavar="POD.json|POD.yaml", help="the pod sandbox config file")
    p.add_argument(
        "-r",
        "--runtime",
        default="",
        metavar="HANDLER",
        help="runtime handler to use (default: the runtime's default)",
    )
    p.add_argument(
        "--cancel-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="give up after this long (default 0: no limit; the pause image may be pulled)",
    )
    p.set_defaults(func=cmd_runp)

    p = sub.add_parser("pods", help="list pod sandboxes")
    p.add_argument("--id", default="", metavar="PREFIX", help="only pods whose ID starts so")
    p.add_argument(
        "--name", type=_regex, default="", metavar="REGEX", help="only pods whose name matches"
    )
    p.add_argument(
        "--namespace",
        type=_regex,
        default="",
        metavar="REGEX",
        help="only pods whose namespace matches",
    )
    p.add_argument(
        "-s",
        "--state",
        type=str.lower,
        choices=sorted(STATES),
        help="only pods in this state",
    )
    p.add_argument(
        "--label",
        action="append",
        type=_label,
        default=[],
        metavar="KEY=VALUE",
        help="only pods with this label (repeatable)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only pod IDs")
    p.add_argument("-o", "--output", choices=output.FORMATS, default="table")
    p.add_argument("--no-trunc", action="store_true", help="show whole IDs")
    p.add_argument("-l", "--latest", action="store_true", help="show only the newest pod")
    p.add_argument("--last", type=int, default=0, metavar="N", help="show only the N newest pods")
    p.set_defaults(func=cmd_pods)

    p = sub.add_parser("inspectp", help="show the status of one or more pod sandboxes")
    p.add_argument("ids", nargs="+", metavar="POD-ID", help="pod ID or unique prefix")
    p.add_argument("-o", "--output", choices=output.FORMATS, default="json")
    p.set_defaults(func=cmd_inspectp)

    p = sub.add_parser("stopp", help="stop one or more pod sandboxes")
    p.add_argument("ids", nargs="+", metavar="POD-ID", help="pod ID or unique prefix")
    p.set_defaults(func=cmd_stopp)

    p = sub.add_parser("rmp", help="remove one or more pod sandboxes")
    p.add_argument("ids", nargs="*", metavar="POD-ID", help="pod ID or unique prefix")
    p.add_argument("-f", "--force", action="store_true", help="stop a ready pod before removing it")
    p.add_argument("-a", "--all", action="store_true", help="remove every pod")
    p.set_defaults(func=cmd_rmp)


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"{value!r}: not a regular expression: {e}") from None
    return value


def _label(value: str) -> tuple[str, str]:
    key, eq, val = value.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"{value!r}: a label filter is KEY=VALUE")
    return key, val


# -- formatting ------------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """As docker/go-units' HumanDuration, which crictl prints with " ago"."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = math.floor(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def created_ago(created_at_ns: int, now: float | None = None) -> str:
    now = time.time() if now is None else now
    return human_duration(max(0.0, now - created_at_ns / 1e9)) + " ago"


def state_name(state: int) -> str:
    return STATE_NAMES.get(int(state), "Unknown")


def pod_rows(items: Iterable[pb.PodSandbox], no_trunc: bool) -> list[list[str]]:
    now = time.time()
    return [
        [
            p.id if no_trunc else p.id[:TRUNCATED_ID],
            created_ago(p.created_at, now),
            state_name(p.state),
            p.metadata.name,
            p.metadata.namespace,
            str(p.metadata.attempt),
            p.runtime_handler or DEFAULT_HANDLER,
        ]
        for p in items
    ]


def to_dict(message: Message) -> dict[str, Any]:
    """camelCase keys with every field, zero values too, as crictl prints pods.

    A ready pod's state (SANDBOX_READY) and attempt 0 are protobuf zero values, which
    the plain mapping leaves out.
    """
    return MessageToDict(message, always_print_fields_with_no_presence=True)


def status_document(resp: pb.PodSandboxStatusResponse) -> dict[str, Any]:
    """crictl inspectp's shape: the status, then each info entry decoded from JSON."""
    return {"status": to_dict(resp.status), **output.decode_info(resp.info)}


def _mapping(values: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items())) or "<none>"


def status_pairs(status: pb.PodSandboxStatus) -> list[tuple[str, str]]:
    created = datetime.fromtimestamp(status.created_at / 1e9).astimezone()
    ips = [status.network.ip, *(i.ip for i in status.network.additional_ips)]
    return [
        ("ID", status.id),
        ("Name", status.metadata.name),
        ("UID", status.metadata.uid),
        ("Namespace", status.metadata.namespace),
        ("Attempt", str(status.metadata.attempt)),
        ("Status", pb.PodSandboxState.Name(status.state)),
        ("Created", f"{created.isoformat(timespec='seconds')} ({created_ago(status.created_at)})"),
        ("IP Addresses", ", ".join(ip for ip in ips if ip) or "<none>"),
        ("Labels", _mapping(status.labels)),
        ("Annotations", _mapping(status.annotations)),
        ("Runtime handler", status.runtime_handler or DEFAULT_HANDLER),
    ]


# -- config files ----------------------------------------------------------------------------


class ConfigError(Exception):
    """A pod config file that can't be read or parsed: printed, exit 1, nothing sent."""


def load_pod_config(path: str) -> pb.PodSandboxConfig:
    """A PodSandboxConfig from crictl's JSON or YAML (protobuf JSON names, either case)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e.reason} at byte {e.start}") from None
    try:
        # YAML reads JSON too, so a name that is not .json is taken as either.
        doc = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a PodSandboxConfig object, got {_what(doc)}")
    try:
        return ParseDict(doc, pb.PodSandboxConfig())
    except ParseError as e:
        message = str(e).split("\n", 1)[0]
        raise ConfigError(f"{path}: not a PodSandboxConfig: {message}") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line: PyYAML's own message quotes the offending text over several."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        mark = e.problem_mark
        return f"{e.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(e).split())


def _what(doc: Any) -> str:
    return "an empty file" if doc is None else f"a {type(doc).__name__}"


# -- failed calls ----------------------------------------------------------------------------


def _failed_call(action: str, pod_id: str, e: grpc.RpcError) -> None:
    """Print one pod's failed call; a runtime that is not there at all stops the command."""
    if unreachable(e):
        raise e
    print(f"crispy: {action} {pod_id}: {describe_error(e)}", file=sys.stderr)


# -- commands --------------------------------------------------------------------------------


def cmd_runp(client: CriClient, args: argparse.Namespace) -> int:
    try:
        config = load_pod_config(args.config)
    except ConfigError as e:
        print(f"crispy runp: {e}", file=sys.stderr)
        return 1
    req = pb.RunPodSandboxRequest(config=config, runtime_handler=args.runtime)
    resp = cancellable(client.runtime.RunPodSandbox, req, args.cancel_timeout or None)
    print(resp.pod_sandbox_id)
    return 0


def cmd_pods(client: CriClient, args: argparse.Namespace) -> int:
    state = STATES[args.state] if args.state else None
    items = list_pods(client, state, dict(args.label))
    items = [
        p
        for p in items
        if p.id.startswith(args.id)
        and re.search(args.name, p.metadata.name)
        and re.search(args.namespace, p.metadata.namespace)
    ]
    items = newest(items, args.latest, args.last)
    if args.quiet:
        for p in items:
            print(p.id)
        return 0
    if args.output != "table":
        output.print_data({"items": [to_dict(p) for p in items]}, args.output)
        return 0
    output.print_table(
        ["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"],
        pod_rows(items, args.no_trunc),
    )
    return 0


def inspect_each(
    ids: list[str],
    failed: bool,
    fetch: Callable[[str], Any],
    pairs: Callable[[Any], Sequence[tuple[str, str]]],
    document: Callable[[Any], Any],
    args: argparse.Namespace,
) -> int:
    """inspect/inspectp: each ID's verbose status (a failed one named on stderr), printed
    together; 1 if any ID failed, in the lookup (`failed`) or here."""
    found = []
    for one in ids:
        try:
            found.append(fetch(one))
        except grpc.RpcError as e:
            _failed_call("inspecting", one, e)
            failed = True
    output.print_inspected(
        found, lambda resp: pairs(resp.status), document, args.output, one=len(args.ids) == 1
    )
    return 1 if failed else 0


def cmd_inspectp(client: CriClient, args: argparse.Namespace) -> int:
    ids, failed = resolve_pods(client, args.ids)

    def fetch(pod_id: str) -> pb.PodSandboxStatusResponse:
        req = pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
        return client.runtime.PodSandboxStatus(req, timeout=client.timeout)

    return inspect_each(ids, failed, fetch, status_pairs, status_document, args)


def _stop(client: CriClient, pod_id: str) -> None:
    req = pb.StopPodSandboxRequest(pod_sandbox_id=pod_id)
    client.runtime.StopPodSandbox(req, timeout=client.timeout)


def cmd_stopp(client: CriClient, args: argparse.Namespace) -> int:
    ids, failed = resolve_pods(client, args.ids)
    for pod_id in ids:
        try:
            _stop(client, pod_id)
        except grpc.RpcError as e:
            _failed_call("stopping", pod_id, e)
            failed = True
            continue
        print(f"Stopped sandbox {pod_id}")
    return 1 if failed else 0


def cmd_rmp(client: CriClient, args: argparse.Namespace) -> int:
    if args.all:
        ids, failed = resolve_pods(client, args.ids)
        ids += [p.id for p in list_pods(client) if p.id not in ids]
        if not ids and not failed:
            print("crispy: no pods to remove", file=sys.stderr)
    elif args.ids:
        ids, failed = resolve_pods(client, args.ids)
    else:
        print("crispy rmp: name a pod, or use --all", file=sys.stderr)
        return 2
    for pod_id in ids:
        try:
            # RemovePodSandbox stops a ready pod itself; -f asks for it as crictl does.
            if args.force:
                _stop(client, pod_id)
            req = pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
            client.runtime.RemovePodSandbox(req, timeout=client.timeout)
        except grpc.RpcError as e:
            _failed_call("removing", pod_id, e)
            failed = True
            continue
        print(f"Removed sandbox {pod_id}")
    return 1 if failed else 0
