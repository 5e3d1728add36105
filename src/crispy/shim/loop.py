"""The shim's event loop: one selector, timers, and the one place children are reaped.

Single-threaded, so forking is safe and exactly one place (`Loop.reap`) collects exit
statuses: whoever starts or adopts a process registers a callback for its pid before the
loop can next reap (`Loop.children`, `Loop.claim`); the exits nobody claimed are kept as
orphan records. `Command` runs a child to completion with its output captured.

Standard library only; imported as a top-level module in the shim.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import selectors
import signal
import time

TYPE_CHECKING = False  # typing costs import time; only the type checker needs it
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Json = dict[str, Any]

MAX_OUTPUT = 16 << 20  # captured per stream of a command; the rest is read and dropped
MAX_ORPHANS = 4096  # unclaimed exit records kept; beyond this the oldest go
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class BadRequest(Exception):
    """A request the shim understood but cannot do; answered as ok:false."""


def log(msg: str) -> None:
    # fd 2 is the log file (opened O_APPEND), so one write is one whole line.
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    with contextlib.suppress(OSError):
        os.write(2, f"{stamp}Z crispy-shim[{os.getpid()}] {msg}\n".encode(errors="replace"))


def log_exception(what: str) -> None:
    import traceback

    log(f"{what} failed:\n{traceback.format_exc()}")


def exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)  # what a shell, runc and the CRI report when killed
    return os.waitstatus_to_exitcode(status)


def exit_record(status: int) -> Json:
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    return {"exit_code": exit_code(status), "signal": sig, "finished_at": time.time_ns()}


def close_fd(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


class Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.timers: list[tuple[float, int, Timer]] = []
        self.seq = itertools.count()
        self.children: dict[int, Callable[[Json], None]] = {}  # pid -> called with its exit
        self.orphans: dict[int, Json] = {}  # exits of processes nobody claimed
        self.on_orphan: Callable[[int, Json], None] | None = None
        # Signals only wake the loop (the handlers run between bytecodes); the work, reaping
        # included, happens in the loop itself.
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        self.watch(self.wake_r, READ, self.on_wakeup)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    # --- file descriptors and timers -------------------------------------------------------

    def watch(self, fd: Any, events: int, callback: Callable[[int], None] | None) -> None:
        """Call `callback(mask)` when `fd` is ready for `events`; 0 events: stop watching."""
        try:
            key = self.sel.get_key(fd)
        except KeyError:
            if events:
                self.sel.register(fd, events, callback)
            return
        if not events:
            self.sel.unregister(fd)
        elif key.events != events or key.data is not callback:
            self.sel.modify(fd, events, callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + max(0.0, delay), callback)
        heapq.heappush(self.timers, (timer.when, next(self.seq), timer))
        return timer

    def run_timers(self) -> float | None:
        """Run the timers that are due; return the seconds until the next one (None: none)."""
        while self.timers:
            when, _, timer = self.timers[0]
            if timer.cancelled:
                heapq.heappop(self.timers)
                continue
            now = time.monotonic()
            if when > now:
                return when - now
            heapq.heappop(self.timers)
            timer.cancelled = True
            self.safely(timer.callback)
        return None

    @staticmethod
    def safely(callback: Callable[..., None], *args: Any) -> None:
        """A bug in one callback must cost that event, not the pod's supervisor."""
        try:
            callback(*args)
        except Exception:
            log_exception(getattr(callback, "__qualname__", repr(callback)))

    def run_once(self) -> None:
        timeout = self.run_timers()
        for key, mask in self.sel.select(timeout):
            self.safely(key.data, mask)
        self.reap()

    def on_wakeup(self, mask: int) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # --- children ---------------------------------------------------------------------------

    def claim(self, pid: int, callback: Callable[[Json], None]) -> None:
        """Call `callback(record)` when `pid` (an adopted process, a container's init) exits;
        at once if it already has."""
        record = self.orphans.pop(pid, None)
        if record is None:
            self.children[pid] = callback
        else:
            self.safely(callback, record)

    def reap(self) -> None:
        """The one place children are reaped: commands, adopted processes, orphans alike."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            record = exit_record(status)
            callback = self.children.pop(pid, None)
            if callback is not None:
                self.safely(callback, record)
                continue
            log(f"pid {pid} exited: code {record['exit_code']} signal {record['signal']}")
            self.orphans[pid] = record
            while len(self.orphans) > MAX_ORPHANS:
                old = next(iter(self.orphans))
                del self.orphans[old]
                log(f"forgot the exit of pid {old}: more than {MAX_ORPHANS} unclaimed")
            if self.on_orphan is not None:
                self.safely(self.on_orphan, pid, record)


class Command:
    """A child process run to completion: its exit, its captured output, a deadline.

    Its stdio is either three fds of the caller's (`stdio`, e.g. a container's pipes for
    `runc create`; the caller closes its copies), or pipes the command's stdout and stderr
    are captured from (`capture`, up to `max_output` bytes each, the rest read and dropped;
    else /dev/null) with `stdin` written to it (else /dev/null). `done(cmd)` is called once,
    when it has exited, with what was in the pipes then: no waiting for EOF, as something it
    left running (a container, a daemon) may hold them. At `timeout` seconds it is killed
    (SIGKILL to its process group, which it leads, and to itself).
    """

    def __init__(
        self,
        loop: Loop,
        argv: list[str],
        done: Callable[[Command], None],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        stdio: tuple[int, int, int] | None = None,
        capture: bool = True,
        max_output: int = MAX_OUTPUT,
        timeout: float | None = None,
    ) -> None:
        self.loop = loop
        self.argv = argv
        self.done_callback: Callable[[Command], None] | None = done
        self.max_output = max_output
        self.timeout = timeout
        self.pid = 0
        self.record: Json | None = None  # the exit, once reaped
        self.timed_out = False
        self.out = {"stdout": bytearray(), "stderr": bytearray()}
        self.fds: dict[int, str] = {}  # open pipe fd -> "stdout" | "stderr" | "stdin"
        self.stdin = stdin or b""
        self.timer: Timer | None = None
        self.start(env, cwd, stdin is not None, stdio, capture)

    @property
    def returncode(self) -> int:
        return -1 if self.record is None else int(self.record["exit_code"])

    def text(self, name: str) -> str:
        return self.out[name].decode(errors="replace")

    def start(
        self,
        env: dict[str, str] | None,
        cwd: str | None,
        feed: bool,
        stdio: tuple[int, int, int] | None,
        capture: bool,
    ) -> None:
        ours: dict[int, str] = {}
        theirs: list[int] = []  # made here for the child, closed here once it has them
        try:
            if stdio is not None:
                in_r, out_w, err_w = stdio
            else:
                if capture:
                    for name in ("stdout", "stderr"):
                        r, w = os.pipe()
                        ours[r] = name
                        theirs.append(w)
                    out_w, err_w = theirs
                else:
                    out_w = err_w = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                    theirs.append(out_w)
                if feed:
                    in_r, in_w = os.pipe()
                    ours[in_w] = "stdin"
                else:
                    in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                theirs.append(in_r)
            exc_r, exc_w = os.pipe()  # close-on-exec: EOF without data means exec succeeded
        except OSError:
            for fd in [*ours, *theirs]:
                close_fd(fd)
            raise
        try:
            pid = os.fork()
        except OSError:
            for fd in [*ours, *theirs, exc_r, exc_w]:
                close_fd(fd)
            raise
        if pid == 0:
            child_exec(self.argv, env, cwd, in_r, out_w, err_w, exc_w)
        # Registered before the loop can next reap, so this status can never be an orphan's.
        self.pid = pid
        self.loop.children[pid] = self.exited
        for fd in [*theirs, exc_w]:
            os.close(fd)
        failure = bytearray()
        while chunk := os.read(exc_r, 4096):  # returns at exec (or the child's _exit)
            failure += chunk
        os.close(exc_r)
        if failure:
            for fd in ours:
                os.close(fd)
            self.done_callback = None  # the loop reaps the failed child; nobody hears of it
            raise BadRequest(failure.decode(errors="replace"))
        for fd, name in ours.items():
            os.set_blocking(fd, False)
            self.fds[fd] = name
            self.loop.watch(fd, WRITE if name == "stdin" else READ, self.pipe_callback(fd))
        if self.timeout is not None:
            self.timer = self.loop.call_later(self.timeout, self.expired)

    def pipe_callback(self, fd: int) -> Callable[[int], None]:
        return lambda mask: self.on_pipe(fd)

    def on_pipe(self, fd: int) -> None:
        name = self.fds.get(fd)
        if name is None:  # closed earlier in this round of events
            return
        if name == "stdin":
            try:
                self.stdin = self.stdin[os.write(fd, self.stdin) :]
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EPIPE: the command does not read its stdin
                self.stdin = b""
            if not self.stdin:
                self.close_pipe(fd)
            return
        self.read_pipe(fd, name)

    def read_pipe(self, fd: int, name: str) -> bool:
        """Read what is there; False once nothing more will come now (EOF or EAGAIN)."""
        got = read_capped(fd, self.out[name], self.max_output)
        if got is None:
            self.close_pipe(fd)
            return False
        return got

    def close_pipe(self, fd: int) -> None:
        del self.fds[fd]
        self.loop.watch(fd, 0, None)
        os.close(fd)

    def exited(self, record: Json) -> None:
        self.record = record
        # All the command wrote is in the pipes by now: take it, but do not wait for EOF.
        for fd, name in list(self.fds.items()):
            for _ in range(1024):
                if name == "stdin" or not self.read_pipe(fd, name):
                    break
            if fd in self.fds:
                self.close_pipe(fd)
        if self.timer is not None:
            self.timer.cancel()
        callback, self.done_callback = self.done_callback, None
        if callback is not None:
            callback(self)

    def expired(self) -> None:
        if self.record is not None:
            return
        self.timed_out = True
        log(f"{self.argv[0]} (pid {self.pid}) timed out after {self.timeout:g}s; killing it")
        self.kill()

    def kill(self) -> None:
        """SIGKILL to its process group and to itself."""
        if self.record is None:
            for target in (-self.pid, self.pid):
                with contextlib.suppress(OSError):
                    os.kill(target, signal.SIGKILL)


def child_exec(
    argv: list[str],
    env: dict[str, str] | None,
    cwd: str | None,
    stdin_fd: int,
    stdout_fd: int,
    stderr_fd: int,
    exc_fd: int,
) -> None:
    """In the forked child: never returns (exec, or _exit(127) with the reason on exc_fd).
    Every fd of the shim is close-on-exec, so the command gets these three and nothing else."""
    doing = "set up"
    try:
        signal.set_wakeup_fd(-1)
        # Ignored signals stay ignored across exec (and into a container, through runc);
        # the command must see the defaults.
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


def read_capped(fd: int, buf: bytearray, cap: int) -> bool | None:
    """Read what a non-blocking fd has into `buf`, which keeps at most `cap` bytes (the rest
    is read and dropped). True: read some; False: nothing now; None: EOF (or an error)."""
    try:
        data = os.read(fd, 65536)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return None
    if not data:
        return None
    buf += data[: max(0, cap - len(buf))]
    return True
