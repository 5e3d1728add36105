"""The auth registries, the token server and the fault proxy behave as pull tests expect.

Everything is checked with a plain http.client, the way a puller would see it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest

from support.auth import TokenServer, libtrust_key_id
from support.auth_fixtures import BasicAuthRegistry, TokenAuthRegistry
from support.faultproxy import FaultProxy
from support.images import OCI_MANIFEST, PushedImage
from support.registry import Registry, basic_authorization, parse_challenge
from support.registry_fixtures import TestImages

Response = tuple[int, http.client.HTTPMessage, bytes]


def fetch(
    url: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    body: bytes | None = None,
    timeout: float = 10,
) -> Response:
    """One request on a fresh connection; http.client never consults proxy variables."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_url(base: str, image: PushedImage) -> str:
    return f"{base}/v2/{image.repo}/manifests/{image.tag}"


def blob_url(base: str, repo: str, digest: str) -> str:
    return f"{base}/v2/{repo}/blobs/{digest}"


def bearer_token(realm: str, params: dict[str, str], user: str, password: str) -> str:
    query = urllib.parse.urlencode(params)
    status, _, body = fetch(
        f"{realm}?{query}", {"Authorization": basic_authorization(user, password)}
    )
    assert status == 200, body
    reply = json.loads(body)
    assert reply["token"] == reply["access_token"]
    return str(reply["access_token"])


# -- basic auth ------------------------------------------------------------------------------


def test_basic_registry_wants_credentials(basic_auth_registry: BasicAuthRegistry) -> None:
    url = f"{basic_auth_registry.url}/v2/"
    status, headers, _ = fetch(url)
    assert status == 401
    assert parse_challenge(headers["WWW-Authenticate"])[0] == "basic"
    assert fetch(url, {"Authorization": basic_auth_registry.authorization})[0] == 200
    wrong = basic_authorization(basic_auth_registry.username, "wrong")
    assert fetch(url, {"Authorization": wrong})[0] == 401


def test_basic_registry_serves_images(basic_auth_registry: BasicAuthRegistry) -> None:
    image = basic_auth_registry.images.busybox
    assert image.registry == basic_auth_registry.host
    url = manifest_url(basic_auth_registry.url, image)
    assert fetch(url, {"Accept": OCI_MANIFEST})[0] == 401
    auth = {"Authorization": basic_auth_registry.authorization}
    status, headers, body = fetch(url, {**auth, "Accept": OCI_MANIFEST})
    assert status == 200 and body == image.manifest
    assert headers["Docker-Content-Digest"] == image.digest
    status, _, blob = fetch(
        blob_url(basic_auth_registry.url, image.repo, image.config_digest), auth
    )
    assert status == 200 and blob == image.config_bytes


# -- bearer tokens ---------------------------------------------------------------------------


def test_token_registry_challenges(token_auth_registry: TokenAuthRegistry) -> None:
    server = token_auth_registry.token_server
    status, headers, _ = fetch(f"{token_auth_registry.url}/v2/")
    assert status == 401
    scheme, params = parse_challenge(headers["WWW-Authenticate"])
    assert scheme == "bearer"
    assert params == {"realm": server.url, "service": server.service}
    image = token_auth_registry.images.busybox
    status, headers, _ = fetch(manifest_url(token_auth_registry.url, image))
    assert status == 401
    _, params = parse_challenge(headers["WWW-Authenticate"])
    assert params["scope"] == f"repository:{image.repo}:pull"


def test_token_flow_fetches_manifest(
    token_auth_registry: TokenAuthRegistry, token_server: TokenServer
) -> None:
    image = token_auth_registry.images.busybox
    url = manifest_url(token_auth_registry.url, image)
    _, params = parse_challenge(fetch(url)[1]["WWW-Authenticate"])
    realm = params.pop("realm")
    token = bearer_token(realm, params, token_server.username, token_server.password)
    headers = {"Authorization": f"Bearer {token}", "Accept": OCI_MANIFEST}
    status, resp_headers, body = fetch(url, headers)
    assert status == 200 and body == image.manifest
    assert resp_headers["Docker-Content-Digest"] == image.digest
    layer = image.layers[0]
    status, _, blob = fetch(blob_url(token_auth_registry.url, image.repo, layer.digest), headers)
    assert status == 200 and sha256(blob) == layer.digest
    # The token is what the registry was told to trust: ES256 by the cert, with our claims.
    claims = jwt.decode(
        token,
        token_server.cert.public_key(),  # type: ignore[arg-type]
        algorithms=["ES256"],
        audience=token_server.service,
        issuer=token_server.issuer,
    )
    assert claims["sub"] == token_server.username
    assert claims["access"] == [{"type": "repository", "name": image.repo, "actions": ["pull"]}]
    assert {"exp", "nbf", "iat", "jti"} <= claims.keys()
    assert "x5c" in jwt.get_unverified_header(token)
    assert token_server.requests == {params["scope"]: 1}
    (entry,) = token_server.log
    assert (entry.method, entry.user, entry.status) == ("GET", token_server.username, 200)


def test_token_server_refuses_bad_credentials(
    token_auth_registry: TokenAuthRegistry, token_server: TokenServer
) -> None:
    scope = f"repository:{token_auth_registry.images.busybox.repo}:pull"
    query = urllib.parse.urlencode({"service": token_server.service, "scope": scope})
    url = f"{token_server.url}?{query}"
    wrong = basic_authorization(token_server.username, "not-the-password")
    status, headers, body = fetch(url, {"Authorization": wrong})
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    assert parse_challenge(headers["WWW-Authenticate"])[0] == "basic"
    assert fetch(url)[0] == 401  # anonymous
    token_server.reject_status = 401
    right = basic_authorization(token_server.username, token_server.password)
    assert fetch(url, {"Authorization": right})[0] == 401
    assert [e.status for e in token_server.log] == [401, 401, 401]
    assert token_server.requests[scope] == 3


def test_token_is_checked_by_registry(
    token_auth_registry: TokenAuthRegistry, token_server: TokenServer
) -> None:
    image = token_auth_registry.images.busybox
    url = manifest_url(token_auth_registry.url, image)
    scope = f"repository:{image.repo}:pull"
    # No access granted for the repo: a valid token the registry still refuses.
    token_server.denied.add(image.repo)
    params = {"service": token_server.service, "scope": scope}
    token = bearer_token(token_server.url, params, token_server.username, token_server.password)
    status, headers, _ = fetch(url, {"Authorization": f"Bearer {token}"})
    assert status == 401
    assert parse_challenge(headers["WWW-Authenticate"])[1]["error"] == "insufficient_scope"
    # A token signed by another key is refused too.
    access = [{"type": "repository", "name": image.repo, "actions": ["pull"]}]
    stranger = TokenServer("x", "y", service=token_server.service, issuer=token_server.issuer)
    forged = stranger.issue_token("x", access)
    assert fetch(url, {"Authorization": f"Bearer {forged}"})[0] == 401
    # While one identified by a libtrust key ID instead of x5c works.
    token_server.key_header = "kid"
    try:
        token = token_server.issue_token(token_server.username, access)
    finally:
        token_server.key_header = "x5c"
    assert jwt.get_unverified_header(token)["kid"] == token_server.key_id
    assert fetch(url, {"Authorization": f"Bearer {token}", "Accept": OCI_MANIFEST})[0] == 200


def test_libtrust_key_id_format(token_server: TokenServer) -> None:
    groups = token_server.key_id.split(":")
    assert len(groups) == 12 and all(len(g) == 4 for g in groups)
    assert token_server.key_id == libtrust_key_id(token_server.cert.public_key())  # type: ignore[arg-type]


def post_token(server: TokenServer, form: dict[str, str]) -> tuple[int, dict[str, object]]:
    body = urllib.parse.urlencode(form).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, data = fetch(server.url, headers, method="POST", body=body)
    return status, json.loads(data)


def test_refresh_token_flow(
    token_auth_registry: TokenAuthRegistry, token_server: TokenServer
) -> None:
    image = token_auth_registry.images.busybox
    scope = f"repository:{image.repo}:pull"
    common = {"service": token_server.service, "client_id": "crispy-test", "scope": scope}
    # What CRI's identity_token turns into: a refresh-token grant.
    identity = token_server.mint_refresh_token()
    status, reply = post_token(
        token_server, {**common, "grant_type": "refresh_token", "refresh_token": identity}
    )
    assert status == 200 and reply["scope"] == scope and "refresh_token" not in reply
    headers = {"Authorization": f"Bearer {reply['access_token']}", "Accept": OCI_MANIFEST}
    status, _, body = fetch(manifest_url(token_auth_registry.url, image), headers)
    assert status == 200 and body == image.manifest
    # A password grant asking for offline access hands out a refresh token that works too.
    status, reply = post_token(
        token_server,
        {
            **common,
            "grant_type": "password",
            "username": token_server.username,
            "password": token_server.password,
            "access_type": "offline",
        },
    )
    assert status == 200 and isinstance(reply["refresh_token"], str)
    refreshed = {**common, "grant_type": "refresh_token", "refresh_token": reply["refresh_token"]}
    assert post_token(token_server, refreshed)[0] == 200
    # The GET flow gives one out with offline_token=true.
    query = urllib.parse.urlencode({"service": token_server.service, "offline_token": "true"})
    right = basic_authorization(token_server.username, token_server.password)
    _, _, data = fetch(f"{token_server.url}?{query}", {"Authorization": right})
    assert "refresh_token" in json.loads(data)
    # Unknown or revoked refresh tokens and wrong passwords are refused.
    token_server.revoke_refresh_tokens()
    assert post_token(token_server, refreshed)[0] == 401
    bad = {**common, "grant_type": "password", "username": "x", "password": "y"}
    assert post_token(token_server, bad)[0] == 401
    token_server.post_enabled = False
    assert post_token(token_server, refreshed)[0] == 405
    assert token_server.requests[scope] == 6 and token_server.requests[""] == 1


def test_registry_client_answers_challenges(token_auth_registry: TokenAuthRegistry) -> None:
    reg = token_auth_registry.registry
    image = token_auth_registry.images.busybox
    path = f"/v2/{image.repo}/manifests/{image.tag}"
    assert reg.request("GET", path, headers={"Accept": OCI_MANIFEST})[0] == 200
    assert reg.request("GET", path, authenticate=False)[0] == 401
    # A stale cached token (e.g. expired in a long session) is replaced, not fatal.
    reg._tokens = dict.fromkeys(reg._tokens, "stale")
    assert reg.request("GET", path, headers={"Accept": OCI_MANIFEST})[0] == 200


# -- fault proxy -----------------------------------------------------------------------------


def read_partial(url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> bytes:
    """The body bytes that arrived before the server broke off (asserting that it did)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path, headers=headers or {})
        resp = conn.getresponse()
        assert resp.status in (200, 206)
        with pytest.raises(http.client.IncompleteRead) as err:
            resp.read()
        return err.value.partial
    finally:
        conn.close()


def busybox_blob(test_images: TestImages) -> tuple[str, bytes]:
    layer = test_images.busybox.layers[0]
    return layer.digest, layer.blob


def test_proxy_passes_through(
    registry: Registry, test_images: TestImages, fault_proxy: FaultProxy
) -> None:
    image = test_images.busybox
    accept = {"Accept": OCI_MANIFEST}
    direct = fetch(manifest_url(registry.url, image), accept)
    proxied = fetch(manifest_url(fault_proxy.url, image), accept)
    assert proxied[0] == 200 and proxied[2] == direct[2] == image.manifest
    for name in ("Content-Type", "Content-Length", "Docker-Content-Digest"):
        assert proxied[1][name] == direct[1][name]
    digest, blob = busybox_blob(test_images)
    status, headers, body = fetch(blob_url(fault_proxy.url, image.repo, digest))
    assert status == 200 and body == blob and int(headers["Content-Length"]) == len(blob)
    head = fetch(blob_url(fault_proxy.url, image.repo, digest), method="HEAD")
    assert head[0] == 200 and int(head[1]["Content-Length"]) == len(blob) and head[2] == b""
    manifest_entry, blob_entry, head_entry = fault_proxy.log
    assert manifest_entry.bytes_sent == len(image.manifest) and manifest_entry.complete
    assert (blob_entry.status, blob_entry.bytes_sent, blob_entry.fault) == (200, len(blob), None)
    assert head_entry.method == "HEAD" and head_entry.bytes_sent == 0
    assert fault_proxy.bytes_sent(digest) == len(blob)
    assert fetch(blob_url(fault_proxy.url, image.repo, "sha256:" + "0" * 64))[0] == 404


def test_proxy_cut_and_range_resume(test_images: TestImages, fault_proxy: FaultProxy) -> None:
    digest, blob = busybox_blob(test_images)
    url = blob_url(fault_proxy.url, test_images.busybox.repo, digest)
    fault = fault_proxy.cut_after(digest, 100_000)
    assert read_partial(url) == blob[:100_000]
    assert fault.hits == 1
    # Resume where the cut left off: the registry honours Range on blobs.
    status, headers, rest = fetch(url, {"Range": "bytes=100000-"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes 100000-{len(blob) - 1}/{len(blob)}"
    assert blob[:100_000] + rest == blob
    cut, resumed = fault_proxy.requests(digest)
    assert (cut.range, cut.fault, cut.bytes_sent, cut.complete) == (None, "cut", 100_000, False)
    assert (resumed.range, resumed.status, resumed.complete) == ("bytes=100000-", 206, True)
    assert fault_proxy.bytes_sent(digest) == len(blob)  # nothing fetched twice
    # Every time, and cuts inside a ranged response count from its first byte.
    fault_proxy.cut_after(digest, 10, times=None)
    for _ in range(2):
        assert read_partial(url, {"Range": "bytes=5-"}) == blob[5:15]


def test_proxy_cut_before_body(test_images: TestImages, fault_proxy: FaultProxy) -> None:
    digest, _ = busybox_blob(test_images)
    fault_proxy.cut_after(digest, 0)
    assert read_partial(blob_url(fault_proxy.url, test_images.busybox.repo, digest)) == b""


def test_proxy_corrupts_body(test_images: TestImages, fault_proxy: FaultProxy) -> None:
    digest, blob = busybox_blob(test_images)
    url = blob_url(fault_proxy.url, test_images.busybox.repo, digest)
    fault_proxy.corrupt(digest)
    status, headers, body = fetch(url)
    assert status == 200 and int(headers["Content-Length"]) == len(body) == len(blob)
    assert sha256(body) != digest
    assert [i for i, (a, b) in enumerate(zip(body, blob, strict=True)) if a != b] == [
        len(blob) // 2
    ]
    assert fault_proxy.log[0].complete and fault_proxy.log[0].fault == "corrupt"
    assert fetch(url)[2] == blob  # once only
    fault_proxy.corrupt(digest, offset=3)
    assert fetch(url, {"Range": "bytes=0-9"})[2][3] == blob[3] ^ 0xFF


def test_proxy_injects_status(test_images: TestImages, fault_proxy: FaultProxy) -> None:
    image = test_images.busybox
    url = manifest_url(fault_proxy.url, image)
    fault_proxy.fail(image.repo, 503, times=2, headers={"Retry-After": "1"})
    for _ in range(2):
        status, headers, body = fetch(url, {"Accept": OCI_MANIFEST})
        assert status == 503 and headers["Retry-After"] == "1"
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    assert fetch(url, {"Accept": OCI_MANIFEST})[0:3:2] == (200, image.manifest)
    assert [e.status for e in fault_proxy.log] == [503, 503, 200]
    fault_proxy.fail("/manifests/", 404, body=b"", method="HEAD")
    assert fetch(url, {"Accept": OCI_MANIFEST})[0] == 200  # GET: not targeted
    assert fetch(url, {"Accept": OCI_MANIFEST}, method="HEAD")[0] == 404


def wait_done(proxy: FaultProxy, index: int) -> None:
    """Wait until the proxy has finished a request (it sees a hang-up at its next write)."""
    deadline = time.monotonic() + 5
    while not proxy.log[index].done and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.log[index].done


def test_proxy_slow_drip_trips_deadline(test_images: TestImages, fault_proxy: FaultProxy) -> None:
    digest, blob = busybox_blob(test_images)
    url = blob_url(fault_proxy.url, test_images.busybox.repo, digest)
    fault_proxy.slow(digest, 20_000, after=50_000)
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=5)
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        start = time.monotonic()
        got = resp.read(50_000)
        assert got == blob[:50_000] and time.monotonic() - start < 1
        # Bytes keep trickling in, so only an overall deadline catches this.
        deadline = start + 0.5
        while time.monotonic() < deadline:
            got += resp.read1(1000)
    finally:
        conn.close()
    assert got == blob[: len(got)] and 55_000 <= len(got) < 70_000
    wait_done(fault_proxy, 0)
    entry = fault_proxy.log[0]
    assert entry.fault == "slow" and not entry.complete
    assert len(got) <= entry.bytes_sent < 80_000


def test_proxy_stall_trips_read_timeout(test_images: TestImages, fault_proxy: FaultProxy) -> None:
    digest, blob = busybox_blob(test_images)
    fault_proxy.slow(digest, 0, after=1000)  # rate 0: nothing more, ever
    parts = urllib.parse.urlsplit(blob_url(fault_proxy.url, test_images.busybox.repo, digest))
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=0.3)
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        assert resp.read(1000) == blob[:1000]
        with pytest.raises(TimeoutError):
            resp.read(1)
    finally:
        conn.close()
    wait_done(fault_proxy, 0)
    assert fault_proxy.log[0].bytes_sent == 1000 and fault_proxy.log[0].error


def test_proxy_delay_and_drop(test_images: TestImages, fault_proxy: FaultProxy) -> None:
    image = test_images.busybox
    url = manifest_url(fault_proxy.url, image)
    fault_proxy.delay(image.repo, 0.3)
    start = time.monotonic()
    assert fetch(url, {"Accept": OCI_MANIFEST})[0] == 200
    assert time.monotonic() - start >= 0.3
    fault_proxy.drop(image.repo)
    with pytest.raises(http.client.RemoteDisconnected):
        fetch(url)
    assert fault_proxy.log[-1].error == "dropped" and fault_proxy.log[-1].status is None
    assert fetch(url, {"Accept": OCI_MANIFEST})[0] == 200


def test_proxy_down_and_up(test_images: TestImages, fault_proxy: FaultProxy) -> None:
    url = f"{fault_proxy.url}/v2/"
    parts = urllib.parse.urlsplit(url)
    kept = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=5)
    kept.request("GET", "/v2/")
    assert kept.getresponse().read() is not None
    fault_proxy.down()
    assert not fault_proxy.is_up
    with pytest.raises(ConnectionRefusedError):
        fetch(url)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        kept.request("GET", "/v2/")  # the open keep-alive connection was closed too
        kept.getresponse()
    kept.close()
    fault_proxy.up()
    assert fetch(url)[0] == 200
    fault_proxy.down()
    fault_proxy.reset()  # also brings it back
    assert fault_proxy.is_up and fetch(url)[0] == 200 and len(fault_proxy.log) == 1


def test_proxy_upload_and_location(fault_proxy: FaultProxy, registry: Registry) -> None:
    repo = "crispy-test/proxy-upload"
    data = os.urandom(300_000)
    status, headers, _ = fetch(f"{fault_proxy.url}/v2/{repo}/blobs/uploads/", method="POST")
    assert status == 202
    location = headers["Location"]
    assert location.startswith(fault_proxy.url + "/v2/"), location
    put = urllib.parse.urlsplit(location)
    query = urllib.parse.urlencode({"digest": sha256(data)})
    put_url = f"{fault_proxy.url}{put.path}?{put.query}&{query}"
    status, headers, _ = fetch(put_url, method="PUT", body=data)
    assert status == 201 and headers["Location"].startswith(fault_proxy.url)
    assert registry.get_blob(repo, sha256(data)) == data


def test_proxy_keepalive_and_concurrency(test_images: TestImages, fault_proxy: FaultProxy) -> None:
    image = test_images.busybox
    digest, blob = busybox_blob(test_images)
    conn = http.client.HTTPConnection("127.0.0.1", fault_proxy.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", f"/v2/{image.repo}/blobs/{digest}")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == blob
        sock = conn.sock
        conn.request("GET", "/v2/")
        conn.getresponse().read()
        assert conn.sock is sock  # still the first connection
    finally:
        conn.close()
    url = blob_url(fault_proxy.url, image.repo, digest)
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda _: fetch(url)[2], range(16)))
    assert all(body == blob for body in bodies)
    assert fault_proxy.bytes_sent(digest) == 19 * len(blob)


def test_proxy_throughput(registry: Registry, fault_proxy: FaultProxy) -> None:
    repo = "crispy-test/big"
    data = os.urandom(64 << 20)
    digest = registry.push_blob(repo, data)
    start = time.monotonic()
    status, _, body = fetch(blob_url(fault_proxy.url, repo, digest), timeout=30)
    elapsed = time.monotonic() - start
    assert status == 200 and body == data
    assert len(data) / elapsed > 100e6, f"{len(data) / elapsed / 1e6:.0f} MB/s"


def test_proxy_in_front_of_token_registry(
    token_auth_registry: TokenAuthRegistry,
    token_server: TokenServer,
    fault_proxy_factory: Callable[[Registry], FaultProxy],
) -> None:
    proxy = fault_proxy_factory(token_auth_registry.registry)
    image = token_auth_registry.images.busybox
    url = manifest_url(proxy.url, image)
    _, params = parse_challenge(fetch(url)[1]["WWW-Authenticate"])
    assert params["realm"] == token_server.url  # challenges pass through untouched
    token = bearer_token(params.pop("realm"), params, token_server.username, token_server.password)
    headers = {"Authorization": f"Bearer {token}", "Accept": OCI_MANIFEST}
    assert fetch(url, headers)[0:3:2] == (200, image.manifest)
    assert proxy.reference(image.repo, image.digest) == f"{proxy.host}/{image.repo}@{image.digest}"


def test_basic_credentials_pass_the_proxy(
    basic_auth_registry: BasicAuthRegistry,
    fault_proxy_factory: Callable[[Registry], FaultProxy],
) -> None:
    proxy = fault_proxy_factory(basic_auth_registry.registry)
    assert fetch(f"{proxy.url}/v2/")[0] == 401
    assert fetch(f"{proxy.url}/v2/", {"Authorization": basic_auth_registry.authorization})[0] == 200
    assert proxy.log[1].headers["Authorization"].startswith("Basic ")


def test_proxy_listens_on_loopback_only(fault_proxy: FaultProxy) -> None:
    assert fault_proxy.host == f"127.0.0.1:{fault_proxy.port}"
    with socket.create_connection(("127.0.0.1", fault_proxy.port or 0), timeout=5) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(12) == b"HTTP/1.1 200"
