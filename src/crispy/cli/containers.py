"""Container commands, as crictl has them: create, start, stop, rm, ps, inspect, exec,
update, events (plain CRI calls; IDs and prefixes resolved by cli/lookups.py).

`logs` is in cli/logs.py, `attach` in cli/attach.py and `run` in cli/run.py; a streamed
`exec` runs on our terminal through cli/terminal.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import Message

from crispy.api import pb
from crispy.cli import images, output, pods
from crispy.cli.client import CriClient, cancellable, unreachable
from crispy.cli.images import PullError, pull_if_missing
from crispy.cli.lookups import (
    IDLookupError,
    container_status,
    list_containers,
    list_pods,
    newest,
    resolve_container,
    resolve_containers,
    resolve_id,
    resolve_pod,
)
from crispy.cli.terminal import add_stream_flags, stream_session

TRUNCATED_ID = pods.TRUNCATED_ID
STATES = {
    "created": pb.CONTAINER_CREATED,
    "running": pb.CONTAINER_RUNNING,
    "exited": pb.CONTAINER_EXITED,
    "unknown": pb.CONTAINER_UNKNOWN,
}
STATE_NAMES: dict[int, str] = {v: k.capitalize() for k, v in STATES.items()}
EVENT_NAMES: dict[int, str] = {
    pb.CONTAINER_CREATED_EVENT: "created",
    pb.CONTAINER_STARTED_EVENT: "started",
    pb.CONTAINER_STOPPED_EVENT: "stopped",
    pb.CONTAINER_DELETED_EVENT: "deleted",
}

M = TypeVar("M", bound=Message)


def register(sub: Any) -> None:
    _add_create(sub)
    _add_start_stop_rm(sub)
    _add_ps(sub)
    _add_inspect(sub)
    _add_exec(sub)
    _add_update(sub)
    _add_events(sub)


def _add_create(sub: Any) -> None:
    p = sub.add_parser(
        "create", help="create a container in a pod from JSON or YAML configs (crictl's order)"
    )
    p.add_argument("pod_id", metavar="POD-ID", help="pod ID or unique prefix")
    p.add_argument("config", metavar="CONTAINER.json|yaml", help="the container config file")
    p.add_argument("pod_config", metavar="POD.json|yaml", help="the pod sandbox config file")
    p.add_argument(
        "--pull", "--with-pull", action="store_true", help="pull the image first if it is missing"
    )
    p.add_argument(
        "--cancel-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="give up after this long (default 0: no limit)",
    )
    p.set_defaults(func=cmd_create)


def _add_start_stop_rm(sub: Any) -> None:
    p = sub.add_parser("start", help="start one or more created containers")
    p.add_argument("ids", nargs="+", metavar="ID", help="container ID or unique prefix")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("stop", help="stop one or more running containers")
    p.add_argument("ids", nargs="+", metavar="ID", help="container ID or unique prefix")
    p.add_argument(
        "-t",
        "--timeout",
        dest="stop_timeout",
        type=int,
        default=10,
        metavar="SECONDS",
        help="seconds to wait before killing the container (default 10)",
    )
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("rm", help="remove one or more containers")
    p.add_argument("ids", nargs="*", metavar="ID", help="container ID or unique prefix")
    p.add_argument("-f", "--force", action="store_true", help="stop a running container first")
    p.add_argument("-a", "--all", action="store_true", help="remove every container")
    p.set_defaults(func=cmd_rm)


def _add_ps(sub: Any) -> None:
    p = sub.add_parser("ps", help="list containers")
    p.add_argument(
        "-a", "--all", action="store_true", help="show every container, not only running"
    )
    p.add_argument("--id", default="", metavar="PREFIX", help="only containers whose ID starts so")
    p.add_argument("-p", "--pod", default="", metavar="POD-ID", help="only the containers of a pod")
    p.add_argument(
        "--name",
        type=pods._regex,
        default="",
        metavar="REGEX",
        help="only containers whose name matches",
    )
    p.add_argument(
        "-s", "--state", type=str.lower, choices=list(STATES), help="only containers in this state"
    )
    p.add_argument(
        "--label",
        action="append",
        type=pods._label,
        default=[],
        metavar="KEY=VALUE",
        help="only containers with this label (repeatable)",
    )
    p.add_argument("--image", default="", metavar="REF", help="only containers of this image")
    _add_ps_output(p)
    p.set_defaults(func=cmd_ps)


def _add_ps_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="print only container IDs")
    p.add_argument("-o", "--output", choices=output.FORMATS, default="table")
    p.add_argument("--no-trunc", action="store_true", help="show whole IDs")
    p.add_argument("-l", "--latest", action="store_true", help="show only the newest container")
    p.add_argument(
        "--last", type=int, default=0, metavar="N", help="show only the N newest containers"
    )


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show the status of one or more containers")
    p.add_argument("ids", nargs="+", metavar="ID", help="container ID or unique prefix")
    p.add_argument("-o", "--output", choices=output.FORMATS, default="json")
    p.set_defaults(func=cmd_inspect)


def _add_exec(sub: Any) -> None:
    p = sub.add_parser("exec", help="run a command in a running container")
    add_stream_flags(p)
    p.add_argument(
        "-s",
        "--sync",
        action="store_true",
        help="run it with ExecSync: to the end, then print its output",
    )
    p.add_argument(
        "--timeout",
        dest="exec_timeout",
        type=int,
        default=0,
        metavar="SECONDS",
        help="with --sync: give up after this long (default 0: no limit)",
    )
    p.add_argument("id", metavar="ID", help="container ID or unique prefix")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD...", help="command and arguments")
    p.set_defaults(func=cmd_exec)


def _add_update(sub: Any) -> None:
    p = sub.add_parser("update", help="change the resources of one or more containers")
    p.add_argument("ids", nargs="+", metavar="ID", help="container ID or unique prefix")
    p.add_argument(
        "--memory", type=memory_bytes, metavar="BYTES", help="memory limit: bytes, or 100m, 1g"
    )
    p.add_argument("--cpu-shares", "--cpu-share", type=int, metavar="N", help="CPU shares")
    p.add_argument("--cpu-quota", type=int, metavar="N", help="CPU CFS quota (microseconds)")
    p.add_argument("--cpu-period", type=int, metavar="N", help="CPU CFS period (microseconds)")
    p.add_argument("--cpuset-cpus", metavar="LIST", help="CPUs the container may use (0-3,5)")
    p.add_argument("--cpuset-mems", metavar="LIST", help="memory nodes the container may use")
    p.set_defaults(func=cmd_update)


def _add_events(sub: Any) -> None:
    p = sub.add_parser("events", help="print container events as they happen (Ctrl-C ends)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_events)


# -- parsing ---------------------------------------------------------------------------------

_MEMORY = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.IGNORECASE)


def memory_bytes(value: str) -> int:
    """Bytes from `1048576`, `100m`, `1g`, `512MiB`: binary units, as docker's RAMInBytes."""
    m = _MEMORY.match(value.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{value!r}: a size is BYTES or a number with k, m, g, t")
    unit = (m.group(2) or "").lower()
    return int(float(m.group(1)) * 1024 ** (" kmgtp".index(unit) if unit else 0))


def load_config(path: str, message: type[M]) -> M:
    """A CRI config message from crictl's JSON or YAML, with runp's rules and messages."""
    kind = message.DESCRIPTOR.name
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise pods.ConfigError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise pods.ConfigError(f"{path}: not UTF-8 text: {e.reason} at byte {e.start}") from None
    try:
        doc = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except ValueError as e:
        raise pods.ConfigError(f"{path}: not valid JSON: {e}") from None
    except yaml.YAMLError as e:
        raise pods.ConfigError(f"{path}: not valid YAML: {pods._yaml_problem(e)}") from None
    if not isinstance(doc, dict):
        raise pods.ConfigError(f"{path}: expected a {kind} object, got {pods._what(doc)}")
    try:
        return ParseDict(doc, message())
    except ParseError as e:
        raise pods.ConfigError(f"{path}: not a {kind}: {str(e).splitlines()[0]}") from None


# -- formatting ------------------------------------------------------------------------------


def state_name(state: int) -> str:
    return STATE_NAMES.get(int(state), "Unknown")


def short_image(image: str, no_trunc: bool) -> str:
    """An image ID (`sha256:…`) cut to crictl's 13 characters; references as they are."""
    if not no_trunc and re.fullmatch(r"sha256:[0-9a-f]{64}", image):
        return image.removeprefix("sha256:")[:TRUNCATED_ID]
    return image


def container_rows(
    items: Iterable[pb.Container], pod_names: dict[str, str], no_trunc: bool
) -> list[list[str]]:
    now = time.time()
    cut = (lambda s: s) if no_trunc else (lambda s: s[:TRUNCATED_ID])
    return [
        [
            cut(c.id),
            short_image(c.image.image or c.image_ref, no_trunc),
            pods.created_ago(c.created_at, now),
            state_name(c.state),
            c.metadata.name,
            str(c.metadata.attempt),
            cut(c.pod_sandbox_id),
            pod_names.get(c.pod_sandbox_id, "unknown"),
        ]
        for c in items
    ]


def status_document(resp: pb.ContainerStatusResponse) -> dict[str, Any]:
    """crictl inspect's shape: the status, then each info entry decoded from JSON."""
    return {"status": pods.to_dict(resp.status), **output.decode_info(resp.info)}


def _time(ns: int) -> str:
    if not ns:
        return "<none>"
    t = datetime.fromtimestamp(ns / 1e9).astimezone()
    return f"{t.isoformat(timespec='seconds')} ({pods.created_ago(ns)})"


def status_pairs(status: pb.ContainerStatus) -> list[tuple[str, str]]:
    exited = status.state == pb.CONTAINER_EXITED
    return [
        ("ID", status.id),
        ("Name", status.metadata.name),
        ("Attempt", str(status.metadata.attempt)),
        ("State", pb.ContainerState.Name(status.state)),
        ("Image", status.image.image),
        ("Image ref", status.image_ref),
        ("Created", _time(status.created_at)),
        ("Started", _time(status.started_at)),
        ("Finished", _time(status.finished_at)),
        ("Exit code", str(status.exit_code) if exited else "<none>"),
        ("Reason", status.reason or "<none>"),
        ("Labels", pods._mapping(status.labels)),
        ("Annotations", pods._mapping(status.annotations)),
        ("Log path", status.log_path or "<none>"),
    ]


def event_time(ns: int) -> str:
    """RFC 3339 with nanoseconds, in local time."""
    t = datetime.fromtimestamp(ns // 1_000_000_000).astimezone()
    stamp = t.isoformat(timespec="seconds")
    return f"{stamp[:19]}.{ns % 1_000_000_000:09d}{stamp[19:]}"


def event_line(ev: pb.ContainerEventResponse, pod_id: str) -> str:
    kind = EVENT_NAMES.get(ev.container_event_type, "unknown")
    if ev.container_id == pod_id:  # the pod sandbox's own event
        kind = f"pod-{kind}"
    return (
        f"{event_time(ev.created_at)} {ev.container_id[:TRUNCATED_ID]} {kind} "
        f"{pod_id[:TRUNCATED_ID] or '-'}"
    )


# -- commands --------------------------------------------------------------------------------


def cmd_create(client: CriClient, args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, pb.ContainerConfig)
        pod_config = pods.load_pod_config(args.pod_config)
        pod_id = resolve_pod(client, args.pod_id)
        if args.pull:
            pull_if_missing(client, config.image.image, pod_config, progress=True)
    except (pods.ConfigError, IDLookupError, PullError) as e:
        print(f"crispy create: {e}", file=sys.stderr)
        return 1
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)
    resp = cancellable(client.runtime.CreateContainer, req, args.cancel_timeout or None)
    print(resp.container_id)
    return 0


def cmd_start(client: CriClient, args: argparse.Namespace) -> int:
    ids, failed = resolve_containers(client, args.ids)
    for cid in ids:
        try:
            req = pb.StartContainerRequest(container_id=cid)
            client.runtime.StartContainer(req, timeout=client.timeout)
        except grpc.RpcError as e:
            pods._failed_call("starting", cid, e)
            failed = True
            continue
        print(cid)
    return 1 if failed else 0


def stop_container(client: CriClient, cid: str, timeout: int) -> None:
    req = pb.StopContainerRequest(container_id=cid, timeout=timeout)
    # The runtime may wait `timeout` seconds for the process before it kills it.
    client.runtime.StopContainer(req, timeout=max(timeout, 0) + client.timeout)


def cmd_stop(client: CriClient, args: argparse.Namespace) -> int:
    ids, failed = resolve_containers(client, args.ids)
    for cid in ids:
        try:
            stop_container(client, cid, args.stop_timeout)
        except grpc.RpcError as e:
            pods._failed_call("stopping", cid, e)
            failed = True
            continue
        print(cid)
    return 1 if failed else 0


def cmd_rm(client: CriClient, args: argparse.Namespace) -> int:
    if args.all:
        ids, failed = resolve_containers(client, args.ids)
        ids += [c.id for c in list_containers(client) if c.id not in ids]
    elif args.ids:
        ids, failed = resolve_containers(client, args.ids)
    else:
        print("crispy rm: name a container, or use --all", file=sys.stderr)
        return 2
    for cid in ids:
        try:
            running = container_status(client, cid).status.state == pb.CONTAINER_RUNNING
            if running and not args.force:
                # crictl's rule: a running container goes only with -f.
                print(
                    f"crispy: container {cid} is running, please stop it first (or use -f)",
                    file=sys.stderr,
                )
                failed = True
                continue
            if running:
                stop_container(client, cid, 0)
            req = pb.RemoveContainerRequest(container_id=cid)
            client.runtime.RemoveContainer(req, timeout=client.timeout)
        except grpc.RpcError as e:
            pods._failed_call("removing", cid, e)
            failed = True
            continue
        print(cid)
    return 1 if failed else 0


def _image_matches(client: CriClient, ref: str) -> set[str]:
    """Every name and ID the runtime knows `ref` by (only `ref` if it has no such image)."""
    names = {ref}
    img = images.image_status(client, ref).image
    if img.id:
        names.update([img.id, *img.repo_tags, *img.repo_digests])
    return names


def cmd_ps(client: CriClient, args: argparse.Namespace) -> int:
    if args.state:
        state: pb.ContainerState.ValueType | None = STATES[args.state]
    else:
        state = None if args.all else pb.CONTAINER_RUNNING
    pod_list = list_pods(client)
    pod_id = ""
    if args.pod:
        try:
            pod_id = resolve_id(args.pod, [p.id for p in pod_list], "pod sandbox")
        except IDLookupError as e:
            print(f"crispy ps: {e}", file=sys.stderr)
            return 1
    items = list_containers(client, state, pod_id, dict(args.label))
    items = [c for c in items if c.id.startswith(args.id) and re.search(args.name, c.metadata.name)]
    if args.image:
        names = _image_matches(client, args.image)
        items = [c for c in items if names.intersection([c.image.image, c.image_ref, c.image_id])]
    items = newest(items, args.latest, args.last)
    if args.quiet:
        for c in items:
            print(c.id)
        return 0
    if args.output != "table":
        output.print_data({"containers": [pods.to_dict(c) for c in items]}, args.output)
        return 0
    pod_names = {p.id: p.metadata.name for p in pod_list}
    output.print_table(
        ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD"],
        container_rows(items, pod_names, args.no_trunc),
    )
    return 0


def cmd_inspect(client: CriClient, args: argparse.Namespace) -> int:
    ids, failed = resolve_containers(client, args.ids)
    fetch = functools.partial(container_status, client, verbose=True)
    return pods.inspect_each(ids, failed, fetch, status_pairs, status_document, args)


def cmd_exec(client: CriClient, args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("crispy exec: name the command to run", file=sys.stderr)
        return 2
    if args.sync and (args.interactive or args.tty):
        print("crispy exec: --sync runs without stdin or a terminal: drop -i/-t", file=sys.stderr)
        return 2
    if args.exec_timeout < 0:
        print("crispy exec: --timeout can't be negative", file=sys.stderr)
        return 2
    try:
        cid = resolve_container(client, args.id)
    except IDLookupError as e:
        print(f"crispy exec: {e}", file=sys.stderr)
        return 1
    if not args.sync:
        stream_req = pb.ExecRequest(
            container_id=cid,
            cmd=cmd,
            tty=args.tty,
            stdin=args.interactive,
            stdout=True,
            stderr=not args.tty,
        )
        url = client.runtime.Exec(stream_req, timeout=client.timeout).url
        return stream_session(
            url, stdin=args.interactive, tty=args.tty, transport=args.transport, name="exec"
        )
    req = pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=args.exec_timeout)
    deadline = args.exec_timeout + client.timeout if args.exec_timeout else None
    try:
        resp = cancellable(client.runtime.ExecSync, req, deadline)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED or unreachable(e):
            raise
        print(
            f"crispy exec: {cmd[0]} still running after {args.exec_timeout}s: {e.details()}",
            file=sys.stderr,
        )
        return 1
    sys.stdout.buffer.write(resp.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(resp.stderr)
    sys.stderr.flush()
    return int(resp.exit_code)


UPDATE_FIELDS = {
    "memory": "memory_limit_in_bytes",
    "cpu_shares": "cpu_shares",
    "cpu_quota": "cpu_quota",
    "cpu_period": "cpu_period",
    "cpuset_cpus": "cpuset_cpus",
    "cpuset_mems": "cpuset_mems",
}


def cmd_update(client: CriClient, args: argparse.Namespace) -> int:
    changes = {
        field: getattr(args, flag)
        for flag, field in UPDATE_FIELDS.items()
        if getattr(args, flag) is not None
    }
    if not changes:
        flags = ", ".join("--" + f.replace("_", "-") for f in UPDATE_FIELDS)
        print(f"crispy update: nothing to change: use {flags}", file=sys.stderr)
        return 2
    ids, failed = resolve_containers(client, args.ids)
    for cid in ids:
        try:
            # The runtime replaces the container's resources with what it is sent: start
            # from what it has now, so the flags not given stay as they are.
            resources = pb.LinuxContainerResources()
            resources.CopyFrom(container_status(client, cid).status.resources.linux)
            for field, value in changes.items():
                setattr(resources, field, value)
            req = pb.UpdateContainerResourcesRequest(container_id=cid, linux=resources)
            client.runtime.UpdateContainerResources(req, timeout=client.timeout)
        except grpc.RpcError as e:
            pods._failed_call("updating", cid, e)
            failed = True
            continue
        print(cid)
    return 1 if failed else 0


def cmd_events(client: CriClient, args: argparse.Namespace) -> int:
    stream = client.runtime.GetContainerEvents(pb.GetEventsRequest())
    pod_of: dict[str, str] = {}  # a deleted container's pod may be gone with it
    try:
        for ev in stream:
            pod_id = ev.pod_sandbox_status.id or pod_of.get(ev.container_id, "")
            if pod_id:
                pod_of[ev.container_id] = pod_id
            if ev.container_event_type == pb.CONTAINER_DELETED_EVENT:
                pod_of.pop(ev.container_id, None)
            if args.output == "json":
                line = json.dumps(pods.to_dict(ev), separators=(",", ":"))
            else:
                line = event_line(ev, pod_id)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        stream.cancel()
        return 0
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.CANCELLED:
            return 0
        raise
    return 0
