"""Container commands, as crictl has them: create, start, stop, rm, ps, inspect, exec,
update, events.

All plain CRI RuntimeService calls, so they work against any runtime. Container IDs may
be given as unique prefixes: they are resolved against ListContainers before any call is
made (pod IDs against ListPodSandbox). `logs` is in cli/logs.py and `run` in cli/run.py.
`exec` (without --sync) and `attach` (cli/attach.py) stream over the URL the runtime hands
out: :func:`stream_session` connects our stdio to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import select
import signal
import ssl
import sys
import termios
import threading
import time
import tty
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import Message
from rich.console import Console

from crispy.api import pb
from crispy.cli import images, output, pods
from crispy.cli.client import CriClient, cancellable, describe_error, unreachable
from crispy.streaming.remote import TRANSPORTS, RemoteCommand, RemoteError

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
    p.add_argument("-q", "--quiet", action="store_true", help="print only container IDs")
    p.add_argument("-o", "--output", choices=output.FORMATS, default="table")
    p.add_argument("--no-trunc", action="store_true", help="show whole IDs")
    p.add_argument("-l", "--latest", action="store_true", help="show only the newest container")
    p.add_argument(
        "--last", type=int, default=0, metavar="N", help="show only the N newest containers"
    )
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("inspect", help="show the status of one or more containers")
    p.add_argument("ids", nargs="+", metavar="ID", help="container ID or unique prefix")
    p.add_argument("-o", "--output", choices=output.FORMATS, default="json")
    p.set_defaults(func=cmd_inspect)

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

    p = sub.add_parser("events", help="print container events as they happen (Ctrl-C ends)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_events)


def add_stream_flags(p: argparse.ArgumentParser) -> None:
    """crictl's flags of a streamed exec or attach."""
    p.add_argument(
        "-i", "--interactive", action="store_true", help="send our stdin to the container"
    )
    p.add_argument(
        "-t",
        "--tty",
        action="store_true",
        help="use a terminal (our terminal goes raw with -i; stderr is merged into stdout)",
    )
    p.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="spdy",
        help="streaming protocol (default spdy)",
    )


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


# -- listing and resolving IDs ---------------------------------------------------------------


def list_containers(
    client: CriClient,
    state: pb.ContainerState.ValueType | None = None,
    pod_id: str = "",
    labels: dict[str, str] | None = None,
) -> list[pb.Container]:
    flt = pb.ContainerFilter(pod_sandbox_id=pod_id, label_selector=labels or {})
    if state is not None:
        flt.state.state = state
    resp = client.runtime.ListContainers(
        pb.ListContainersRequest(filter=flt), timeout=client.timeout
    )
    items = list(resp.containers)
    # Filter here too: the runtime may not have honoured every field.
    if state is not None:
        items = [c for c in items if c.state == state]
    if pod_id:
        items = [c for c in items if c.pod_sandbox_id == pod_id]
    if labels:
        items = [c for c in items if all(c.labels.get(k) == v for k, v in labels.items())]
    return items


IDLookupError = pods.IDLookupError


def resolve_id(prefix: str, ids: Sequence[str], kind: str = "container") -> str:
    return pods.resolve_id(prefix, ids, kind)


def resolve_ids(client: CriClient, prefixes: Sequence[str]) -> tuple[list[str], bool]:
    """Every resolvable container ID once, in order, and whether any failed (each printed)."""
    return pods.resolve_all(prefixes, [c.id for c in list_containers(client)], "container")


def resolve_one(client: CriClient, prefix: str) -> str:
    return resolve_id(prefix, [c.id for c in list_containers(client)])


def resolve_pod(client: CriClient, prefix: str) -> str:
    return resolve_id(prefix, [p.id for p in pods.list_pods(client)], "pod sandbox")


def container_status(
    client: CriClient, cid: str, verbose: bool = False
) -> pb.ContainerStatusResponse:
    req = pb.ContainerStatusRequest(container_id=cid, verbose=verbose)
    resp: pb.ContainerStatusResponse = client.runtime.ContainerStatus(req, timeout=client.timeout)
    return resp


# -- images ----------------------------------------------------------------------------------


class PullError(Exception):
    """The image is missing and pulling it failed: printed, exit 1."""


def pull_if_missing(
    client: CriClient,
    ref: str,
    sandbox_config: pb.PodSandboxConfig | None = None,
    progress: bool = False,
) -> None:
    """ImageStatus, then PullImage if the runtime does not have `ref`.

    `progress` draws crispy's pull bars on stderr when it is a terminal (stdout stays the
    command's own output).
    """
    if images.image_status(client, ref).HasField("image"):
        return
    req = pb.PullImageRequest(image=pb.ImageSpec(image=ref), sandbox_config=sandbox_config)
    pull = client.image.PullImage.future(req)
    try:
        if progress and sys.stderr.isatty():
            stream = images._progress_stream(client, ref)
            pull.add_done_callback(lambda _: stream.cancel())
            try:
                images.render_progress(
                    stream, Console(stderr=True), lambda: images._succeeded(pull)
                )
            except grpc.RpcError:
                pass
            finally:
                stream.cancel()
        pull.result()
    except KeyboardInterrupt:
        pull.cancel()
        raise
    except grpc.RpcError as e:
        if unreachable(e):
            raise
        raise PullError(f"pulling {ref}: {describe_error(e)}") from None


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
    ids, failed = resolve_ids(client, args.ids)
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
    ids, failed = resolve_ids(client, args.ids)
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
        ids, failed = resolve_ids(client, args.ids)
        ids += [c.id for c in list_containers(client) if c.id not in ids]
    elif args.ids:
        ids, failed = resolve_ids(client, args.ids)
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
    pod_list = pods.list_pods(client)
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
    items.sort(key=lambda c: c.created_at, reverse=True)
    n = 1 if args.latest else len(items)
    if args.last > 0:
        n = args.last
    items = items[:n]
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
    ids, failed = resolve_ids(client, args.ids)
    found: list[pb.ContainerStatusResponse] = []
    for cid in ids:
        try:
            found.append(container_status(client, cid, verbose=True))
        except grpc.RpcError as e:
            pods._failed_call("inspecting", cid, e)
            failed = True
    if args.output == "table":
        for i, resp in enumerate(found):
            if i:
                print()
            output.print_pairs(status_pairs(resp.status))
    elif found:
        docs = [status_document(r) for r in found]
        output.print_data(docs[0] if len(args.ids) == 1 else docs, args.output)
    return 1 if failed else 0


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
        cid = resolve_one(client, args.id)
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


# -- streamed exec and attach ----------------------------------------------------------------

STDIN_CHUNK = 64 * 1024
STDIN_QUEUE = 4  # chunks read ahead of the connection
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_NOT_FOUND = re.compile(r"executable file not found|no such file or directory", re.IGNORECASE)
_NOT_EXECUTABLE = re.compile(r"permission denied|is a directory", re.IGNORECASE)


class Stopped(Exception):
    """SIGTERM or SIGHUP ended the session."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(code: int, error: str) -> int:
    """Our exit code: the command's, or for a runtime error a shell's guess at one."""
    if not error:
        return code
    if _NOT_FOUND.search(error):
        return 127
    if _NOT_EXECUTABLE.search(error):
        return 126
    return 1


def insecure_tls(url: str) -> ssl.SSLContext | None:
    """An https streaming URL is used without verifying the certificate, as crictl does: it
    came from the runtime over its own socket and carries a single-use token."""
    if not url.startswith("https:"):
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal on ``fd`` in raw mode (keys go to the container), restored however we
    leave."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size() -> tuple[int, int] | None:
    """(columns, rows) of our terminal: stdout's, as crictl takes it, else stdin's."""
    for fd in (1, 0):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            if size.columns > 0 and size.lines > 0:
                return size.columns, size.lines
    return None


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd``, even if someone left it non-blocking."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])


def read_some(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, STDIN_CHUNK)
        except BlockingIOError:
            select.select([fd], [], [])


def stdin_chunks(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[bytes]:
    """Our stdin as a queue of chunks, b"" at EOF, read by a daemon thread.

    A thread rather than the event loop because stdin may be a regular file (which epoll
    refuses), and because making fd 0 non-blocking would change the terminal's file
    description shared with stdout. The queue is bounded: the thread waits for room.
    """
    queue: asyncio.Queue[bytes] = asyncio.Queue(STDIN_QUEUE)

    def work() -> None:
        while True:
            try:
                chunk = read_some(0)
            except OSError:
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
            except Exception:
                return  # the loop is gone
            if not chunk:
                return

    threading.Thread(target=work, name="crispy-stdin", daemon=True).start()
    return queue


async def _send_stdin(cmd: RemoteCommand) -> None:
    queue = stdin_chunks(asyncio.get_running_loop())
    with contextlib.suppress(ConnectionError):
        while chunk := await queue.get():
            await cmd.write_stdin(chunk)
        await cmd.close_stdin()


async def _track_size(cmd: RemoteCommand, sent: tuple[int, int] | None) -> None:
    """Send the terminal's size again on every SIGWINCH that changed it."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    loop.add_signal_handler(signal.SIGWINCH, changed.set)
    try:
        while True:
            await changed.wait()
            changed.clear()
            size = terminal_size()
            if size is not None and size != sent:
                with contextlib.suppress(ConnectionError, OSError):
                    await cmd.resize(*size)
                sent = size
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)


async def _copy_out(read: Callable[[], Awaitable[bytes]], fd: int) -> None:
    while chunk := await read():
        write_all(fd, chunk)


async def _stream(url: str, *, stdin: bool, tty: bool, transport: str) -> tuple[int, str]:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stopped: list[int] = []

    def stop(signum: int) -> None:
        stopped.append(signum)
        main.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    helpers: list[asyncio.Task[None]] = []
    try:
        cmd = await RemoteCommand.connect(
            url,
            stdin=stdin,
            stdout=True,
            stderr=not tty,
            tty=tty,
            transport=transport,
            ssl=insecure_tls(url),
        )
        try:
            size = terminal_size() if tty else None
            if size is not None:
                # before anything else, so the command starts with the right size
                await cmd.resize(*size)
            if tty:
                helpers.append(asyncio.create_task(_track_size(cmd, size)))
            if stdin:
                helpers.append(asyncio.create_task(_send_stdin(cmd)))
            outputs = [_copy_out(cmd.read_stdout, 1)]
            if not tty:
                outputs.append(_copy_out(cmd.read_stderr, 2))
            await asyncio.gather(*outputs)
            return await cmd.wait()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await cmd.close()
    except asyncio.CancelledError:
        if stopped:
            raise Stopped(stopped[0]) from None
        raise
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def stream_session(url: str, *, stdin: bool, tty: bool, transport: str, name: str) -> int:
    """Connect our stdio to an Exec or Attach URL until the session ends; our exit code.

    With a tty and -i on a terminal, the terminal is raw for the session (Ctrl-C goes to the
    container) and restored on every way out. Errors print as `crispy NAME: ...`.
    """
    raw = tty and stdin and os.isatty(0)
    try:
        with raw_terminal(0) if raw else contextlib.nullcontext():
            code, error = asyncio.run(_stream(url, stdin=stdin, tty=tty, transport=transport))
    except RemoteError as e:
        print(f"crispy {name}: {e}", file=sys.stderr)
        return 1
    except Stopped as e:
        return 128 + e.signum
    except BrokenPipeError:
        return 128 + signal.SIGPIPE  # our reader went away, as a shell would report it
    if error:
        print(f"crispy {name}: {error}", file=sys.stderr)
    return exit_status(code, error)


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
    ids, failed = resolve_ids(client, args.ids)
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
