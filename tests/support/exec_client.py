"""client-go's remotecommand over SPDY/3.1 for tests, on the independent test SPDY client.

Streams are opened as client-go's v2-v4 protocols do: error first, then stdin, stdout,
stderr and (v3+, with a TTY) resize, each with a ``streamType`` header.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from support.spdy_client import ClientStream, SpdyClient


@dataclass
class Outcome:
    head: str
    stdout: bytes
    stderr: bytes
    error: bytes  # what the error stream carried (Status JSON from v4, text before)

    def status(self) -> dict[str, object]:
        return json.loads(self.error) if self.error else {}


async def upgrade(url: str, protocols: list[str]) -> tuple[str, SpdyClient | None]:
    u = urlsplit(url)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    offer = "".join(f"X-Stream-Protocol-Version: {p}\r\n" for p in protocols)
    writer.write(
        f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: Upgrade\r\n"
        f"Upgrade: SPDY/3.1\r\n{offer}\r\n".encode()
    )
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    if not head.startswith("HTTP/1.1 101 "):
        writer.close()
        return head, None
    client = SpdyClient(reader, writer)
    client.task = asyncio.create_task(client.run())
    return head, client


class ExecStreams:
    def __init__(self, client: SpdyClient, head: str) -> None:
        self.client = client
        self.head = head
        self.streams: dict[str, ClientStream] = {}

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
        tty: bool = False,
        protocols: list[str] | None = None,
    ) -> ExecStreams:
        head, client = await upgrade(url, protocols or ["v4.channel.k8s.io"])
        assert client is not None, head
        self = cls(client, head)
        kinds = ["error"]
        kinds += [k for k, on in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)) if on]
        if tty and "X-Stream-Protocol-Version: v2.channel.k8s.io" not in head:
            kinds.append("resize")
        for kind in kinds:
            self.streams[kind] = await client.open({"streamtype": kind})
        return self

    async def write_stdin(self, data: bytes) -> None:
        await self.streams["stdin"].write(data)

    async def close_stdin(self) -> None:
        await self.streams["stdin"].close()

    async def resize(self, width: int, height: int) -> None:
        await self.streams["resize"].write(json.dumps({"Width": width, "Height": height}).encode())

    async def collect(self) -> Outcome:
        async def read(kind: str) -> bytes:
            stream = self.streams.get(kind)
            return await stream.read_all() if stream is not None else b""

        out, err, error = await asyncio.gather(read("stdout"), read("stderr"), read("error"))
        await self.client.close()
        return Outcome(self.head, out, err, error)


async def run(
    url: str,
    *,
    stdin: bytes | None = None,
    tty: bool = False,
    stderr: bool = True,
    protocols: list[str] | None = None,
) -> Outcome:
    s = await ExecStreams.open(
        url, stdin=stdin is not None, stderr=stderr and not tty, tty=tty, protocols=protocols
    )
    if stdin is not None:
        await s.write_stdin(stdin)
        await s.close_stdin()
    return await s.collect()
