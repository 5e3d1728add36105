"""The shim zygote: one detached process that forks each pod's shim.

A new interpreter per pod costs ~40 ms of CPU and ~5 MiB of private memory. Forked from
a zygote that has imported the shim and frozen its objects out of the collector's reach
(gc.freeze), a shim starts in about a millisecond and shares those pages copy-on-write
with every other shim. Each shim is forked twice, so it is reparented to init like a
directly spawned one, and then runs exactly the code `crispy-shim --pod-id` runs.

Protocol (one JSON line each way): health -> {ok, pid, code}; spawn {pod_id, socket, log}
-> {ok, pid} once the shim listens; shutdown -> {ok}, then the zygote exits.
Standard library only, like the shim.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import select
import signal
import socket
import sys

if __package__:
    from . import main as shim_main
    from .loop import log
else:  # launched with its directory on sys.path
    import main as shim_main  # type: ignore[no-redef]
    from loop import log  # type: ignore[no-redef]

SPAWN_TIMEOUT = 10.0
# Every file the shim runs, the stdlib-only helpers outside shim/ too.
MODULES = (
    "main.py",
    "zygote.py",
    "containers.py",
    "streams.py",
    "loop.py",
    "crilog.py",
    "runtime_argv.py",
    os.path.join("..", "system", "atomic.py"),
)


def code_id() -> str:
    """Identifies the shim code on disk: a zygote of other code must be replaced."""
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for name in MODULES:
        with contextlib.suppress(OSError):
            st = os.stat(os.path.join(here, name))
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _bind(path: str) -> socket.socket:
    addr, dir_fd = shim_main.unix_address(path)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # crispyd only starts a zygote where none answers
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            s.bind(addr)
        finally:
            os.umask(old)
        s.listen(16)
        return s
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


def _read_line(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n") and len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _spawn(
    req: dict[str, object], listener: socket.socket, conn: socket.socket
) -> dict[str, object]:
    pod_id, path, log_path = req.get("pod_id"), req.get("socket"), req.get("log")
    if not isinstance(pod_id, str) or not isinstance(path, str) or not pod_id or not path:
        return {"ok": False, "error": "spawn needs pod_id and socket"}
    if log_path is not None and not isinstance(log_path, str):
        return {"ok": False, "error": "log must be a path"}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked children
        code = 1
        try:
            os.close(r)
            listener.close()
            conn.close()
            if os.fork() > 0:
                os._exit(0)  # the zygote reaps this; the shim is reparented to init
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            shim_main.daemon_stdio(log_path or None)
            code = shim_main.become_shim(pod_id, path, w)
        finally:
            os._exit(code)
    os.close(w)
    try:
        os.waitpid(pid, 0)
        line = b""
        ready, _, _ = select.select([r], [], [], SPAWN_TIMEOUT)
        if ready:
            line = os.read(r, 4096)
    finally:
        os.close(r)
    word, _, rest = line.decode(errors="replace").strip().partition(" ")
    if word == "ready" and rest.isdigit():
        return {"ok": True, "pid": int(rest)}
    if word == "error":
        return {"ok": False, "error": rest}
    return {"ok": False, "error": f"the shim for pod {pod_id} did not start in time"}


def serve(path: str, ready_fd: int | None) -> int:
    try:
        listener = _bind(path)
    except OSError as e:
        shim_main.tell(ready_fd, f"error bind {path}: {e.strerror or e}")
        return 1
    code = code_id()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Everything imported so far is shared with every shim: keep the collector from
    # writing to (and so un-sharing) those pages.
    gc.collect()
    gc.freeze()
    log(f"shim zygote serving on {path}")
    shim_main.tell(ready_fd, f"ready {os.getpid()}")
    try:
        while True:
            conn, _ = listener.accept()
            with conn:
                try:
                    req = json.loads(_read_line(conn, 5.0) or b"null")
                    if not isinstance(req, dict):
                        raise ValueError("not a JSON object")
                    op = req.get("op")
                    if op == "health":
                        reply: dict[str, object] = {"ok": True, "pid": os.getpid(), "code": code}
                    elif op == "spawn":
                        reply = _spawn(req, listener, conn)
                    elif op == "shutdown":
                        conn.sendall(b'{"ok": true}\n')
                        return 0
                    else:
                        reply = {"ok": False, "error": f"unknown op {op!r}"}
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except (OSError, ValueError) as e:
                    with contextlib.suppress(OSError):
                        conn.sendall(json.dumps({"ok": False, "error": str(e)}).encode() + b"\n")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        log("shim zygote exiting")
