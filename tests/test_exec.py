"""CRI Exec end to end over SPDY/3.1: crispyd's streaming server, the shim, runc exec.

The client is the test's own (tests/support/exec_client.py on tests/support/spdy_client.py),
speaking client-go's remotecommand protocols; traffic goes only to the loopback server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import grpc
import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from support import exec_client
from support.containers import container_config, new_pod, run, stop, wait_exit
from support.portforward_client import request
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

SLEEP = ["sh", "-c", "exec sleep 3600"]


def exec_url(cri: CriClient, cid: str, cmd: list[str], **kw: bool) -> str:
    req = pb.ExecRequest(container_id=cid, cmd=cmd, **kw)
    return str(cri.runtime.Exec(req, timeout=10).url)


@pytest.fixture
def sleeper(pods: CriClient, pod_images: TestImages, tmp_path: Path) -> str:
    pod_id, pod_cfg = new_pod(pods, tmp_path / "logs")
    return run(pods, pod_id, pod_cfg, container_config(pod_images.busybox.reference, command=SLEEP))


def test_exec_stdout_stderr_and_exit_codes(pods: CriClient, sleeper: str) -> None:
    async def test() -> None:
        url = exec_url(pods, sleeper, ["echo", "hello"], stdout=True, stderr=True)
        out = await exec_client.run(url)
        assert "X-Stream-Protocol-Version: v4.channel.k8s.io" in out.head
        assert (out.stdout, out.stderr) == (b"hello\n", b"")
        assert out.status() == {"metadata": {}, "status": "Success"}

        url = exec_url(
            pods,
            sleeper,
            ["sh", "-c", "echo oops >&2; echo fine; exit 7"],
            stdout=True,
            stderr=True,
        )
        out = await exec_client.run(url)
        assert (out.stdout, out.stderr) == (b"fine\n", b"oops\n")
        st = out.status()
        assert st["status"] == "Failure" and st["reason"] == "NonZeroExitCode", st
        assert st["details"] == {"causes": [{"reason": "ExitCode", "message": "7"}]}

    asyncio.run(test())


def test_exec_stdin_through_cat(pods: CriClient, sleeper: str) -> None:
    async def test() -> None:
        url = exec_url(pods, sleeper, ["cat"], stdin=True, stdout=True, stderr=True)
        out = await exec_client.run(url, stdin=b"line one\nline two\n")
        assert out.stdout == b"line one\nline two\n"
        assert out.status()["status"] == "Success"

    asyncio.run(test())


def test_exec_tty_resize_seen_by_stty(pods: CriClient, sleeper: str) -> None:
    async def test() -> None:
        url = exec_url(
            pods, sleeper, ["sh", "-c", "read x; stty size"], stdin=True, stdout=True, tty=True
        )
        s = await exec_client.ExecStreams.open(url, stdin=True, stderr=False, tty=True)
        await s.resize(123, 45)
        await asyncio.sleep(0.2)  # the resize stream and stdin are separate streams
        await s.write_stdin(b"go\n")
        out = await s.collect()
        assert b"45 123" in out.stdout, out.stdout
        assert out.status()["status"] == "Success"

    asyncio.run(test())


def test_exec_100mb_through_cat(pods: CriClient, sleeper: str) -> None:
    size = 100 * 1024 * 1024
    block = hashlib.sha256(b"crispy").digest() * 4096  # 128 KiB, not all alike

    async def test() -> None:
        url = exec_url(pods, sleeper, ["cat"], stdin=True, stdout=True)
        s = await exec_client.ExecStreams.open(url, stdin=True, stderr=False)
        sent = hashlib.sha256()
        got = hashlib.sha256()
        received = 0

        async def feed() -> None:
            for _ in range(size // len(block)):
                sent.update(block)
                await s.write_stdin(block)
            await s.close_stdin()

        async def drain() -> None:
            nonlocal received
            while chunk := await s.streams["stdout"].read():
                got.update(chunk)
                received += len(chunk)

        await asyncio.gather(feed(), drain())
        error = await s.streams["error"].read_all()
        await s.client.close()
        assert received == size
        assert got.hexdigest() == sent.hexdigest()
        assert json.loads(error)["status"] == "Success"

    asyncio.run(test())


def test_twenty_concurrent_execs(pods: CriClient, sleeper: str) -> None:
    urls = [
        exec_url(pods, sleeper, ["sh", "-c", f"echo {i}; exit {i % 3}"], stdout=True)
        for i in range(20)
    ]

    async def test() -> None:
        outs = await asyncio.gather(*(exec_client.run(u, stderr=False) for u in urls))
        for i, out in enumerate(outs):
            assert out.stdout == f"{i}\n".encode()
            st = out.status()
            if i % 3 == 0:
                assert st["status"] == "Success"
            else:
                assert st["details"]["causes"][0]["message"] == str(i % 3)  # type: ignore[index]

    asyncio.run(test())


def test_exec_old_protocols(pods: CriClient, sleeper: str) -> None:
    async def test() -> None:
        for proto in ("v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"):
            url = exec_url(pods, sleeper, ["sh", "-c", "echo hi; exit 2"], stdout=True)
            out = await exec_client.run(url, stderr=False, protocols=[proto])
            assert f"X-Stream-Protocol-Version: {proto}" in out.head
            assert out.stdout == b"hi\n"
            assert out.error.startswith(b"command terminated with non-zero exit code"), out.error
            assert out.error.endswith(b"exit code 2")

    asyncio.run(test())


def test_exec_tokens_and_refusals(pods: CriClient, sleeper: str, tmp_path: Path) -> None:
    url = exec_url(pods, sleeper, ["true"], stdout=True)

    async def test() -> None:
        out = await exec_client.run(url, stderr=False)
        assert out.status()["status"] == "Success"
        head, _, w = await request(url, headers=exec_headers())
        assert head.startswith("HTTP/1.1 404 "), head
        w.close()

    asyncio.run(test())
    for kw, needle in (
        ({}, "one of stdin, stdout, or stderr"),
        ({"stdout": True, "stderr": True, "tty": True}, "tty and stderr"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            exec_url(pods, sleeper, ["true"], **kw)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in str(err.value.details())
    with pytest.raises(grpc.RpcError) as err:
        exec_url(pods, "nope", ["true"], stdout=True)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    stop(pods, sleeper)
    wait_exit(pods, sleeper)
    for call in (
        lambda: exec_url(pods, sleeper, ["true"], stdout=True),
        lambda: pods.runtime.Attach(
            pb.AttachRequest(container_id=sleeper, stdout=True), timeout=10
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def exec_headers() -> str:
    return (
        "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
    )


def test_exec_whose_client_goes_away_is_killed(pods: CriClient, sleeper: str) -> None:
    url = exec_url(pods, sleeper, ["sh", "-c", "echo up; exec sleep 4242"], stdout=True)

    async def test() -> None:
        s = await exec_client.ExecStreams.open(url, stderr=False)
        assert await s.streams["stdout"].read() == b"up\n"
        s.client.writer.transport.abort()  # no GOAWAY, no FIN: the client just vanishes

    def sleeping() -> bool:
        ps = pods.runtime.ExecSync(pb.ExecSyncRequest(container_id=sleeper, cmd=["ps"]), timeout=10)
        return b"sleep 4242" in ps.stdout

    asyncio.run(test())
    deadline = time.monotonic() + 10
    while sleeping():
        assert time.monotonic() < deadline, "the exec'd process outlived its client"
        time.sleep(0.1)


def test_exec_unknown_stream_type_is_reset(pods: CriClient, sleeper: str) -> None:
    url = exec_url(pods, sleeper, ["echo", "x"], stdout=True)

    async def test() -> None:
        head, client = await exec_client.upgrade(url, ["v4.channel.k8s.io"])
        assert client is not None, head
        bogus = await client.open({"streamtype": "bogus"})
        with pytest.raises(ConnectionResetError):
            await bogus.read()
        error = await client.open({"streamtype": "error"})
        out = await client.open({"streamtype": "stdout"})
        assert await out.read_all() == b"x\n"
        assert json.loads(await error.read_all())["status"] == "Success"
        await client.close()

    asyncio.run(test())
