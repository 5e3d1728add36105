"""Streaming exec and attach: the shim hands process stdio to crispyd as file descriptors.

crispyd's streaming server (kubelet's exec/attach protocols) copies bytes between its clients
and descriptors it passes over the shim socket (SCM_RIGHTS) or gets back from it, so the data
never goes through the shim's JSON protocol:

- exec {id, process (OCI process)} with fds [stdin, stdout, stderr] (no fds with
  process.terminal) runs `runtime exec --detach` with those as the process's stdio, or with a
  terminal whose master comes back with the answer: {pid} (+ fd [master]). The process is
  the shim's child from then on (the shim is a subreaper); `wait {pid}` gives its exit and
  `signal {pid, signal}` reaches it while it is the shim's own.
- attach {id, stdin, stdout, stderr} with fds [stdin read end?, stdout write end?, stderr
  write end?] (in that order, those asked for): the container's output is copied to the
  attachment as well as to the log; what is read from the attachment's stdin is fed to the
  container's stdin, and its EOF closes the container's stdin if it was created stdin_once.
  The attachment's output ends (EOF) when the container's output does.
- resize {id, width, height} sets the window size of a container's terminal.

Standard library only; imported as a top-level module in the shim.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import termios

TYPE_CHECKING = False  # typing costs import time; only the type checker needs it
if TYPE_CHECKING or __package__:
    from .containers import (
        RUNTIME_TIMEOUT,
        Console,
        get_bool,
        get_pid,
        get_signal,
        read_pid,
        write_process,
    )
    from .loop import READ, WRITE, BadRequest, Command, close_fd, log
else:
    from containers import (
        RUNTIME_TIMEOUT,
        Console,
        get_bool,
        get_pid,
        get_signal,
        read_pid,
        write_process,
    )
    from loop import READ, WRITE, BadRequest, Command, close_fd, log

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .containers import Container, Supervisor
    from .loop import Timer

    Json = dict[str, Any]
    Done = Callable[[Json], None]

MAX_ATTACH_BUFFER = 4 << 20  # output queued for an attach client that does not read it
STDIN_HIGH_WATER = 1 << 20  # stop reading an attach client's stdin while this much is queued
STDIN_RETRY = 0.05


def take_fds(req: Json, count: int) -> list[int]:
    """The descriptors that came with the request; exactly `count` of them, now ours."""
    fds = req.get("_fds") or []
    if len(fds) != count:
        raise BadRequest(f"expected {count} file descriptors with the request, got {len(fds)}")
    taken = list(fds)
    fds.clear()  # the caller closes what is left in the list: these are ours now
    return taken


def set_winsize(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def get_size(req: Json) -> tuple[int, int]:
    out = []
    for key in ("width", "height"):
        value = req.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 65535:
            raise BadRequest(f"{key} must be an integer in 1..65535")
        out.append(value)
    return out[0], out[1]


class StreamExec:
    """`runtime exec --detach` with crispyd's descriptors (or a terminal) as its stdio."""

    def __init__(self, c: Container, process: Json, stdio: list[int], done: Done) -> None:
        self.c = c
        self.loop = c.loop
        self.done: Done | None = done
        self.tty = bool(process.get("terminal"))
        self.master: int | None = None
        self.console: Console | None = None
        self.process_file, self.pid_file = write_process(c.bundle, process)
        try:
            console = ""
            if self.tty:
                self.console = Console(self.loop, c.bundle, self.on_console)
                console = self.console.path
            # With a terminal the runtime's own output (its errors) is captured; else the
            # process's stdio is the runtime's, which hands it over.
            Command(
                self.loop,
                c.runtime.exec(c.id, self.process_file, self.pid_file, console),
                self.runtime_done,
                stdio=None if self.tty else (stdio[0], stdio[1], stdio[2]),
                timeout=RUNTIME_TIMEOUT,
            )
        except OSError as e:
            self.cleanup()
            raise BadRequest(f"exec in {c.id}: {e.strerror or e}") from e
        except BaseException:
            self.cleanup()
            raise

    def on_console(self, master: int) -> None:
        self.master = master

    def runtime_done(self, cmd: Command) -> None:
        if self.console is not None and self.master is None:
            self.console.receive_now()
        pid = read_pid(self.pid_file)
        error = ""
        if cmd.returncode != 0 or cmd.timed_out:
            error = self.c.runtime_error(cmd)
        elif pid is None:
            error = "the runtime wrote no pid file"
        elif self.tty and self.master is None:
            error = "the runtime did not send the process's terminal"
        if error:
            if pid is not None:  # started after all: it must not run on unobserved
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            self.respond({"ok": False, "error": f"exec in {self.c.id}: {error}"})
            return
        log(f"container {self.c.id}: exec pid {pid}")
        response: Json = {"ok": True, "pid": pid}
        if self.master is not None:
            response["_fds"] = [self.master]  # sent with the answer, then closed here
            self.master = None
        self.respond(response)

    def respond(self, response: Json) -> None:
        self.cleanup()
        done, self.done = self.done, None
        if done is not None:
            done(response)

    def cleanup(self) -> None:
        if self.console is not None:
            self.console.close()
            self.console = None
        close_fd(self.master)
        self.master = None
        for path in (self.process_file, self.pid_file):
            with contextlib.suppress(OSError):
                os.unlink(path)


class Attachment:
    """One attach client: a copy of the container's output, a source of its stdin."""

    def __init__(self, c: Container, stdin: int | None, outputs: dict[bytes, int]) -> None:
        self.c = c
        self.loop = c.loop
        self.stdin = stdin
        self.outputs = outputs  # stream name (b"stdout", b"stderr") -> our write end
        self.bufs: dict[int, bytearray] = {fd: bytearray() for fd in outputs.values()}
        self.ending: set[int] = set()  # close once the buffer is out: the stream ended
        self.retry: Timer | None = None
        for fd in [*self.bufs, *([stdin] if stdin is not None else [])]:
            os.set_blocking(fd, False)
        if stdin is not None:
            self.loop.watch(stdin, READ, self.on_stdin)
        c.attachments.append(self)

    # --- output ---------------------------------------------------------------------------

    def output(self, stream: bytes, data: bytes) -> None:
        fd = self.outputs.get(stream)
        if fd is None:
            return
        buf = self.bufs[fd]
        if len(buf) + len(data) > MAX_ATTACH_BUFFER:
            log(f"container {self.c.id}: an attach client does not read its output; dropped")
            self.close()
            return
        buf += data
        self.flush(fd)

    def output_closed(self, stream: bytes) -> None:
        fd = self.outputs.get(stream)
        if fd is not None:
            self.ending.add(fd)
            self.flush(fd)

    def flush(self, fd: int) -> None:
        buf = self.bufs.get(fd)
        if buf is None:
            return
        try:
            while buf:
                del buf[: os.write(fd, buf)]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # EPIPE: the client is gone
            self.close()
            return
        if not buf and fd in self.ending:
            self.close_output(fd)
        else:
            self.loop.watch(fd, WRITE if buf else 0, (lambda mask: self.flush(fd)) if buf else None)

    def close_output(self, fd: int) -> None:
        self.loop.watch(fd, 0, None)
        self.bufs.pop(fd, None)
        self.ending.discard(fd)
        self.outputs = {k: v for k, v in self.outputs.items() if v != fd}
        os.close(fd)
        if not self.outputs and self.stdin is None:
            self.close()

    # --- input ----------------------------------------------------------------------------

    def on_stdin(self, mask: int = READ) -> None:
        fd = self.stdin
        if fd is None:
            return
        self.retry = None
        if len(self.c.stdin_buf) > STDIN_HIGH_WATER:  # the container is slow: wait for it
            self.loop.watch(fd, 0, None)
            self.retry = self.loop.call_later(STDIN_RETRY, self.on_stdin)
            return
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            self.loop.watch(fd, READ, self.on_stdin)
            return
        except OSError:
            data = b""
        try:
            if data:
                self.c.queue_stdin(data, False)
                self.loop.watch(fd, READ, self.on_stdin)
                return
            if self.c.stdin_once and self.c.stdin_fd is not None:
                self.c.queue_stdin(b"", True)  # the first attach's EOF is the container's
        except BadRequest as e:
            log(f"container {self.c.id}: attach stdin: {e}")
        self.close_stdin()

    def close_stdin(self) -> None:
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        if self.stdin is not None:
            self.loop.watch(self.stdin, 0, None)
            os.close(self.stdin)
            self.stdin = None
        if not self.outputs:
            self.close()

    # --- the end ----------------------------------------------------------------------------

    def close(self) -> None:
        """Let go of the client: its output ends where it is (EOF), its stdin is dropped."""
        if self in self.c.attachments:
            self.c.attachments.remove(self)
        for fd in list(self.bufs):
            self.loop.watch(fd, 0, None)
            close_fd(fd)
        self.bufs.clear()
        self.outputs = {}
        self.ending.clear()
        if self.stdin is not None or self.retry is not None:
            self.close_stdin()


# --- requests -------------------------------------------------------------------------------


def op_exec(sup: Supervisor, req: Json, done: Done) -> Json | None:
    c = sup.get(req)
    process = req.get("process")
    if not isinstance(process, dict):
        raise BadRequest("process must be an OCI process object")
    if c.status not in ("created", "running"):
        raise BadRequest(f"container {c.id} is {c.status}, not running")
    stdio = take_fds(req, 0 if process.get("terminal") else 3)
    try:
        StreamExec(c, process, stdio, done)
    finally:
        for fd in stdio:  # the runtime has its copies; the process keeps them
            os.close(fd)
    return None


def op_attach(sup: Supervisor, req: Json, done: Done) -> Json | None:
    c = sup.get(req)
    want = {name: get_bool(req, name) for name in ("stdin", "stdout", "stderr")}
    fds = take_fds(req, sum(want.values()))
    try:
        if c.status not in ("created", "running") or c.reaped is not None:
            raise BadRequest(f"container {c.id} is {c.status}, not running")
        if want["stdin"] and c.stdin_fd is None:
            raise BadRequest(f"the stdin of container {c.id} is closed")
        it = iter(fds)
        stdin = next(it) if want["stdin"] else None
        outputs: dict[bytes, int] = {}
        streams = {s.name for s in c.outputs.values()}
        for name in ("stdout", "stderr"):
            if want[name]:
                fd = next(it)
                if name.encode() in streams:
                    outputs[name.encode()] = fd
                else:  # a terminal has no stderr; an ended stream has nothing more
                    os.close(fd)
    except BaseException:
        for fd in fds:
            close_fd(fd)
        raise
    Attachment(c, stdin, outputs)
    return {"ok": True}


def op_resize(sup: Supervisor, req: Json, done: Done) -> Json | None:
    c = sup.get(req)
    width, height = get_size(req)
    if not c.tty:
        raise BadRequest(f"container {c.id} has no terminal")
    master = next(iter(c.outputs), None)
    if master is None:
        raise BadRequest(f"the terminal of container {c.id} is closed")
    try:
        set_winsize(master, width, height)
    except OSError as e:
        raise BadRequest(f"resize: {e.strerror or e}") from e
    return {"ok": True}


def op_signal(sup: Supervisor, req: Json, done: Done) -> Json | None:
    """Signal a process of the shim's own (an exec'd process it has not reaped yet)."""
    pid = get_pid(req)
    signum = get_signal(req)
    if pid in sup.loop.orphans or parent_of(pid) != os.getpid():
        return {"ok": True, "signalled": False}  # exited already: never a stranger by reuse
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return {"ok": True, "signalled": False}
    return {"ok": True, "signalled": True}


def parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else 0


def register(sup: Supervisor) -> None:
    def bind(op: Callable[[Supervisor, Json, Done], Json | None]) -> Callable[[Json, Done], Any]:
        return lambda req, done: op(sup, req, done)

    for name, op in (
        ("exec", op_exec),
        ("attach", op_attach),
        ("resize", op_resize),
        ("signal", op_signal),
    ):
        sup.ops[name] = bind(op)
