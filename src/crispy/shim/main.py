"""crispy-shim: the per-pod supervisor crispyd starts once per pod.

It detaches from crispyd (so the pod's containers outlive a crispyd restart or upgrade),
makes itself the child subreaper for whatever its commands leave behind (the container
processes that `runc create` orphans when it exits), records their exit statuses, and
serves crispyd on a unix socket: one JSON object per line each way.

Standard library only, and nothing from crispyd: it must start fast and stay small. It is
one thread around one selector, so forking children is safe and exactly one place
(`Shim.reap`) collects exit statuses: a `run` command's pid is recorded before the loop can
reap it, and nothing else ever calls waitpid.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import stat
import sys
import time

TYPE_CHECKING = False  # typing costs import time; only the type checker needs it
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Json = dict[str, Any]

PROTOCOL_VERSION = 1
VERSION_LINE = f"crispy-shim protocol {PROTOCOL_VERSION}"
MAX_LINE = 16 << 20  # longest request line; a client sending more is dropped
MAX_OUTPUT = 16 << 20  # captured per stream of a `run` command; the rest is read and dropped
MAX_EXITS = 4096  # exit records kept until crispyd forgets them; beyond this the oldest go
PR_SET_CHILD_SUBREAPER = 36
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class BadRequest(Exception):
    """A request the shim understood but cannot do; answered as ok:false."""


def log(msg: str) -> None:
    # fd 2 is the log file (opened O_APPEND), so one write is one whole line.
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    with contextlib.suppress(OSError):
        os.write(2, f"{stamp}Z crispy-shim[{os.getpid()}] {msg}\n".encode(errors="replace"))


def exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)  # what a shell, runc and the CRI report when killed
    return os.waitstatus_to_exitcode(status)


def exit_record(status: int) -> Json:
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    return {"exit_code": exit_code(status), "signal": sig, "finished_at": time.time_ns()}


class Conn:
    """One client connection: requests are answered in order, one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.events = 0  # what the selector currently watches for
        self.busy = False  # a `run` or `wait` is pending; later lines queue in inbuf
        self.eof = False  # the client will send no more
        self.closed = False


class Run:
    """A `run` command in flight: its pipes, captured output, and deadline."""

    def __init__(self, pid: int, conn: Conn | None, argv0: str, timeout: float | None) -> None:
        self.pid = pid
        self.conn = conn  # None once nobody waits for the answer
        self.argv0 = argv0
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timed_out = False
        self.fds: dict[int, str] = {}  # open pipe fd -> "stdout" | "stderr" | "stdin"
        self.out = {"stdout": bytearray(), "stderr": bytearray()}
        self.stdin = b""


class Waiter:
    def __init__(self, conn: Conn, deadline: float | None) -> None:
        self.conn, self.deadline = conn, deadline


class Shim:
    def __init__(self, pod_id: str, path: str) -> None:
        self.pod_id = pod_id
        self.path = path
        self.started_at = time.time_ns()
        self.sel = selectors.DefaultSelector()
        self.stopping = False
        self.runs: dict[int, Run] = {}
        self.exits: dict[int, Json] = {}
        self.waiters: dict[int, list[Waiter]] = {}
        self.conns: set[Conn] = set()
        self.ops: dict[str, Callable[[Conn, Json], Json | None]] = {
            "health": self.op_health,
            "run": self.op_run,
            "exits": self.op_exits,
            "forget": self.op_forget,
            "wait": self.op_wait,
            "shutdown": self.op_shutdown,
        }
        self.listener: socket.socket | None = self.bind(path)
        self.sel.register(self.listener, READ, self.on_accept)
        # Signals only wake the loop (the handlers below run between bytecodes); the work,
        # reaping included, happens in the loop itself.
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        self.sel.register(self.wake_r, READ, self.on_wakeup)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, self.on_stop_signal)
        signal.signal(signal.SIGINT, self.on_stop_signal)

    # --- socket ----------------------------------------------------------------------------

    def bind(self, path: str) -> socket.socket:
        try:
            addr, dir_fd = unix_address(path)
        except OSError as e:
            raise OSError(f"bind {path}: {e.strerror}") from e
        try:
            return self.bind_at(path, addr)
        finally:
            if dir_fd is not None:
                os.close(dir_fd)

    def bind_at(self, path: str, addr: str) -> socket.socket:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(addr)
            except OSError:
                os.unlink(path)  # nobody listens: left behind by a shim that died
            else:
                raise OSError(f"{path} is in use by a live process")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # no window where the socket is reachable by others
        try:
            sock.bind(addr)
        except OSError as e:
            sock.close()
            raise OSError(f"bind {path}: {e.strerror or e}") from e
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        st = os.stat(path)
        self.sock_id = (st.st_dev, st.st_ino)
        sock.listen(64)
        sock.setblocking(False)
        return sock

    def unlink_socket(self) -> None:
        if self.listener is None:
            return
        self.sel.unregister(self.listener)
        self.listener.close()
        self.listener = None
        try:  # only our own socket: a successor shim may already have replaced it
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self.sock_id:
                os.unlink(self.path)
        except OSError:
            pass

    def on_accept(self, mask: int) -> None:
        while self.listener is not None:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: keep serving the others
                log(f"accept: {e}")
                return
            sock.setblocking(False)
            conn = Conn(sock)
            self.conns.add(conn)
            self.update(conn)

    def update(self, conn: Conn) -> None:
        """Point the selector at what the connection waits for now."""
        events = (0 if conn.eof else READ) | (WRITE if conn.outbuf else 0)
        if conn.closed or events == conn.events:
            return
        if conn.events == 0:
            self.sel.register(conn.sock, events, lambda mask: self.on_conn(conn, mask))
        elif events == 0:
            self.sel.unregister(conn.sock)
        else:
            self.sel.modify(conn.sock, events, lambda mask: self.on_conn(conn, mask))
        conn.events = events

    def close(self, conn: Conn) -> None:
        if conn.closed:
            return
        if conn.events:
            self.sel.unregister(conn.sock)
        conn.closed, conn.events = True, 0
        conn.sock.close()
        self.conns.discard(conn)
        for run in self.runs.values():
            if run.conn is conn:
                run.conn = None
        for pid, waiters in list(self.waiters.items()):
            waiters[:] = [w for w in waiters if w.conn is not conn]
            if not waiters:
                del self.waiters[pid]

    def on_conn(self, conn: Conn, mask: int) -> None:
        if conn.closed:  # closed earlier in this round of events
            return
        if mask & WRITE:
            self.flush(conn)
        if mask & READ and not conn.closed:
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if data:
                conn.inbuf += data
            else:
                conn.eof = True
                if conn.inbuf and not conn.inbuf.endswith(b"\n"):
                    conn.inbuf += b"\n"  # a last request without its newline still counts
            self.process(conn)

    def process(self, conn: Conn) -> None:
        """Answer the complete request lines queued on a connection, in order."""
        while not conn.busy and not conn.closed:
            end = conn.inbuf.find(b"\n")
            if end < 0:
                break
            line = bytes(conn.inbuf[:end])
            del conn.inbuf[: end + 1]
            if line.strip():
                self.handle(conn, line)
        if conn.closed:
            return
        if len(conn.inbuf) > MAX_LINE:
            log("dropping a client that sent an over-long request")
            self.close(conn)
        elif conn.eof and not conn.busy and not conn.outbuf:
            self.close(conn)
        else:
            self.update(conn)

    def reply(self, conn: Conn | None, response: Json) -> None:
        if conn is None or conn.closed:
            return
        conn.outbuf += json.dumps(response, separators=(",", ":")).encode() + b"\n"
        self.flush(conn)

    def flush(self, conn: Conn) -> None:
        while conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # the client went away; pending work for it is dropped
                self.close(conn)
                return
            del conn.outbuf[:sent]
        if conn.eof and not conn.busy and not conn.outbuf and not conn.inbuf:
            self.close(conn)
        else:
            self.update(conn)

    def finish(self, conn: Conn | None, response: Json) -> None:
        """Answer a pending request and go on with the lines queued behind it."""
        if conn is None or conn.closed:
            return
        conn.busy = False
        self.reply(conn, response)
        if not conn.closed:
            self.process(conn)

    # --- requests ---------------------------------------------------------------------------

    def handle(self, conn: Conn, line: bytes) -> None:
        try:
            req = json.loads(line)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError alike
            self.reply(conn, {"ok": False, "error": f"malformed JSON request: {e}"})
            return
        if not isinstance(req, dict):
            self.reply(conn, {"ok": False, "error": "a request must be a JSON object"})
            return
        op = req.get("op")
        handler = self.ops.get(op) if isinstance(op, str) else None
        if handler is None:
            known = ", ".join(sorted(self.ops))
            self.reply(conn, {"ok": False, "error": f"unknown op {op!r} (known: {known})"})
            return
        try:
            response = handler(conn, req)
        except BadRequest as e:
            response = {"ok": False, "error": f"{op}: {e}"}
        except OSError as e:  # out of fds or processes, most likely
            log(f"{op}: {e}")
            response = {"ok": False, "error": f"{op}: {e}"}
        except Exception as e:  # a bug must cost one request, not the pod's supervisor
            import traceback

            log(f"{op} failed:\n{traceback.format_exc()}")
            response = {"ok": False, "error": f"{op}: internal error: {e!r}"}
        if response is None:
            conn.busy = True
        else:
            self.reply(conn, response)

    def op_health(self, conn: Conn, req: Json) -> Json:
        return {
            "ok": True,
            "pid": os.getpid(),
            "pod_id": self.pod_id,
            "started_at": self.started_at,
            "version": PROTOCOL_VERSION,
        }

    def op_exits(self, conn: Conn, req: Json) -> Json:
        return {"ok": True, "exits": {str(pid): rec for pid, rec in self.exits.items()}}

    def op_forget(self, conn: Conn, req: Json) -> Json:
        return {"ok": True, "forgotten": self.exits.pop(get_pid(req), None) is not None}

    def op_wait(self, conn: Conn, req: Json) -> Json | None:
        pid = get_pid(req)
        timeout = get_timeout(req)
        if pid in self.exits:
            return {"ok": True, "pid": pid, **self.exits[pid]}
        if pid in self.runs:
            raise BadRequest(f"pid {pid} is a `run` command; its answer carries its status")
        deadline = None if timeout is None else time.monotonic() + timeout
        self.waiters.setdefault(pid, []).append(Waiter(conn, deadline))
        return None

    def op_shutdown(self, conn: Conn, req: Json) -> Json:
        # The socket goes before the answer, so once crispyd has it a new shim can bind here.
        self.unlink_socket()
        self.stopping = True
        log("shutdown requested")
        return {"ok": True}

    def op_run(self, conn: Conn, req: Json) -> Json | None:
        argv = req.get("argv")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise BadRequest("argv must be a non-empty list of strings")
        env = req.get("env")
        if env is not None and not (
            isinstance(env, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise BadRequest("env must be an object of strings or null")
        cwd = req.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise BadRequest("cwd must be a string or null")
        stdin = req.get("stdin")
        if stdin is not None and not isinstance(stdin, str):
            raise BadRequest("stdin must be a string or null")
        stdio = req.get("stdio") or "pipe"
        if stdio not in ("pipe", "null"):
            raise BadRequest('stdio must be "pipe" (capture) or "null"')
        return self.spawn(conn, argv, env, cwd, stdin, stdio == "pipe", get_timeout(req))

    # --- children ---------------------------------------------------------------------------

    def spawn(
        self,
        conn: Conn,
        argv: list[str],
        env: dict[str, str] | None,
        cwd: str | None,
        stdin: str | None,
        capture: bool,
        timeout: float | None,
    ) -> Json | None:
        # "null" is for commands whose leftovers (a container started by `runc create`)
        # inherit their stdout and stderr: those must not be pipes the shim stops reading.
        if capture:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
        else:
            out_r = err_r = -1
            out_w = err_w = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        if stdin is None:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1
        else:
            in_r, in_w = os.pipe()
        exc_r, exc_w = os.pipe()  # close-on-exec: EOF without data means exec succeeded
        ours = {fd for fd in (out_r, err_r, in_w) if fd >= 0}
        theirs = {out_w, err_w, in_r, exc_w}
        try:
            pid = os.fork()
        except OSError:
            for fd in ours | theirs | {exc_r}:
                os.close(fd)
            raise
        if pid == 0:
            child_exec(argv, env, cwd, in_r, out_w, err_w, exc_w)
        # Recorded before the loop can next reap, so this status can never land in `exits`.
        run = Run(pid, conn, argv[0], timeout)
        self.runs[pid] = run
        for fd in theirs:
            os.close(fd)
        failure = bytearray()
        while chunk := os.read(exc_r, 4096):  # returns at exec (or the child's _exit)
            failure += chunk
        os.close(exc_r)
        if failure:
            for fd in ours:
                os.close(fd)
            run.conn = None  # the loop reaps the failed child and drops its status
            raise BadRequest(failure.decode(errors="replace"))
        for fd, name in ((out_r, "stdout"), (err_r, "stderr"), (in_w, "stdin")):
            if fd < 0:
                continue
            os.set_blocking(fd, False)
            run.fds[fd] = name
            events = WRITE if name == "stdin" else READ
            self.sel.register(fd, events, lambda mask, fd=fd: self.on_pipe(run, fd))
        if stdin is not None:
            run.stdin = stdin.encode()
            self.on_pipe(run, in_w)
        return None

    def on_pipe(self, run: Run, fd: int) -> None:
        name = run.fds.get(fd)
        if name is None:  # closed earlier in this round of events
            return
        if name == "stdin":
            try:
                run.stdin = run.stdin[os.write(fd, run.stdin) :]
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EPIPE: the command does not read its stdin
                run.stdin = b""
            if not run.stdin:
                self.close_pipe(run, fd)
            return
        self.read_pipe(run, fd, name)

    def read_pipe(self, run: Run, fd: int, name: str) -> bool:
        """Read what is there; False once nothing more will come now (EOF or EAGAIN)."""
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            self.close_pipe(run, fd)
            return False
        buf = run.out[name]
        buf += data[: max(0, MAX_OUTPUT - len(buf))]
        return True

    def close_pipe(self, run: Run, fd: int) -> None:
        del run.fds[fd]
        self.sel.unregister(fd)
        os.close(fd)

    def run_exited(self, run: Run, status: int) -> None:
        # All the command wrote is in the pipes by now; drain it, but do not wait for EOF:
        # something it left running (a container process, a daemon) may hold them open.
        for fd, name in list(run.fds.items()):
            for _ in range(1024):
                if name == "stdin" or not self.read_pipe(run, fd, name):
                    break
            if fd in run.fds:
                self.close_pipe(run, fd)
        out = {k: v.decode(errors="replace") for k, v in run.out.items()}
        response: Json
        if run.timed_out:
            error = f"{run.argv0}: timed out after {run.timeout:g}s and was killed"
            response = {"ok": False, "error": error, "pid": run.pid, **out}
        else:
            response = {"ok": True, "pid": run.pid, "returncode": exit_code(status), **out}
        self.finish(run.conn, response)

    def reap(self) -> None:
        """The one place children are reaped; run commands and orphans alike."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.runs.pop(pid, None)
            if run is not None:
                self.run_exited(run, status)
                continue
            rec = exit_record(status)
            log(f"pid {pid} exited: code {rec['exit_code']} signal {rec['signal']}")
            self.exits[pid] = rec
            while len(self.exits) > MAX_EXITS:
                old = next(iter(self.exits))
                del self.exits[old]
                log(f"forgot the exit of pid {old}: more than {MAX_EXITS} unclaimed")
            for waiter in self.waiters.pop(pid, []):
                self.finish(waiter.conn, {"ok": True, "pid": pid, **rec})

    def expire(self) -> float | None:
        """Act on passed deadlines; return the seconds until the next one (None: none)."""
        now = time.monotonic()
        soonest: float | None = None
        for run in list(self.runs.values()):
            if run.deadline is None or run.timed_out:
                continue
            if run.deadline <= now:
                run.timed_out = True
                log(f"run pid {run.pid} timed out; killing it")
                for target in (-run.pid, run.pid):  # its process group, then itself
                    with contextlib.suppress(OSError):
                        os.kill(target, signal.SIGKILL)
            elif soonest is None or run.deadline < soonest:
                soonest = run.deadline
        for pid, waiters in list(self.waiters.items()):
            for waiter in list(waiters):
                if waiter.deadline is None:
                    continue
                if waiter.deadline <= now:
                    waiters.remove(waiter)
                    msg = f"timeout: pid {pid} has not exited"
                    self.finish(waiter.conn, {"ok": False, "error": msg})
                elif soonest is None or waiter.deadline < soonest:
                    soonest = waiter.deadline
            if not waiters:
                self.waiters.pop(pid, None)
        return None if soonest is None else max(0.0, soonest - now)

    # --- loop -------------------------------------------------------------------------------

    def on_wakeup(self, mask: int) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def on_stop_signal(self, signum: int, frame: object) -> None:
        log(f"{signal.Signals(signum).name} received")
        self.stopping = True

    def serve(self) -> int:
        while not self.stopping:
            for key, mask in self.sel.select(self.expire()):
                key.data(mask)
            self.reap()
        self.unlink_socket()
        for conn in list(self.conns):  # the `shutdown` answer, at least, must get out
            if conn.outbuf:
                try:
                    conn.sock.settimeout(1.0)
                    conn.sock.sendall(conn.outbuf)
                except OSError:
                    pass
            self.close(conn)
        log("exiting")
        return 0


def unix_address(path: str) -> tuple[str, int | None]:
    """An address for `path` that fits sun_path (107 bytes): a longer path is reached through
    an O_PATH descriptor of its directory, /proc/self/fd/N/name. Close the fd when done."""
    if len(os.fsencode(path)) <= 100:
        return path, None
    head, tail = os.path.split(path)
    fd = os.open(head or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{tail}", fd


def child_exec(
    argv: list[str],
    env: dict[str, str] | None,
    cwd: str | None,
    stdin_fd: int,
    stdout_fd: int,
    stderr_fd: int,
    exc_fd: int,
) -> None:
    """In the forked child: never returns (exec, or _exit(127) with the reason on exc_fd)."""
    doing = "set up"
    try:
        signal.set_wakeup_fd(-1)
        # Ignored signals stay ignored across exec; the command should see the defaults.
        for sig in (signal.SIGPIPE, signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        os.setpgid(0, 0)  # its own group, so a timeout kills what it started too
        os.dup2(stdin_fd, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        if cwd is not None:
            doing = f"chdir {cwd}"
            os.chdir(cwd)
        doing = f"run {argv[0]}"
        if env is None:
            os.execvp(argv[0], argv)
        else:
            os.execvpe(argv[0], argv, env)
    except BaseException as e:
        try:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else repr(e)
            os.write(exc_fd, f"cannot {doing}: {reason}".encode(errors="replace"))
        finally:
            os._exit(127)


def get_pid(req: Json) -> int:
    pid = req.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise BadRequest("pid must be a positive integer")
    return pid


def get_timeout(req: Json) -> float | None:
    timeout = req.get("timeout")
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
        raise BadRequest("timeout must be a non-negative number of seconds or null")
    return float(timeout)


def detach(log_path: str | None) -> None:
    """Become a daemon: the caller returns in the grandchild, in a session of its own."""
    if os.fork() > 0:
        os._exit(0)  # crispyd reaps this at once; the shim is reparented away from crispyd
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    err = null
    if log_path:
        err = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    os.dup2(err, 2)
    for fd in {null, err}:
        if fd > 2:
            os.close(fd)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a vanished client is an EPIPE, not death


def set_subreaper() -> None:
    import ctypes  # only here: it is the one thing os does not offer

    libc = ctypes.CDLL(None, use_errno=True)
    one, zero = ctypes.c_ulong(1), ctypes.c_ulong(0)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, one, zero, zero, zero) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def tell(fd: int | None, line: str) -> None:
    """Send the one startup line to whoever waits on the ready pipe, then let go of it."""
    if fd is None:
        return
    try:
        os.write(fd, f"{line}\n".encode(errors="replace"))
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def parse_args(argv: list[str]) -> Json:
    import argparse

    p = argparse.ArgumentParser(prog="crispy-shim", description="crispy's per-pod supervisor")
    p.add_argument("--version", action="version", version=VERSION_LINE)
    p.add_argument("--pod-id", required=True)
    p.add_argument("--socket", required=True, help="unix socket to serve on")
    p.add_argument("--log", help="append the shim's own log here (default: discard)")
    p.add_argument("--ready-fd", type=int, help="write 'ready <pid>' or 'error <msg>' here")
    return vars(p.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # --help, --version, usage errors: argparse has printed them
        return e.code if isinstance(e.code, int) else 2
    ready_fd: int | None = args["ready_fd"]
    if ready_fd is not None:
        try:
            os.fstat(ready_fd)
        except OSError as e:
            print(f"crispy-shim: --ready-fd {ready_fd}: {e.strerror}", file=sys.stderr)
            return 2
    try:
        detach(args["log"])
    except OSError as e:
        tell(ready_fd, f"error cannot detach: {e}")
        return 1
    try:
        set_subreaper()
        shim = Shim(args["pod_id"], args["socket"])
    except Exception as e:
        log(f"pod {args['pod_id']}: cannot start: {e}")
        tell(ready_fd, f"error {e}")
        return 1
    log(f"pod {shim.pod_id}: serving on {shim.path}")
    tell(ready_fd, f"ready {os.getpid()}")
    return shim.serve()


if __name__ == "__main__":
    sys.exit(main())
