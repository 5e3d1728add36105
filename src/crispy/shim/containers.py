"""The containers a shim supervises, as containerd's shim and CRI-O's conmon do.

`runc create` runs as the shim's child with the container's stdio (pipes, or a pty whose
master comes back over --console-socket); when it exits, the container's init is the
shim's child (the shim is a subreaper). The shim reads the container's output into its CRI
log file, feeds its stdin, and when the init exits it drains the output, reads the cgroup's
OOM counter and writes the exit record (atomically) where crispyd finds it even if crispyd
was down at the time. start/kill/delete/exec go through the runtime too, as commands the
loop runs without blocking.

Requests (one JSON object each; answers {"ok": true, ...} or {"ok": false, "error"}):
- create {id, bundle, runtime: [argv up to the subcommand], log_path, log_root, stdin,
  stdin_once, tty, exit_file, oom_file} -> {pid}; log_path is absolute, inside log_root
  (the pod's log directory; by default log_path's own dir), below which no symlink is
  followed
- start {id}; kill {id, signal: int|name, all}; delete {id, force}; reopen_log {id}
- exec_sync {id, process: OCI process, timeout: s (0: none), max_output: bytes}
  -> {exit_code, stdout, stderr (base64), timed_out} (exit_code -1 when timed out); the
  process is killed if the client hangs up before the answer
- write_stdin {id, data: base64, close}
- containers -> {containers: {id: {pid, status, running, exit, started_at}}}
- wait {id, timeout: s|null} -> the exit record once written

Standard library only (with crispy/system/atomic.py, itself standard library only, for
the exit record); imported as a top-level module in the shim. Every runtime argv comes
from runtime_argv.py, shared with crispyd's runtime driver (crispy.oci.runtime).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import socket
import time

TYPE_CHECKING = False  # typing costs import time; only the type checker needs it
if TYPE_CHECKING or __package__:  # crispyd, the tests, the crispy-shim console script
    from ..system.atomic import write_atomic
    from . import crilog
    from . import loop as shim_loop
    from .loop import READ, WRITE, BadRequest, Command, Loop, Timer, close_fd, exit_record, log
    from .runtime_argv import RuntimeArgv, log_file
else:  # the shim as launched: its own directory on sys.path, no package around it
    import crilog
    import loop as shim_loop
    from loop import READ, WRITE, BadRequest, Command, Loop, Timer, close_fd, exit_record, log
    from runtime_argv import RuntimeArgv, log_file

    # crispy/system/atomic.py is standard library only too; loaded by its path.
    def _load_atomic() -> Any:
        import importlib.util

        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(os.path.dirname(here), "system", "atomic.py")
        spec = importlib.util.spec_from_file_location("atomic", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    write_atomic = _load_atomic().write_atomic

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Json = dict[str, Any]
    Done = Callable[[Json], None]

RUNTIME_TIMEOUT = 120.0  # create/start/kill/delete; runc takes milliseconds, a stuck one dies
DRAIN_AFTER_EXIT = 1.0  # keep reading a dead container's output this long (a child may hold it)
EXEC_LINGER = 0.5  # the same for exec_sync, after the exec'd process exited
MAX_STDIN_BUFFER = 16 << 20  # queued for a container that does not read its stdin
MAX_SOCKET_PATH = 100  # sun_path holds 107 bytes
EOT = b"\x04"  # ^D: end of input on a terminal in canonical mode

_counter = itertools.count(1)


class Container:
    def __init__(self, sup: Supervisor, req: Json) -> None:
        self.sup = sup
        self.loop = sup.loop
        self.id = get_str(req, "id")
        if "/" in self.id or self.id in (".", ".."):
            raise BadRequest(f"invalid container id {self.id!r}")
        self.bundle = get_str(req, "bundle")
        if not os.path.isabs(self.bundle):
            raise BadRequest("bundle must be an absolute path")
        # The runtime's command line up to its subcommand (crispy.oci's OciRuntime.prefix).
        self.runtime = RuntimeArgv(get_argv(req, "runtime"), log_file(self.bundle))
        self.log_path = get_str(req, "log_path", required=False)
        self.log_root = get_str(req, "log_root", required=False)
        self.stdin = get_bool(req, "stdin")
        self.stdin_once = get_bool(req, "stdin_once")
        self.tty = get_bool(req, "tty")
        self.exit_file = get_str(req, "exit_file")
        self.oom_file = get_str(req, "oom_file", required=False)
        # Sandbox runtimes (gVisor) run the container's processes inside their own kernel:
        # its init is not our child, and only `<runtime> wait` learns its exit.
        self.runtime_wait = get_bool(req, "runtime_wait")
        self.status = "creating"  # -> created -> running -> exiting -> exited
        self.pid: int | None = None
        self.created_at = time.time_ns()
        self.started_at = 0
        self.exit: Json | None = None  # the record, once written
        self.reaped: Json | None = None  # the init's exit, before the output is drained
        self.deleted = False
        self.finalizing = False
        self.log: crilog.LogFile | None = None
        self.stamps = crilog.Timestamps()
        self.outputs: dict[int, crilog.Stream] = {}  # fd -> the stream it carries
        self.stdin_fd: int | None = None  # the pipe's write end, or the pty master
        self.stdin_buf = bytearray()
        self.stdin_close = False  # close once the buffer is written
        self.callbacks: dict[int, Callable[[int], None]] = {}
        self.pending_fds: list[int] = []  # made for create, watched once it succeeded
        self.console: Console | None = None
        self.oom_before: tuple[int, bool] | None = None
        self.drain_timer: Timer | None = None
        self.waiters: list[tuple[Done, Timer | None]] = []
        self.attachments: list[Any] = []  # streams.Attachment: attach clients

    # --- the runtime ------------------------------------------------------------------------

    def runtime_error(self, cmd: Command, output: str = "") -> str:
        """What went wrong in a runtime command: its stderr, else its JSON log's last error."""
        if cmd.timed_out:
            return f"{cmd.argv[0]} timed out after {cmd.timeout:g}s and was killed"
        text = (output or cmd.text("stderr") or cmd.text("stdout")).strip()
        if not text:
            text = self.runtime.last_error()
        return text or f"{cmd.argv[0]} exited with status {cmd.returncode}"

    def run_runtime(self, argv: list[str], done: Callable[[Command], None]) -> None:
        Command(self.loop, argv, done, timeout=RUNTIME_TIMEOUT)

    # --- create -----------------------------------------------------------------------------

    def create(self, done: Done) -> None:
        if self.log_path:
            try:
                self.log = crilog.LogFile(self.log_path, report=log, root=self.log_root)
            except ValueError as e:
                raise BadRequest(str(e)) from e
            except OSError as e:
                raise BadRequest(f"cannot open log {self.log_path}: {e.strerror or e}") from e
        pid_file = os.path.join(self.bundle, "pid")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)  # left by an earlier attempt: it must not be taken for ours
        if self.tty:
            self.console = Console(self.loop, self.bundle, self.on_console)
            argv = self.runtime.create(self.id, self.bundle, pid_file, self.console.path)
            # The runtime's own stdio: its errors are captured; the container gets the pty.
            Command(
                self.loop,
                argv,
                lambda cmd: self.created(cmd, done),
                timeout=RUNTIME_TIMEOUT,
            )
            return
        # The runtime's fds 0-2 are the container's: it hands them to the container process.
        theirs: list[int] = []
        try:
            out_r, out_w = os.pipe()
            self.pending_fds.append(out_r)
            theirs.append(out_w)
            err_r, err_w = os.pipe()
            self.pending_fds.append(err_r)
            theirs.append(err_w)
            if self.stdin:
                in_r, in_w = os.pipe()
                self.pending_fds.append(in_w)
            else:
                in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            theirs.append(in_r)
            for fd in self.pending_fds:
                os.set_blocking(fd, False)
            self.outputs = {out_r: crilog.Stream("stdout"), err_r: crilog.Stream("stderr")}
            self.stdin_fd = in_w if self.stdin else None
            Command(
                self.loop,
                self.runtime.create(self.id, self.bundle, pid_file),
                lambda cmd: self.created(cmd, done),
                stdio=(in_r, out_w, err_w),
                timeout=RUNTIME_TIMEOUT,
            )
        finally:
            for fd in theirs:  # the shim keeps none of the container's ends
                os.close(fd)

    def on_console(self, master: int) -> None:
        os.set_blocking(master, False)
        self.outputs = {master: crilog.Stream("stdout")}  # a terminal has one stream
        self.stdin_fd = master if self.stdin else None
        self.pending_fds.append(master)

    def created(self, cmd: Command, done: Done) -> None:
        error = ""
        if cmd.returncode != 0 or cmd.timed_out:
            runtime_said = ""
            if not self.tty:  # the runtime wrote its errors into the container's stderr
                runtime_said = drain_text(list(self.outputs))
            error = self.runtime_error(cmd, runtime_said)
        else:
            pid = read_pid(os.path.join(self.bundle, "pid"))
            if self.console is not None and not self.outputs:
                self.console.receive_now()
            if pid is None:
                error = "the runtime wrote no pid file"
            elif self.tty and not self.outputs:
                error = "the runtime did not send the container's terminal"
            if error:  # the container exists in the runtime but is of no use
                with contextlib.suppress(Exception):
                    self.run_runtime(self.runtime.delete(self.id, force=True), lambda cmd: None)
            else:
                assert pid is not None
                self.pid = pid
        if self.console is not None:
            self.console.close()
            self.console = None
        if error:
            self.discard()
            done({"ok": False, "error": f"create {self.id}: {error}"})
            return
        assert self.pid is not None
        self.status = "created"
        if self.oom_file:
            self.oom_before = read_oom(self.oom_file)
        for fd in dict.fromkeys(self.pending_fds):
            if fd in self.outputs or fd == self.stdin_fd:
                self.callbacks[fd] = self.fd_callback(fd)
                self.update(fd)
            else:  # stdin closed before the container was there
                close_fd(fd)
        self.pending_fds = []
        self.flush_stdin()
        if not self.runtime_wait:
            self.loop.claim(self.pid, self.on_init_exit)
        log(f"container {self.id}: created, init pid {self.pid}")
        done({"ok": True, "pid": self.pid})

    # --- stdio ------------------------------------------------------------------------------

    def fd_callback(self, fd: int) -> Callable[[int], None]:
        return lambda mask: self.on_fd(fd, mask)

    def update(self, fd: int) -> None:
        """Watch `fd` for what it is needed for now; close it once it is needed for nothing.
        Only for the fds being watched (from a successful create on)."""
        callback = self.callbacks.get(fd)
        if callback is None:
            return
        if fd not in self.outputs and fd != self.stdin_fd:
            self.loop.watch(fd, 0, None)
            del self.callbacks[fd]
            os.close(fd)
            return
        events = READ if fd in self.outputs else 0
        if fd == self.stdin_fd and self.stdin_buf:
            events |= WRITE
        self.loop.watch(fd, events, callback)

    def on_fd(self, fd: int, mask: int) -> None:
        if mask & WRITE and fd == self.stdin_fd:
            self.flush_stdin()
        if mask & READ and fd in self.outputs:
            self.read_output(fd)

    def read_output(self, fd: int) -> bool:
        """Read what is there into the log; False at EOF or when there is nothing now."""
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:  # EIO: the terminal's last holder closed it
            data = b""
        if not data:
            self.close_output(fd)
            return False
        stream = self.outputs[fd]
        records = stream.feed(data, self.stamps.format(time.time_ns()))
        if self.log is not None:
            self.log.write(records)
        for attachment in list(self.attachments):
            attachment.output(stream.name, data)
        return True

    def close_output(self, fd: int) -> None:
        stream = self.outputs.pop(fd, None)
        if stream is None:
            return
        rest = stream.finish(self.stamps.format(time.time_ns()))
        if self.log is not None:
            self.log.write(rest)
        for attachment in list(self.attachments):
            attachment.output_closed(stream.name)
        if fd == self.stdin_fd:  # a terminal that is gone takes no more input either
            self.stdin_fd = None
            self.stdin_buf.clear()
        self.update(fd)
        if self.reaped is not None and not self.outputs and not self.finalizing:
            self.finalize()

    def queue_stdin(self, data: bytes, close: bool) -> None:
        fd = self.stdin_fd
        if fd is None:
            if not self.stdin:
                raise BadRequest(f"container {self.id} was created without stdin")
            raise BadRequest(f"the stdin of container {self.id} is closed")
        if self.stdin_close:
            raise BadRequest(f"the stdin of container {self.id} is being closed")
        if len(self.stdin_buf) + len(data) > MAX_STDIN_BUFFER:
            raise BadRequest(f"container {self.id} does not read its stdin; buffer full")
        self.stdin_buf += data
        self.stdin_close = close
        if self.status != "creating":
            self.flush_stdin()

    def flush_stdin(self) -> None:
        fd = self.stdin_fd
        if fd is None:
            return
        try:
            while self.stdin_buf:
                del self.stdin_buf[: os.write(fd, self.stdin_buf)]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # EPIPE: nobody reads it any more
            self.stdin_buf.clear()
            self.stdin_close = not self.tty
        if self.stdin_close and not self.stdin_buf:
            self.close_stdin()
        else:
            self.update(fd)

    def close_stdin(self) -> None:
        fd = self.stdin_fd
        if fd is None:
            return
        self.stdin_fd = None
        self.stdin_buf.clear()
        self.stdin_close = False
        if self.tty:  # the pty stays (it carries the output): the end of input is ^D
            with contextlib.suppress(OSError):
                os.write(fd, EOT)
        self.update(fd)

    # --- exit -------------------------------------------------------------------------------

    def on_runtime_wait(self, cmd: Command) -> None:
        """`<runtime> wait` ended: it prints {"id", "exitStatus": <wait status>}."""
        status = 255 << 8
        try:
            status = int(json.loads(cmd.text("stdout"))["exitStatus"])
        except (ValueError, KeyError, TypeError):
            log(f"container {self.id}: runtime wait: {self.runtime_error(cmd)}")
        self.on_init_exit({"pid": self.pid, **exit_record(status)})

    def on_init_exit(self, record: Json) -> None:
        self.reaped = record
        if self.deleted:
            return
        log(f"container {self.id}: init {self.pid} exited, code {record['exit_code']}")
        self.status = "exiting"
        self.stdin_close = True
        if self.stdin_fd is not None and self.stdin_fd not in self.outputs:
            self.close_stdin()
        if self.outputs:  # read on until EOF, or give up after a while
            self.drain_timer = self.loop.call_later(DRAIN_AFTER_EXIT, self.finalize)
        else:
            self.finalize()

    def finalize(self) -> None:
        """The output is in (or given up on): record the exit where crispyd will find it."""
        if self.finalizing or self.reaped is None or self.deleted:
            return
        self.finalizing = True
        if self.drain_timer is not None:
            self.drain_timer.cancel()
        for fd in list(self.outputs):
            for _ in range(1024):  # what is there now, but no waiting for EOF any more
                if fd not in self.outputs or not self.read_output(fd):
                    break
            self.close_output(fd)
        self.close_stdin()
        for attachment in list(self.attachments):
            attachment.close_stdin()  # their output ends as it drains
        if self.log is not None:
            self.log.close()
        oom_killed = False
        if self.oom_file:
            after = read_oom(self.oom_file)
            before = self.oom_before or (0, False)
            if after is not None:
                oom_killed = after[0] > before[0] or (
                    self.reaped["signal"] == signal.SIGKILL and after[1]
                )
        record = {"pid": self.pid, **self.reaped, "oom_killed": oom_killed}
        try:
            os.makedirs(os.path.dirname(self.exit_file) or ".", exist_ok=True)
            write_atomic(self.exit_file, json.dumps(record).encode() + b"\n")
        except OSError as e:
            log(f"container {self.id}: cannot write {self.exit_file}: {e}")
        self.exit = record
        self.status = "exited"
        for done, timer in self.waiters:
            if timer is not None:
                timer.cancel()
            done({"ok": True, "id": self.id, **record})
        self.waiters = []

    # --- forgetting -------------------------------------------------------------------------

    def discard(self) -> None:
        """Let go of everything: fds, log, console, the shim's record of it."""
        self.deleted = True
        if self.drain_timer is not None:
            self.drain_timer.cancel()
        if self.console is not None:
            self.console.close()
            self.console = None
        stamp = self.stamps.format(time.time_ns())
        for fd, stream in self.outputs.items():
            if fd in self.callbacks and self.log is not None:
                self.log.write(stream.finish(stamp))  # what is left of a line
        self.outputs = {}
        self.stdin_fd = None
        self.stdin_buf.clear()
        for attachment in list(self.attachments):
            attachment.close()
        for fd in self.callbacks:  # watched from create on
            self.loop.watch(fd, 0, None)
            close_fd(fd)
        self.callbacks.clear()
        for fd in dict.fromkeys(self.pending_fds):  # made for a create that did not finish
            close_fd(fd)
        self.pending_fds = []
        if self.log is not None:
            self.log.close()
        for done, timer in self.waiters:
            if timer is not None:
                timer.cancel()
            done({"ok": False, "error": f"container {self.id} was deleted"})
        self.waiters = []
        if self.sup.containers.get(self.id) is self:
            del self.sup.containers[self.id]

    def describe(self) -> Json:
        return {
            "pid": self.pid,
            "status": self.status,
            "running": self.pid is not None and self.reaped is None,
            "exit": self.exit,
            "created_at": self.created_at,
            "started_at": self.started_at,
        }


class Console:
    """The --console-socket: the runtime connects and sends the pty master (SCM_RIGHTS)."""

    def __init__(self, loop: Loop, bundle: str, received: Callable[[int], None]) -> None:
        self.loop = loop
        self.received: Callable[[int], None] | None = received
        self.tmpdir: str | None = None
        path = os.path.join(bundle, f"console-{os.getpid()}-{next(_counter)}.sock")
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:  # the runtime needs a path it can reach
            import tempfile

            self.tmpdir = tempfile.mkdtemp(prefix="crispy-console-")
            path = os.path.join(self.tmpdir, "console.sock")
        self.path = path
        self.conns: list[socket.socket] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self.sock.bind(path)
        except OSError:
            self.close()
            raise
        finally:
            os.umask(old_umask)
        self.sock.listen(4)
        self.sock.setblocking(False)
        self.loop.watch(self.sock, READ, self.on_accept)

    def on_accept(self, mask: int) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log(f"console socket: {e}")
                return
            conn.setblocking(False)
            self.conns.append(conn)
            self.loop.watch(conn, READ, self.conn_callback(conn))

    def conn_callback(self, conn: socket.socket) -> Callable[[int], None]:
        return lambda mask: self.on_conn(conn)

    def on_conn(self, conn: socket.socket) -> None:
        try:
            _, fds, _, _ = socket.recv_fds(conn, 4096, 4, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            fds = []
        self.loop.watch(conn, 0, None)
        conn.close()
        self.conns.remove(conn)
        for extra in fds[1:]:
            close_fd(extra)
        if fds and self.received is not None:
            received, self.received = self.received, None
            received(fds[0])
        elif fds:
            close_fd(fds[0])

    def receive_now(self) -> None:
        """The runtime has exited: what it sent is queued; take it without the loop."""
        self.on_accept(READ)
        for conn in list(self.conns):
            self.on_conn(conn)

    def close(self) -> None:
        for conn in self.conns:
            self.loop.watch(conn, 0, None)
            conn.close()
        self.conns = []
        if self.sock.fileno() >= 0:
            self.loop.watch(self.sock, 0, None)
            self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        if self.tmpdir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self.tmpdir)
        self.received = None


class Exec:
    """An exec_sync, as containerd's shim does it: `runtime exec --detach` with the process's
    stdout and stderr on pipes the shim reads (the runtime hands them over as its own stdio,
    so it does not copy them and does not wait for their EOF); when the runtime has exited
    the process is the shim's child, and its exit ends the exec. What it left running with
    the pipes open gets EXEC_LINGER seconds more to finish writing, not more."""

    def __init__(
        self, c: Container, process: Json, timeout: float, max_output: int, done: Done
    ) -> None:
        self.c = c
        self.loop = c.loop
        self.timeout = timeout
        self.max_output = max_output
        self.done: Done | None = done
        self.fds: dict[int, str] = {}
        self.out = {"stdout": bytearray(), "stderr": bytearray()}
        self.pid: int | None = None
        self.record: Json | None = None
        self.timed_out = False
        self.timers: list[Timer] = []
        self.runtime: Command | None = None
        self.process_file, self.pid_file = write_process(c.bundle, process)
        theirs: list[int] = []
        try:
            theirs.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            for name in ("stdout", "stderr"):
                r, w = os.pipe()
                self.fds[r] = name
                theirs.append(w)
                os.set_blocking(r, False)
            argv = c.runtime.exec(c.id, self.process_file, self.pid_file)
            stdio = (theirs[0], theirs[1], theirs[2])
            self.runtime = Command(
                self.loop, argv, self.runtime_done, stdio=stdio, timeout=RUNTIME_TIMEOUT
            )
        except BaseException:
            self.cleanup()
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        for fd in self.fds:
            self.loop.watch(fd, READ, self.pipe_callback(fd))
        if timeout > 0:
            self.timers.append(self.loop.call_later(timeout, self.expired))

    def pipe_callback(self, fd: int) -> Callable[[int], None]:
        return lambda mask: self.on_pipe(fd)

    def on_pipe(self, fd: int) -> None:
        self.read(fd)
        if self.record is not None and not self.fds:
            self.finish()

    def read(self, fd: int) -> bool:
        """Take what is there; False at EOF or when there is nothing now."""
        name = self.fds.get(fd)
        if name is None:
            return False
        got = shim_loop.read_capped(fd, self.out[name], self.max_output)
        if got is None:
            self.close(fd)
            return False
        return got

    def close(self, fd: int) -> None:
        del self.fds[fd]
        self.loop.watch(fd, 0, None)
        os.close(fd)

    def drain(self) -> None:
        for fd in list(self.fds):
            for _ in range(1024):
                if not self.read(fd):
                    break

    def runtime_done(self, cmd: Command) -> None:
        self.pid = read_pid(self.pid_file)
        if self.pid is not None and (cmd.returncode == 0 or self.timed_out):
            if self.timed_out:  # started just as the runtime was killed for taking too long
                self.expired()
            self.loop.claim(self.pid, self.exited)
            return
        self.drain()  # the runtime's error is in the process's stderr pipe
        said = self.out["stderr"].decode(errors="replace")
        self.fail(self.c.runtime_error(cmd, said))

    def exited(self, record: Json) -> None:
        self.record = record
        self.drain()
        if self.fds:  # something it started holds them: a little longer, then no more
            self.timers.append(self.loop.call_later(EXEC_LINGER, self.finish))
        else:
            self.finish()

    def expired(self) -> None:
        if self.record is not None:
            return
        if not self.timed_out:
            log(f"exec in {self.c.id}: timed out after {self.timeout:g}s; killing it")
        self.timed_out = True
        self.kill()

    def abandoned(self) -> None:
        """The client went away (crispyd's ExecSync was cancelled): nobody will read the
        answer, so the process must not run on, with or without a timeout."""
        if self.record is not None or self.done is None:
            return
        if not self.timed_out:
            log(f"exec in {self.c.id}: its client went away; killing it")
        self.timed_out = True  # a process the runtime starts late is killed too
        self.kill()

    def kill(self) -> None:
        if self.pid is None:  # the runtime has not started it (yet): the runtime goes
            if self.runtime is not None:
                self.runtime.kill()
            return
        for target in (-self.pid, self.pid):  # it leads its session and process group
            with contextlib.suppress(OSError):
                os.kill(target, signal.SIGKILL)

    def fail(self, error: str) -> None:
        if self.timed_out:  # killed before it ran: still a timeout to the caller
            self.finish()
            return
        self.respond({"ok": False, "error": f"exec in {self.c.id}: {error}"})

    def finish(self) -> None:
        code = -1 if self.timed_out or self.record is None else int(self.record["exit_code"])
        self.respond(
            {
                "ok": True,
                "exit_code": code,
                "stdout": base64.b64encode(self.out["stdout"]).decode(),
                "stderr": base64.b64encode(self.out["stderr"]).decode(),
                "timed_out": self.timed_out,
            }
        )

    def respond(self, response: Json) -> None:
        self.cleanup()
        done, self.done = self.done, None
        if done is not None:
            done(response)

    def cleanup(self) -> None:
        for timer in self.timers:
            timer.cancel()
        for fd in list(self.fds):
            self.close(fd)
        for path in (self.process_file, self.pid_file):
            with contextlib.suppress(OSError):
                os.unlink(path)


class Supervisor:
    """The shim's containers and the requests about them."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.containers: dict[str, Container] = {}
        self.ops: dict[str, Callable[[Json, Done], Json | None]] = {
            "create": self.op_create,
            "start": self.op_start,
            "kill": self.op_kill,
            "delete": self.op_delete,
            "exec_sync": self.op_exec_sync,
            "write_stdin": self.op_write_stdin,
            "reopen_log": self.op_reopen_log,
            "containers": self.op_containers,
            "wait": self.op_wait,
        }

    def get(self, req: Json) -> Container:
        cid = get_str(req, "id")
        c = self.containers.get(cid)
        if c is None:
            raise BadRequest(f"no container {cid!r} in this shim")
        return c

    def by_pid(self, pid: int) -> Container | None:
        """The container whose init `pid` is (the newest, should a pid have been reused)."""
        found = [c for c in self.containers.values() if c.pid == pid and not c.runtime_wait]
        return max(found, key=lambda c: c.created_at) if found else None

    def op_create(self, req: Json, done: Done) -> Json | None:
        c = Container(self, req)
        if c.id in self.containers:
            raise BadRequest(f"container {c.id} exists")
        self.containers[c.id] = c
        try:
            c.create(done)
        except BaseException:
            c.discard()
            raise
        return None

    def op_start(self, req: Json, done: Done) -> Json | None:
        c = self.get(req)
        if c.status != "created":
            raise BadRequest(f"container {c.id} is {c.status}, not created")

        def started(cmd: Command) -> None:
            if cmd.returncode != 0 or cmd.timed_out:
                done({"ok": False, "error": f"start {c.id}: {c.runtime_error(cmd)}"})
                return
            c.started_at = time.time_ns()
            if c.status == "created":
                c.status = "running"
            if c.runtime_wait:
                Command(c.loop, c.runtime.wait(c.id), c.on_runtime_wait)
            done({"ok": True, "started_at": c.started_at})

        c.run_runtime(c.runtime.start(c.id), started)
        return None

    def op_kill(self, req: Json, done: Done) -> Json | None:
        c = self.get(req)
        signum = get_signal(req)
        argv = c.runtime.kill(c.id, signum, all=get_bool(req, "all"))

        def killed(cmd: Command) -> None:
            if cmd.returncode != 0 or cmd.timed_out:
                done({"ok": False, "error": f"kill {c.id}: {c.runtime_error(cmd)}"})
            else:
                done({"ok": True})

        c.run_runtime(argv, killed)
        return None

    def op_delete(self, req: Json, done: Done) -> Json | None:
        c = self.get(req)
        if c.status == "creating":
            raise BadRequest(f"container {c.id} is being created")
        argv = c.runtime.delete(c.id, force=get_bool(req, "force"))

        def deleted(cmd: Command) -> None:
            if cmd.returncode != 0 or cmd.timed_out:
                error = c.runtime_error(cmd)
                if "does not exist" not in error:  # already gone is what was asked for
                    done({"ok": False, "error": f"delete {c.id}: {error}"})
                    return
            c.discard()
            log(f"container {c.id}: deleted")
            done({"ok": True})

        c.run_runtime(argv, deleted)
        return None

    def op_exec_sync(self, req: Json, done: Done) -> Json | None:
        c = self.get(req)
        process = req.get("process")
        if not isinstance(process, dict):
            raise BadRequest("process must be an OCI process object")
        if process.get("terminal"):
            raise BadRequest("exec_sync runs its process without a terminal")
        timeout = get_number(req, "timeout") or 0.0
        max_output = req.get("max_output", 16 << 20)
        if not isinstance(max_output, int) or isinstance(max_output, bool) or max_output < 0:
            raise BadRequest("max_output must be a non-negative integer")
        ex = Exec(c, process, timeout, max_output, done)
        hooks = req.get("_abandoned")
        if isinstance(hooks, list):  # called by the shim if the client hangs up first
            hooks.append(ex.abandoned)
        return None

    def op_write_stdin(self, req: Json, done: Done) -> Json | None:
        c = self.get(req)
        data = req.get("data") or ""
        if not isinstance(data, str):
            raise BadRequest("data must be base64 text")
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError as e:
            raise BadRequest(f"data is not base64: {e}") from e
        c.queue_stdin(raw, get_bool(req, "close"))
        return {"ok": True}

    def op_reopen_log(self, req: Json, done: Done) -> Json | None:
        c = self.get(req)
        if c.log is None or c.status == "exited":
            return {"ok": True, "reopened": False}  # no log, or no more output to come
        try:
            c.log.reopen()
        except OSError as e:
            raise BadRequest(f"cannot reopen {c.log_path}: {e.strerror or e}") from e
        return {"ok": True, "reopened": True}

    def op_containers(self, req: Json, done: Done) -> Json | None:
        return {"ok": True, "containers": {cid: c.describe() for cid, c in self.containers.items()}}

    def op_wait(self, req: Json, done: Done) -> Json | None:
        c = self.get(req)
        if c.exit is not None:
            return {"ok": True, "id": c.id, **c.exit}
        timeout = get_number(req, "timeout", default=None)
        timer: Timer | None = None
        if timeout is not None:

            def expired() -> None:
                c.waiters[:] = [w for w in c.waiters if w[1] is not timer]
                done({"ok": False, "error": f"timeout: container {c.id} has not exited"})

            timer = self.loop.call_later(timeout, expired)
        c.waiters.append((done, timer))
        return None


# --- files ----------------------------------------------------------------------------------


def write_process(bundle: str, process: Json) -> tuple[str, str]:
    """The OCI process file for `runtime exec --process`, and where its pid file goes."""
    base = os.path.join(bundle, f"exec-{os.getpid()}-{next(_counter)}")
    process_file = f"{base}.json"
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        with open(os.open(process_file, flags, 0o600), "wb") as f:
            f.write(json.dumps(process).encode())
    except OSError as e:
        raise BadRequest(f"cannot write {process_file}: {e.strerror or e}") from e
    return process_file, f"{base}.pid"


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def read_oom(path: str) -> tuple[int, bool] | None:
    """(oom_kill count, under_oom) from cgroup v1 memory.oom_control or v2 memory.events."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    kills, under = 0, False
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            kills = int(value)
        elif key == "under_oom":
            under = value.strip() == "1"
    return kills, under


def drain_text(fds: list[int]) -> str:
    """What is waiting in some non-blocking pipes, as text (no waiting for EOF)."""
    out = bytearray()
    for fd in fds:
        for _ in range(64):
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


# --- request fields -------------------------------------------------------------------------


def get_str(req: Json, key: str, required: bool = True) -> str:
    value = req.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadRequest(f"{key} must be a non-empty string")
    return value


def get_pid(req: Json) -> int:
    pid = req.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise BadRequest("pid must be a positive integer")
    return pid


def get_bool(req: Json, key: str) -> bool:
    value = req.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false")
    return value


def get_argv(req: Json, key: str) -> list[str]:
    value = req.get(key)
    if not (isinstance(value, list) and value and all(isinstance(a, str) for a in value)):
        raise BadRequest(f"{key} must be a non-empty list of strings")
    return list(value)


def get_number(req: Json, key: str, default: float | None = 0.0) -> float | None:
    value = req.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"{key} must be a non-negative number of seconds")
    return float(value)


def get_signal(req: Json) -> int:
    """A signal number (1 to SIGRTMAX, real-time ones too) or a name (TERM, SIGTERM)."""
    value = req.get("signal")
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 < value <= signal.SIGRTMAX:
            return value
    elif isinstance(value, str):
        name = value.upper()
        with contextlib.suppress(KeyError):
            return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    raise BadRequest(f"signal must be a signal number or name, not {value!r}")
