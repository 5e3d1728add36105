"""The end of an exec over SPDY: its status must reach a client that is still sending.

No daemon here: run_exec and the SPDY session run on a loopback connection, with a fake exec'd
process (a pipe for stdout, an exit the test decides) and a raw-socket client speaking SPDY
frames, so the test chooses who sends what when.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest

from crispy.containers.stdio import Stdio
from crispy.streaming import channels
from crispy.streaming import remotecommand as rc
from crispy.streaming import session as session_mod
from crispy.streaming.session import SpdySession
from crispy.streaming.spdy import (
    DataFrame,
    Frame,
    FrameReader,
    FrameWriter,
    GoAway,
    SynReply,
    SynStream,
    WindowUpdate,
)
from crispy.system.fdio import FdReader

OPTIONS = rc.Options(stdin=False, stdout=True, stderr=False, tty=False)
TARGET = rc.ExecTarget("c1", ("cat",), OPTIONS)
ERROR, STDOUT = 1, 3  # the client's stream ids, error first as client-go opens them
SMALL_BUFFER = 4096  # socket buffers: most of what crispyd sends stays queued on its side


class FakeProcess(Stdio):
    """An exec'd process: the test writes its stdout and decides when it exits."""

    def __init__(self) -> None:
        super().__init__(tty=False)
        r, self.out = os.pipe2(os.O_CLOEXEC)
        self.stdout = FdReader(r)
        self.exited: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def wait(self) -> dict[str, Any]:
        return await asyncio.shield(self.exited)

    async def kill(self) -> None:
        if not self.exited.done():
            self.exited.set_result({"exit_code": 137})

    def resize(self, width: int, height: int) -> None:
        pass

    def exit(self, output: bytes, code: int) -> None:
        os.write(self.out, output)  # fits the pipe: the test keeps it under 64 KiB
        os.close(self.out)
        self.exited.set_result({"exit_code": code})


class FakeExecs:
    def __init__(self, proc: FakeProcess) -> None:
        self.proc = proc

    async def exec_stream(self, container_id: str, cmd: list[str], **kw: bool) -> FakeProcess:
        return self.proc


class RawClient:
    """A SPDY client on a bare non-blocking socket: it reads only when the test says so."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.frames_in = FrameReader()
        self.frames_out = FrameWriter()
        self.frames: list[Frame] = []
        self.eof = False
        self.reset: ConnectionError | None = None

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)  # before connect
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(sock)

    async def send(self, *frames: Frame) -> None:
        data = b"".join(self.frames_out.encode(f) for f in frames)
        await self.loop.sock_sendall(self.sock, data)

    async def read_some(self) -> None:
        try:
            data = await self.loop.sock_recv(self.sock, 1024)
        except ConnectionError as e:
            self.reset = e
            return
        if not data:
            self.eof = True
            return
        self.frames += self.frames_in.feed(data)

    async def read_while(self, cond: Callable[[], bool]) -> None:
        while cond() and not (self.eof or self.reset):
            await self.read_some()
            for _ in range(3):  # let crispyd fill the room that read made before reading on
                await asyncio.sleep(0)

    def data(self, stream_id: int) -> bytes:
        return b"".join(
            f.data for f in self.frames if isinstance(f, DataFrame) and f.stream_id == stream_id
        )

    def fin(self, stream_id: int) -> bool:
        return any(
            isinstance(f, DataFrame) and f.stream_id == stream_id and f.fin for f in self.frames
        )


def run(test: Callable[[], Any], timeout: float = 10) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), timeout)

    asyncio.run(bounded())


async def until(cond: Callable[[], bool], timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


def test_exec_status_reaches_a_client_that_sends_as_the_session_closes() -> None:
    """The flake of test_exec_100mb_through_cat, with its ordering forced.

    As the client reads an exec's last output it hands back window credit (WINDOW_UPDATE).
    When those bytes arrived after crispyd had stopped reading to close the connection,
    closing a socket with unread input made the kernel send RST and throw away what crispyd
    had queued but not yet sent: the tail of the output, the status on the error stream,
    the FINs. The client saw a reset and an empty error stream.
    """
    payload = os.urandom(48 * 1024)

    async def test() -> None:
        proc = FakeProcess()
        served: asyncio.Future[tuple[SpdySession, asyncio.StreamWriter, asyncio.Task[Any]]]
        served = asyncio.get_running_loop().create_future()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER
            )
            session = SpdySession(reader, writer)
            session.start()
            task = asyncio.current_task()
            assert task is not None
            served.set_result((session, writer, task))
            streams = rc.SpdyStreams(session, channels.V4_CHANNEL, OPTIONS)
            await streams.setup()
            await rc.run_exec(FakeExecs(proc), TARGET, streams)  # type: ignore[arg-type]

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        client = await RawClient.connect(server.sockets[0].getsockname()[1])
        try:
            await client.send(
                SynStream(ERROR, {"streamtype": "error"}),
                SynStream(STDOUT, {"streamtype": "stdout"}),
            )
            session, writer, handler = await served
            proc.exit(payload, 0)  # run_exec copies its output first, then writes the status
            await until(lambda: session.closed)  # status written, the session is closing
            # The client has read nothing yet, so crispyd still holds data it could not send.
            assert writer.transport.get_write_buffer_size() > 0
            # Now the client returns window credit, as client-go and the tests' client do
            # while reading; crispyd no longer reads the session's frames.
            await client.send(WindowUpdate(0, 32 * 1024))
            # It reads until crispyd handed everything to the kernel, then pauses: what the
            # small socket buffers did not take is still queued, unsent, on crispyd's side.
            await client.read_while(lambda: writer.transport.get_write_buffer_size() > 0)
            await asyncio.wait({handler}, timeout=0.5)  # crispyd may close the socket now
            await client.read_while(lambda: True)

            assert client.data(ERROR), "no status on the error stream"
            assert json.loads(client.data(ERROR)) == {"metadata": {}, "status": "Success"}
            assert client.data(STDOUT) == payload
            assert client.fin(ERROR) and client.fin(STDOUT)
            assert client.reset is None, f"crispyd reset the connection: {client.reset!r}"
            assert client.eof
            assert sum(isinstance(f, SynReply) for f in client.frames) == 2
            assert any(isinstance(f, GoAway) for f in client.frames)

            client.sock.close()  # the client hangs up once it has read everything
            await asyncio.wait_for(handler, 2)  # crispyd's close ends with the client's
        finally:
            client.sock.close()
            server.close()
            await server.wait_closed()

    run(test)


def test_closing_waits_for_a_silent_client_no_longer_than_the_linger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that never hangs up does not hold crispyd's close for ever."""
    monkeypatch.setattr(session_mod, "CLOSE_LINGER", 0.3)

    async def test() -> None:
        sessions: asyncio.Queue[SpdySession] = asyncio.Queue()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            session = SpdySession(reader, writer)
            session.start()
            await sessions.put(session)

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        client = await RawClient.connect(server.sockets[0].getsockname()[1])
        try:
            session = await sessions.get()
            loop = asyncio.get_running_loop()
            start = loop.time()
            closing = asyncio.create_task(session.close())
            await client.read_while(lambda: True)  # GOAWAY, then crispyd's FIN
            assert client.eof and client.reset is None
            assert isinstance(client.frames[-1], GoAway)
            await client.send(WindowUpdate(0, 1024))  # still talking, never closing
            await asyncio.wait_for(closing, 2)
            assert 0.25 < loop.time() - start < 1.5
        finally:
            client.sock.close()
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    run(test)
