"""crispyd's side of the per-pod shim: start one, and talk to it over its unix socket.

The shim itself is `crispy/shim/main.py` (standard library only); it is run from its own
dir with `python -I -S` (no site, no crispy package import) so it starts in a few tens
of milliseconds and holds little memory.
Every call opens a new connection, so nothing needs re-establishing after crispyd restarts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crispy import errors
from crispy.shim import main as _shim_main
from crispy.shim.containers import RUNTIME_TIMEOUT
from crispy.shim.main import unix_address
from crispy.shim.zygote import code_id
from crispy.system.fdio import wait_readable

log = logging.getLogger(__name__)

SHIM_MAIN: str = os.path.abspath(_shim_main.__file__)
# Imported as a top-level module from its own dir, main.py's cached bytecode is used;
# run as a script it would be recompiled at every start (~15 ms of CPU per pod).
_LAUNCHER = (
    f"import sys; sys.path.insert(0, {os.path.dirname(SHIM_MAIN)!r}); "
    "import main; sys.exit(main.main())"
)
MAX_REPLY = 64 << 20  # a `run` answer carries the command's output (the shim caps each at 16M)
LOG_TAIL = 2048


class ShimError(errors.CrispyError):
    """The shim refused a request (ok:false) or could not be started."""

    def __init__(self, message: str, reply: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reply = reply  # the shim's whole answer, when there was one


class ShimUnavailable(ShimError, errors.Unavailable):
    """The shim could not be reached, or hung up without answering."""


@dataclass
class ShimProcess:
    pid: int
    socket: str


_zygote_lock: asyncio.Lock | None = None


async def start_shim(
    pod_id: str, socket_path: str, log_path: str, timeout: float = 10.0, zygote: str = ""
) -> ShimProcess:
    """Start a detached shim serving `socket_path`; return once it listens. With `zygote`
    (its socket path), the shim is forked by the shim zygote, started first if needed;
    where that fails the shim is started as a process of its own."""
    if zygote:
        try:
            return await _spawn_by_zygote(zygote, pod_id, socket_path, log_path, timeout)
        except ShimError as e:
            log.warning("shim zygote: %s; starting the shim for %s directly", e, pod_id[:12])
    return await _spawn(pod_id, socket_path, log_path, timeout)


async def _spawn_by_zygote(
    zygote: str, pod_id: str, socket_path: str, log_path: str, timeout: float
) -> ShimProcess:
    global _zygote_lock
    if _zygote_lock is None:
        _zygote_lock = asyncio.Lock()
    client = ShimClient(zygote, timeout=timeout)
    async with _zygote_lock:
        try:
            current = (await ShimClient(zygote, timeout=2.0).health()).get("code") == code_id()
        except ShimError:
            current = None  # no zygote answers
        if current is False:  # a zygote of other (older) shim code
            await stop_zygote(zygote)
        if not current:
            zlog = os.path.join(os.path.dirname(zygote), "shim-zygote.log")
            await _spawn("", zygote, zlog, timeout, ["--zygote"])
    reply = await client.call("spawn", pod_id=pod_id, socket=socket_path, log=log_path)
    return ShimProcess(pid=int(reply["pid"]), socket=socket_path)


async def stop_zygote(zygote: str) -> None:
    """Ask the zygote to exit (crispyd stopping, or its code changed)."""
    with contextlib.suppress(ShimError):
        await ShimClient(zygote, timeout=2.0)._exchange({"op": "shutdown"}, eof_ok=True)


async def _spawn(
    pod_id: str,
    socket_path: str,
    log_path: str,
    timeout: float = 10.0,
    mode: list[str] | None = None,
) -> ShimProcess:
    """Start `crispy-shim` as a process of its own (a pod's shim, or the zygote)."""
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as e:
        raise ShimError(f"cannot open shim log {log_path}: {e.strerror}") from e
    ready_r, ready_w = os.pipe()
    argv = [sys.executable, "-I", "-S", "-c", _LAUNCHER]
    argv += mode if mode else ["--pod-id", pod_id]
    argv += ["--socket", socket_path, "--log", log_path, "--ready-fd", str(ready_w)]
    try:
        # stderr goes to the log too, so a crash before the shim opens it is still recorded.
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_fd,
            pass_fds=(ready_w,),
            start_new_session=True,
        )
    except OSError as e:
        os.close(ready_r)
        raise ShimError(f"cannot start crispy-shim: {e}") from e
    finally:
        os.close(ready_w)
        os.close(log_fd)
    try:
        async with asyncio.timeout(timeout):
            line = await _read_line(ready_r)
    except TimeoutError:
        line = None
    finally:
        os.close(ready_r)
    try:  # the intermediate process exits as soon as it has forked the shim
        async with asyncio.timeout(max(1.0, timeout)):
            status = await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        status = await proc.wait()
    word, _, rest = (line or "").strip().partition(" ")
    if word == "ready" and rest.isdigit():
        return ShimProcess(pid=int(rest), socket=socket_path)
    if word == "error":
        raise ShimError(f"crispy-shim for pod {pod_id}: {rest}")
    if line is None:
        problem = f"not ready within {timeout:g}s"
    else:
        problem = f"exited (status {status}) before it was ready"
    tail = _log_tail(log_path)  # where a crash or a hang has left its traces
    raise ShimError(f"crispy-shim for pod {pod_id}: {problem}" + (f"\n{tail}" if tail else ""))


async def _read_line(fd: int) -> str:
    """One line from a pipe, read through the event loop (never blocking it); '' at EOF."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    buf = bytearray()
    done: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf.extend(chunk)
        if (not chunk or b"\n" in buf) and not done.done():
            done.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return buf.split(b"\n", 1)[0].decode(errors="replace") if buf else ""


def _log_tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL))
            data = f.read()
    except OSError:
        return ""
    return data.decode(errors="replace").strip()


class ShimClient:
    """Requests to one shim, a fresh connection each."""

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def call(self, op: str, /, **args: Any) -> dict[str, Any]:
        """Send one request; return the answer, or raise ShimError (ok:false) or
        ShimUnavailable (no connection, no answer). A `timeout` argument (of `run`, `wait`)
        extends how long the answer may take; null there means as long as it takes."""
        reply = await self._exchange({"op": op, **args}, eof_ok=False)
        assert reply is not None
        return reply

    async def _exchange(self, request: dict[str, Any], eof_ok: bool) -> dict[str, Any] | None:
        op = request["op"]
        where = f"shim at {self.socket_path}"
        answer_within: float | None = self.timeout
        if op in ("run", "wait"):
            extra = request.get("timeout")
            answer_within = None if extra is None else self.timeout + float(extra)
        elif op == "exec_sync":  # 0: no limit
            extra = float(request.get("timeout") or 0)
            answer_within = None if extra <= 0 else self.timeout + extra
        dir_fd: int | None = None
        try:
            addr, dir_fd = unix_address(self.socket_path)
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_unix_connection(addr, limit=MAX_REPLY)
        except (OSError, TimeoutError) as e:
            raise ShimUnavailable(f"{where}: cannot connect: {str(e) or 'timed out'}") from e
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
        try:
            async with asyncio.timeout(answer_within):
                writer.write(json.dumps(request).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
        except TimeoutError as e:
            raise ShimUnavailable(f"{where}: no answer to {op} in time") from e
        except (OSError, ValueError) as e:  # ValueError: an answer longer than MAX_REPLY
            if eof_ok and isinstance(e, OSError):
                return None
            raise ShimUnavailable(f"{where}: {op}: {e}") from e
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if not line.endswith(b"\n") and eof_ok:
            return None
        return _reply(where, op, line)

    async def health(self) -> dict[str, Any]:
        return await self.call("health")

    async def run(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        stdio: str = "pipe",
    ) -> tuple[int, str, str]:
        """Run a command as the shim's child; (returncode, stdout, stderr). env None: the
        shim's own environment. stdio "null" sends its stdout and stderr to /dev/null (for
        `runc create`, whose container inherits them); "pipe" captures them."""
        reply = await self.call(
            "run", argv=argv, env=env, cwd=cwd, timeout=timeout, stdin=stdin, stdio=stdio
        )
        return int(reply["returncode"]), str(reply["stdout"]), str(reply["stderr"])

    async def exits(self) -> dict[int, dict[str, Any]]:
        """Exit records of the orphans the shim reaped and crispyd has not forgotten."""
        reply = await self.call("exits")
        return {int(pid): rec for pid, rec in reply["exits"].items()}

    async def forget(self, pid: int) -> bool:
        return bool((await self.call("forget", pid=pid)).get("forgotten"))

    async def wait(self, pid: int, timeout: float | None) -> dict[str, Any]:
        """Block until the shim has reaped `pid`: {"pid", "exit_code", "signal",
        "finished_at"}. For a container's init pid: until the container's exit record is
        written (as wait_container). ShimError (message starting "timeout") if not in time;
        a None timeout waits as long as it takes."""
        return await self.call("wait", pid=pid, timeout=timeout)

    # --- containers ---------------------------------------------------------------------------

    async def create(
        self,
        container_id: str,
        bundle: str,
        runtime: list[str],
        *,
        exit_file: str,
        log_path: str = "",
        stdin: bool = False,
        stdin_once: bool = False,
        tty: bool = False,
        oom_file: str = "",
        runtime_wait: bool = False,
    ) -> int:
        """`runtime create` the container in `bundle` with the shim holding its stdio
        (pipes, or a pty when `tty`), its output going to `log_path` in the CRI format, and
        its exit to be recorded in `exit_file`. `runtime` is the OCI runtime's argv up to
        the command (e.g. ["runc", "--root", "/run/crispy/runc"]); `oom_file` the cgroup's
        memory.oom_control (v1) or memory.events (v2). `runtime_wait`: the exit is learnt
        from `runtime wait` (gVisor), not by reaping. Returns the container's init pid."""
        reply = await self.call(
            "create",
            id=container_id,
            bundle=bundle,
            runtime=runtime,
            log_path=log_path,
            stdin=stdin,
            stdin_once=stdin_once,
            tty=tty,
            exit_file=exit_file,
            oom_file=oom_file,
            runtime_wait=runtime_wait,
        )
        return int(reply["pid"])

    async def start(self, container_id: str) -> int:
        """`runtime start`; returns when it started (ns since the epoch)."""
        return int((await self.call("start", id=container_id))["started_at"])

    async def kill(self, container_id: str, signal: int | str, all: bool = False) -> None:
        """`runtime kill [--all] <id> <signal>` (a number or a name such as "TERM")."""
        await self.call("kill", id=container_id, signal=signal, all=all)

    async def delete(self, container_id: str, force: bool = False) -> None:
        """`runtime delete [--force]`, then the shim forgets the container (an already
        deleted container is not an error)."""
        await self.call("delete", id=container_id, force=force)

    async def exec_sync(
        self,
        container_id: str,
        process: dict[str, Any],
        timeout: float = 0,
        max_output: int = 16 << 20,
    ) -> tuple[int, bytes, bytes, bool]:
        """Run an OCI `process` in the container: (exit code, stdout, stderr, timed out).
        Each stream is cut at `max_output` bytes. With `timeout` > 0 the process (and its
        process group) is killed when it expires: timed out is then True, the exit code -1.
        ShimError when the runtime could not run it at all."""
        reply = await self.call(
            "exec_sync", id=container_id, process=process, timeout=timeout, max_output=max_output
        )
        return (
            int(reply["exit_code"]),
            base64.b64decode(reply["stdout"]),
            base64.b64decode(reply["stderr"]),
            bool(reply["timed_out"]),
        )

    async def reopen_log(self, container_id: str) -> None:
        """Reopen the container's log file (after it was renamed by a rotation)."""
        await self.call("reopen_log", id=container_id)

    async def containers(self) -> dict[str, dict[str, Any]]:
        """{id: {"pid", "status" (creating|created|running|exiting|exited), "running",
        "exit" (the exit record or None), "created_at", "started_at"}}."""
        reply = await self.call("containers")
        return dict(reply["containers"])

    async def write_stdin(self, container_id: str, data: bytes, close: bool = False) -> None:
        """Queue `data` for the container's stdin; `close` closes it after (on a terminal:
        sends ^D)."""
        await self.call(
            "write_stdin", id=container_id, data=base64.b64encode(data).decode(), close=close
        )

    async def wait_container(self, container_id: str, timeout: float | None) -> dict[str, Any]:
        """The container's exit record, once written: {"id", "pid", "exit_code", "signal",
        "finished_at", "oom_killed"}. ShimError (message starting "timeout") if not in time."""
        return await self.call("wait", id=container_id, timeout=timeout)

    # --- streaming ---------------------------------------------------------------------------

    async def exec(
        self, container_id: str, process: dict[str, Any], stdio: Sequence[int]
    ) -> tuple[int, int | None]:
        """`runtime exec --detach` of an OCI `process`: (pid, terminal master or None).
        Without a terminal `stdio` are the process's stdin, stdout and stderr (the shim gets
        copies; the caller keeps and closes its own). The shim reaps it: `wait(pid)`."""
        reply, fds = await self.call_fds(
            "exec", stdio, id=container_id, process=process, answer_within=RUNTIME_TIMEOUT
        )
        if bool(process.get("terminal")) != bool(fds) or len(fds) > 1:
            for fd in fds:
                os.close(fd)
            raise ShimError(f"shim answered exec with {len(fds)} descriptors")
        return int(reply["pid"]), (fds[0] if fds else None)

    async def attach(
        self,
        container_id: str,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> None:
        """Attach descriptors to a container's stdio: the read end of a pipe for its stdin,
        write ends for copies of its output (closed by the shim when the output ends)."""
        fds = [fd for fd in (stdin, stdout, stderr) if fd is not None]
        await self.call_fds(
            "attach",
            fds,
            id=container_id,
            stdin=stdin is not None,
            stdout=stdout is not None,
            stderr=stderr is not None,
        )

    async def resize(self, container_id: str, width: int, height: int) -> None:
        await self.call("resize", id=container_id, width=width, height=height)

    async def signal(self, pid: int, signum: int) -> bool:
        """Signal a process the shim has not reaped (an exec'd one); False if it is gone."""
        return bool((await self.call("signal", pid=pid, signal=signum)).get("signalled"))

    async def call_fds(
        self, op: str, fds: Sequence[int], /, answer_within: float = 0.0, **args: Any
    ) -> tuple[dict[str, Any], list[int]]:
        """A request carrying descriptors (SCM_RIGHTS) on a connection of its own; the answer
        and the descriptors that came with it (the caller's to close)."""
        where = f"shim at {self.socket_path}"
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        received: list[int] = []
        data = bytearray()
        try:
            addr, dir_fd = unix_address(self.socket_path)
            try:
                async with asyncio.timeout(self.timeout):
                    await loop.sock_connect(sock, addr)
            except (OSError, TimeoutError) as e:
                raise ShimUnavailable(f"{where}: cannot connect: {str(e) or 'timed out'}") from e
            finally:
                if dir_fd is not None:
                    os.close(dir_fd)
            line = json.dumps({"op": op, **args}).encode() + b"\n"
            try:
                async with asyncio.timeout(self.timeout + answer_within):
                    # A fresh socket's buffer takes the line whole; the fds ride on it.
                    sent = socket.send_fds(sock, [line], list(fds))
                    if sent < len(line):
                        await loop.sock_sendall(sock, line[sent:])
                    while not data.endswith(b"\n"):
                        chunk, more = await _recv_with_fds(sock)
                        received += more
                        if not chunk:
                            break
                        data += chunk
                        if len(data) > MAX_REPLY:
                            raise ShimError(f"{where}: answer to {op} too long")
            except TimeoutError as e:
                raise ShimUnavailable(f"{where}: no answer to {op} in time") from e
            except OSError as e:
                raise ShimUnavailable(f"{where}: {op}: {e}") from e
            reply = _reply(where, op, bytes(data))
        except BaseException:
            for fd in received:
                os.close(fd)
            raise
        finally:
            sock.close()
        return reply, received

    async def shutdown(self) -> None:
        """Ask the shim to exit. Once this returns its socket file is gone."""
        await self._exchange({"op": "shutdown"}, eof_ok=True)


def _reply(where: str, op: str, line: bytes) -> dict[str, Any]:
    """The shim's answer line as a dict; ShimError for a refusal or a malformed answer."""
    if not line.endswith(b"\n"):
        raise ShimUnavailable(f"{where}: closed the connection without answering {op}")
    try:
        reply = json.loads(line)
    except ValueError as e:
        raise ShimError(f"{where}: malformed answer to {op}: {e}") from e
    if not isinstance(reply, dict):
        raise ShimError(f"{where}: malformed answer to {op}: not an object")
    if not reply.get("ok"):
        raise ShimError(str(reply.get("error") or f"{op} failed"), reply)
    return reply


async def _recv_with_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One recvmsg on a non-blocking socket, waiting until it is readable."""
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, 65536, 4, socket.MSG_CMSG_CLOEXEC)
            return data, fds
        except (BlockingIOError, InterruptedError):
            await wait_readable(sock.fileno())


async def is_alive(socket_path: str) -> bool:
    """Whether a shim answers on `socket_path` within about two seconds."""
    try:
        await ShimClient(socket_path, timeout=2.0).health()
    except ShimError:
        return False
    return True
