"""crispy-shim: the per-pod supervisor crispyd starts once per pod.

It detaches from crispyd (so the pod's containers outlive a crispyd restart or upgrade),
makes itself the child subreaper for whatever its commands leave behind (the container
processes that `runc create` orphans when it exits), supervises the pod's containers
(their stdio, CRI logs and exit records: `containers.py`), and serves crispyd on a unix
socket: one JSON object per line each way.

Standard library only, and nothing from crispyd: it must start fast and stay small. It is
one thread around one selector (`loop.py`), so forking children is safe and exactly one
place (`Loop.reap`) collects exit statuses: a command's pid is registered before the loop
can reap it, a container's init is claimed when `runc create` has written its pid, and
nothing else ever calls waitpid.

Modules: main.py (this: the socket protocol, process setup), loop.py (selector, timers,
reaping, commands), containers.py (container supervision), crilog.py (the CRI log format).
Launched as `import main` from this directory, the others are top-level modules then.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import stat
import sys
import time

TYPE_CHECKING = False  # typing costs import time; only the type checker needs it
if TYPE_CHECKING or __package__:  # crispyd, the tests, the crispy-shim console script
    from . import containers, streams
    from .loop import READ, WRITE, BadRequest, Command, Loop, Timer, log, log_exception
else:  # the shim as launched: top-level modules from its own directory, no package around
    _here = os.path.dirname(os.path.abspath(__file__))
    if _here not in sys.path:  # run as a script under -I (which implies -P)
        sys.path.insert(0, _here)
    import containers
    import streams
    from loop import READ, WRITE, BadRequest, Command, Loop, Timer, log, log_exception

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Json = dict[str, Any]

PROTOCOL_VERSION = 1
VERSION_LINE = f"crispy-shim protocol {PROTOCOL_VERSION}"
MAX_LINE = 16 << 20  # longest request line; a client sending more is dropped
MAX_FDS = 16  # descriptors accepted with one read (exec passes 3, attach up to 3)
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NAME = 15


class Conn:
    """One client connection: requests are answered in order, one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.events = 0  # what the selector currently watches for
        self.busy = False  # an answer is pending; later lines queue in inbuf
        self.eof = False  # the client will send no more
        self.closed = False
        self.fds: list[int] = []  # received (SCM_RIGHTS), not yet taken by a request
        self.out_fds: list[int] = []  # to go with the next bytes sent, then closed here
        # What the pending request wants done should the client hang up before its answer.
        self.abandoned: list[Callable[[], None]] = []


class Waiter:
    def __init__(self, conn: Conn, timer: Timer | None, forget: bool = False) -> None:
        self.conn, self.timer, self.forget = conn, timer, forget


class Shim:
    def __init__(self, pod_id: str, path: str) -> None:
        self.pod_id = pod_id
        self.path = path
        self.started_at = time.time_ns()
        self.stopping = False
        self.loop = Loop()
        self.loop.on_orphan = self.on_orphan
        self.supervisor = containers.Supervisor(self.loop)
        streams.register(self.supervisor)
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
        for name, op in self.supervisor.ops.items():
            self.ops.setdefault(name, self.deferred(op))
        self.listener: socket.socket | None = self.bind(path)
        self.loop.watch(self.listener, READ, self.on_accept)
        signal.signal(signal.SIGTERM, self.on_stop_signal)
        signal.signal(signal.SIGINT, self.on_stop_signal)

    def deferred(
        self, op: Callable[[Json, Callable[[Json], None]], Json | None]
    ) -> Callable[[Conn, Json], Json | None]:
        """An op that may answer later, through the callback it is given."""
        return lambda conn, req: op(req, lambda response: self.finish(conn, response))

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
        self.loop.watch(self.listener, 0, None)
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
            self.loop.sel.register(conn.sock, events, lambda mask: self.on_conn(conn, mask))
        elif events == 0:
            self.loop.sel.unregister(conn.sock)
        else:
            self.loop.sel.modify(conn.sock, events, lambda mask: self.on_conn(conn, mask))
        conn.events = events

    def close(self, conn: Conn) -> None:
        if conn.closed:
            return
        if conn.events:
            self.loop.sel.unregister(conn.sock)
        conn.closed, conn.events = True, 0
        conn.sock.close()
        for fd in conn.fds + conn.out_fds:
            os.close(fd)
        conn.fds, conn.out_fds = [], []
        self.conns.discard(conn)
        # Pending commands run on; their answers go nowhere (finish skips closed conns).
        for pid, waiters in list(self.waiters.items()):
            for w in waiters:
                if w.conn is conn and w.timer is not None:
                    w.timer.cancel()
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
                data, fds, flags, _ = socket.recv_fds(
                    conn.sock, 65536, MAX_FDS, socket.MSG_CMSG_CLOEXEC
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds, flags = b"", [], 0
            conn.fds += fds
            if flags & socket.MSG_CTRUNC:
                log("a client sent more descriptors than one request takes; dropping it")
                self.close(conn)
                return
            if data:
                conn.inbuf += data
            else:
                conn.eof = True
                if conn.inbuf and not conn.inbuf.endswith(b"\n"):
                    conn.inbuf += b"\n"  # a last request without its newline still counts
                if conn.busy and conn.abandoned and hung_up(conn.sock):
                    self.abandon(conn)
                    return
            self.process(conn)

    def abandon(self, conn: Conn) -> None:
        """The client closed its end (not just its writing half) while its request was
        pending: the request's hooks run (an exec_sync kills its process), and the
        connection goes."""
        hooks, conn.abandoned = conn.abandoned, []
        for hook in hooks:
            self.loop.safely(hook)
        self.close(conn)

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
        conn.out_fds += response.pop("_fds", None) or []
        conn.outbuf += json.dumps(response, separators=(",", ":")).encode() + b"\n"
        self.flush(conn)

    def flush(self, conn: Conn) -> None:
        while conn.outbuf:
            try:
                if conn.out_fds:  # the descriptors ride on the answer's first bytes
                    sent = socket.send_fds(conn.sock, [conn.outbuf], conn.out_fds)
                    for fd in conn.out_fds:
                        os.close(fd)
                    conn.out_fds = []
                else:
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
        conn.abandoned = []
        self.reply(conn, response)
        if not conn.closed:
            self.process(conn)

    # --- requests ---------------------------------------------------------------------------

    def handle(self, conn: Conn, line: bytes) -> None:
        # Descriptors sent with this request; an op takes those it uses, the rest are closed.
        fds, conn.fds = conn.fds, []
        try:
            self.dispatch(conn, line, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def dispatch(self, conn: Conn, line: bytes, fds: list[int]) -> None:
        try:
            req = json.loads(line)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError alike
            self.reply(conn, {"ok": False, "error": f"malformed JSON request: {e}"})
            return
        if not isinstance(req, dict):
            self.reply(conn, {"ok": False, "error": "a request must be a JSON object"})
            return
        req["_fds"] = fds
        req["_abandoned"] = conn.abandoned = []
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
            log_exception(str(op))
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
        return {"ok": True, "exits": {str(pid): rec for pid, rec in self.loop.orphans.items()}}

    def op_forget(self, conn: Conn, req: Json) -> Json:
        forgotten = self.loop.orphans.pop(containers.get_pid(req), None) is not None
        return {"ok": True, "forgotten": forgotten}

    def op_wait(self, conn: Conn, req: Json) -> Json | None:
        """Wait for a container's exit record ("id", or the "pid" of its init: answered once
        the record is written) or for an orphan's exit ("pid")."""
        if "id" not in req and "pid" in req:
            container = self.supervisor.by_pid(containers.get_pid(req))
            if container is not None:
                req = {**req, "id": container.id}
        if "id" in req:
            return self.supervisor.op_wait(req, lambda response: self.finish(conn, response))
        pid = containers.get_pid(req)
        timeout = get_timeout(req)
        forget = req.get("forget") is True  # the caller is the only one to ask: drop the record
        if pid in self.loop.orphans:
            record = self.loop.orphans.pop(pid) if forget else self.loop.orphans[pid]
            return {"ok": True, "pid": pid, **record}
        if pid in self.loop.children:
            raise BadRequest(f"pid {pid} is a command or container of the shim's own")
        waiter = Waiter(conn, None, forget)
        if timeout is not None:
            waiter.timer = self.loop.call_later(timeout, lambda: self.wait_expired(pid, waiter))
        self.waiters.setdefault(pid, []).append(waiter)
        return None

    def wait_expired(self, pid: int, waiter: Waiter) -> None:
        waiters = self.waiters.get(pid, [])
        if waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self.waiters[pid]
            self.finish(waiter.conn, {"ok": False, "error": f"timeout: pid {pid} has not exited"})

    def on_orphan(self, pid: int, record: Json) -> None:
        for waiter in self.waiters.pop(pid, []):
            if waiter.timer is not None:
                waiter.timer.cancel()
            if waiter.forget:
                self.loop.orphans.pop(pid, None)
            self.finish(waiter.conn, {"ok": True, "pid": pid, **record})

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

        def done(cmd: Command) -> None:
            out = {"stdout": cmd.text("stdout"), "stderr": cmd.text("stderr")}
            response: Json
            if cmd.timed_out:
                error = f"{argv[0]}: timed out after {cmd.timeout:g}s and was killed"
                response = {"ok": False, "error": error, "pid": cmd.pid, **out}
            else:
                response = {"ok": True, "pid": cmd.pid, "returncode": cmd.returncode, **out}
            self.finish(conn, response)

        # "null" is for commands whose leftovers (a container started by `runc create`)
        # inherit their stdout and stderr: those must not be pipes the shim stops reading.
        Command(
            self.loop,
            argv,
            done,
            env=env,
            cwd=cwd,
            stdin=None if stdin is None else stdin.encode(),
            capture=stdio == "pipe",
            timeout=get_timeout(req),
        )
        return None

    # --- loop -------------------------------------------------------------------------------

    def on_stop_signal(self, signum: int, frame: object) -> None:
        log(f"{signal.Signals(signum).name} received")
        self.stopping = True

    def serve(self) -> int:
        while not self.stopping:
            self.loop.run_once()
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


def hung_up(sock: socket.socket) -> bool:
    """Whether the peer of a Unix stream socket has closed it for good (POLLHUP), rather
    than only shut down its writing half (which leaves it waiting for an answer)."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0))


def unix_address(path: str) -> tuple[str, int | None]:
    """An address for `path` that fits sun_path (107 bytes): a longer path is reached through
    an O_PATH descriptor of its directory, /proc/self/fd/N/name. Close the fd when done."""
    if len(os.fsencode(path)) <= 100:
        return path, None
    head, tail = os.path.split(path)
    fd = os.open(head or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{tail}", fd


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
    daemon_stdio(log_path)


def daemon_stdio(log_path: str | None) -> None:
    """A session of its own, cwd /, stdio on /dev/null (stderr on the log), no SIGHUP."""
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
    # A shim forked by the zygote keeps the zygote's command line; its name tells them apart.
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(b"crispy-shim"), zero, zero, zero)


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
    p.add_argument("--pod-id", help="the pod this shim serves")
    p.add_argument("--zygote", action="store_true", help="fork pods' shims on request")
    p.add_argument("--socket", required=True, help="unix socket to serve on")
    p.add_argument("--log", help="append the shim's own log here (default: discard)")
    p.add_argument("--ready-fd", type=int, help="write 'ready <pid>' or 'error <msg>' here")
    return vars(p.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # --help, --version, usage errors: argparse has printed them
        return e.code if isinstance(e.code, int) else 2
    if not args["zygote"] and not args["pod_id"]:
        print("crispy-shim: --pod-id or --zygote is required", file=sys.stderr)
        return 2
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
    if args["zygote"]:
        if __package__:
            from . import zygote
        else:
            import zygote  # type: ignore[no-redef]
        return zygote.serve(args["socket"], ready_fd)
    return become_shim(args["pod_id"], args["socket"], ready_fd)


def become_shim(pod_id: str, socket_path: str, ready_fd: int | None) -> int:
    """Serve as the pod's shim in this (detached) process until told to stop."""
    try:
        set_subreaper()
        shim = Shim(pod_id, socket_path)
    except Exception as e:
        log(f"pod {pod_id}: cannot start: {e}")
        tell(ready_fd, f"error {e}")
        return 1
    log(f"pod {shim.pod_id}: serving on {shim.path}")
    tell(ready_fd, f"ready {os.getpid()}")
    return shim.serve()


if __name__ == "__main__":
    sys.exit(main())
