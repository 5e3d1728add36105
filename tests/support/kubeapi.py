"""Just enough of a Kubernetes API server for kubectl exec/attach/port-forward, on loopback.

kubectl (a real client-go: gorilla/websocket, moby/spdystream) asks the API server for the
pod, then upgrades ``/api/v1/namespaces/<ns>/pods/<name>/{exec,attach,portforward}``. The API
server would proxy that to kubelet, and kubelet to the runtime's streaming URL; here the
proxy goes straight to the next URL the test queued (from CRI Exec/Attach/PortForward):
the request head is rewritten to that URL's path, the rest of the connection is spliced
byte for byte. So crispyd's streaming server sees what kubelet would forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024

# Legacy (unaggregated) discovery: kubectl resolves "pods" through it.
_SUBRESOURCES = ("exec", "attach", "portforward")
DISCOVERY: dict[str, object] = {
    "/api": {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    },
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {
                "name": "pods",
                "singularName": "pod",
                "namespaced": True,
                "kind": "Pod",
                "verbs": ["get", "list"],
                "shortNames": ["po"],
            },
            *(
                {
                    "name": f"pods/{sub}",
                    "singularName": "",
                    "namespaced": True,
                    "kind": "Pod",
                    "verbs": ["create", "get"],
                }
                for sub in _SUBRESOURCES
            ),
        ],
    },
}


class KubeAPI:
    def __init__(self, namespace: str = "default", pod: str = "box", container: str = "c") -> None:
        self.namespace, self.pod, self.container = namespace, pod, container
        self.urls: deque[str] = deque()  # streaming URLs, used in order
        self.seen: list[str] = []  # request lines received, for assertions
        self.upgrades: list[str] = []  # the Upgrade header of each proxied request
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> KubeAPI:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "t", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}
                    ],
                    "users": [{"name": "t", "user": {}}],
                    "contexts": [
                        {
                            "name": "t",
                            "context": {"cluster": "t", "user": "t", "namespace": self.namespace},
                        }
                    ],
                    "current-context": "t",
                }
            )
        )
        return path

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, limit=MAX_HEAD)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        # Connections still spliced (kubectl killed mid-session) end here, inside the loop.
        server.close()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    def pod_json(self) -> bytes:
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": self.pod, "namespace": self.namespace},
                "spec": {"containers": [{"name": self.container, "image": "busybox"}]},
                "status": {
                    "phase": "Running",
                    "containerStatuses": [
                        {"name": self.container, "ready": True, "state": {"running": {}}}
                    ],
                },
            }
        ).encode()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # kubectl reuses the connection for plain requests
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line = head.split(b"\r\n", 1)[0].decode()
                self.seen.append(line)
                method, target, _ = line.split(" ", 2)
                path = target.split("?", 1)[0]
                base = f"/api/v1/namespaces/{self.namespace}/pods/{self.pod}"
                if path == base and method == "GET":
                    self._reply(writer, 200, self.pod_json(), "application/json")
                elif method == "GET" and path in DISCOVERY:
                    self._reply(
                        writer, 200, json.dumps(DISCOVERY[path]).encode(), "application/json"
                    )
                elif path.startswith(base + "/") and path.rsplit("/", 1)[1] in (
                    "exec",
                    "attach",
                    "portforward",
                ):
                    await self._proxy(head, reader, writer)
                    return
                else:
                    body = json.dumps(
                        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
                    ).encode()
                    self._reply(writer, 404, body, "application/json")
                await writer.drain()
        finally:
            writer.close()

    @staticmethod
    def _reply(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str) -> None:
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    async def _proxy(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if not self.urls:
            self._reply(writer, 500, b"no streaming URL queued\n", "text/plain")
            await writer.drain()
            return
        u = urlsplit(self.urls.popleft())
        first, rest = head.split(b"\r\n", 1)
        for line in rest.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "upgrade":
                self.upgrades.append(value.strip())
        method, target, version = first.decode().split(" ", 2)
        query = target.split("?", 1)[1] if "?" in target else ""
        new_target = u.path + (f"?{u.query}" if u.query else (f"?{query}" if query else ""))
        up_r, up_w = await asyncio.open_connection(u.hostname, u.port)
        up_w.write(f"{method} {new_target} {version}\r\n".encode() + rest)
        await up_w.drain()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                if dst.can_write_eof():
                    dst.write_eof()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        up_w.close()
