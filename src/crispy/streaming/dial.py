"""Port-forward's dial: a TCP connection to localhost:<port> inside a pod's network namespace.

No process is needed in the pod. A socket keeps the network namespace it was created in,
so the sockets are created in a short-lived thread that has joined the pod's netns
(system.ns.run_in_netns) and then connected, non-blocking, on the event loop: the connect
happens in the socket's namespace whichever thread issues it, and stays cancellable.
"localhost" is 127.0.0.1, then ::1 if IPv4 fails, as kubelet's port-forward dials it.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from crispy.system.ns import run_in_netns

_TARGETS = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))


def _new_sockets() -> list[tuple[socket.socket, str]]:
    """A non-blocking TCP socket per loopback family the namespace supports."""
    out: list[tuple[socket.socket, str]] = []
    for family, host in _TARGETS:
        try:
            s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError:  # e.g. EAFNOSUPPORT: no IPv6 in this kernel
            continue
        s.setblocking(False)
        out.append((s, host))
    if not out:
        raise OSError(errno.EAFNOSUPPORT, "cannot create a TCP socket")
    return out


async def _connect(socks: list[tuple[socket.socket, str]], port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    errors: list[OSError] = []
    for s, host in socks:
        try:
            await loop.sock_connect(s, (host, port))
            return s
        except OSError as e:
            errors.append(e)
    if any(isinstance(e, ConnectionRefusedError) for e in errors):
        raise ConnectionRefusedError(
            errno.ECONNREFUSED, f"connection refused: nothing listens on localhost:{port}"
        )
    first = errors[0]
    raise OSError(first.errno, f"cannot connect to localhost:{port}: {first.strerror or first}")


async def dial_in_netns(
    netns_path: str, port: int, timeout: float = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to TCP localhost:`port` in the network namespace at `netns_path` ("" for a
    host-network pod: the host's own namespace) and return asyncio streams for it.

    ConnectionRefusedError when nothing listens on the port, TimeoutError after `timeout`
    seconds, FileNotFoundError / OSError when the netns file is gone or not a netns;
    every connect error's message names the port."""
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    socks: list[tuple[socket.socket, str]] = []
    handed_off: socket.socket | None = None
    try:
        async with asyncio.timeout(timeout):
            if netns_path:
                socks = await _new_sockets_in(netns_path)
            else:
                socks = _new_sockets()
            connected = await _connect(socks, port)
            reader, writer = await asyncio.open_connection(sock=connected)
            handed_off = connected
    except TimeoutError:
        raise TimeoutError(f"connecting to localhost:{port} timed out after {timeout:g}s") from None
    finally:
        for s, _ in socks:
            if s is not handed_off:
                s.close()
    return reader, writer


async def _new_sockets_in(netns_path: str) -> list[tuple[socket.socket, str]]:
    """_new_sockets in the netns, off the event loop; sockets made after a cancel are closed."""
    fut = asyncio.ensure_future(asyncio.to_thread(run_in_netns, netns_path, _new_sockets))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        fut.add_done_callback(_close_result)
        raise


def _close_result(fut: asyncio.Future[list[tuple[socket.socket, str]]]) -> None:
    if fut.cancelled() or fut.exception() is not None:
        return
    for s, _ in fut.result():
        s.close()
