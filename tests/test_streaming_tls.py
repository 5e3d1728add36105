"""The streaming server with TLS (``[streaming] tls_cert_file``/``tls_key_file``), in-process
over loopback: https URLs, an upgrade through TLS, plain HTTP refused, config checks."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import re
import ssl
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crispy.config import ConfigError, load
from crispy.streaming import portforward
from crispy.streaming.server import StreamingServer, streaming_tls
from support.daemon import Crispyd, default_config, run_crispyd
from support.spdy_client import SpdyClient


def write_cert(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crispy streaming")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "stream.crt", tmp_path / "stream.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_port_forward_upgrade_over_tls(tmp_path: Path) -> None:
    cert_file, key_file = write_cert(tmp_path)
    cfg = SimpleNamespace(
        streaming=SimpleNamespace(tls_cert_file=str(cert_file), tls_key_file=str(key_file))
    )

    async def test() -> None:
        async def pod(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello " + await reader.read())
            writer.close()

        listener = await asyncio.start_server(pod, "127.0.0.1", 0)
        pod_port = listener.sockets[0].getsockname()[1]
        server = StreamingServer("127.0.0.1", 0, ssl_context=streaming_tls(cfg))
        server.handle(portforward.KIND, [portforward.PROTOCOL], portforward.serve)
        await server.start()
        try:
            token = server.register(portforward.KIND, portforward.PortForwardTarget("p", ""))
            url = server.url(portforward.KIND, token)
            assert url.startswith("https://127.0.0.1:")
            # plain HTTP to the TLS port gets no HTTP answer
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.write(b"GET /portforward/x HTTP/1.1\r\n\r\n")
            assert not (await r.read()).startswith(b"HTTP/1.1")
            w.close()

            client_ctx = ssl.create_default_context(cafile=str(cert_file))
            r, w = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ctx)
            path = url.split(str(server.port), 1)[1]
            w.write(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
                "Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n"
                "\r\n".encode()
            )
            head = (await r.readuntil(b"\r\n\r\n")).decode()
            assert head.startswith("HTTP/1.1 101 "), head
            client = SpdyClient(r, w)
            client.task = asyncio.create_task(client.run())
            base = {"port": str(pod_port), "requestid": "0"}
            err = await client.open({"streamtype": "error", **base})
            await err.close()
            data = await client.open({"streamtype": "data", **base})
            await data.write(b"tls", fin=True)
            assert await data.read_all() == b"hello tls"
            with contextlib.suppress(ssl.SSLError):  # the server may have closed first
                await client.close()
        finally:
            await server.stop()
            listener.close()

    asyncio.run(asyncio.wait_for(test(), 20))


def test_tls_config_needs_both_files(tmp_path: Path) -> None:
    conf = tmp_path / "crispy.toml"
    conf.write_text('[streaming]\ntls_cert_file = "/etc/x.crt"\n')
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file"):
        load(str(conf))


@pytest.mark.root
def test_crispyd_serves_https_with_the_configured_certificate(tmp_path: Path) -> None:
    cert_file, key_file = write_cert(tmp_path)
    tls = f'[streaming]\ntls_cert_file = "{cert_file}"\ntls_key_file = "{key_file}"\n'
    d = Crispyd(tmp_path / "d", config=default_config(tmp_path / "d") + tls)
    d.start()
    try:
        assert re.search(r"streaming server on https://127\.0\.0\.1:\d+", d.log()), d.log()
    finally:
        d.stop()
    # a key that does not load stops crispyd at start with the reason
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    config = f'[streaming]\ntls_cert_file = "{cert_file}"\ntls_key_file = "{bad}"\n'
    done = run_crispyd(tmp_path / "e", config=default_config(tmp_path / "e") + config)
    assert done.returncode != 0
    assert "cannot load the TLS certificate" in done.stderr, done.stderr
