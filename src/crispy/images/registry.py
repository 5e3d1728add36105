"""A registry client for the OCI distribution spec (v2 API), on aiohttp.

Auth: anonymous, HTTP Basic, and Bearer tokens fetched from the realm named by
`WWW-Authenticate` (cached per realm/service/scope). Credentials go only to the
registry they were given for and to the token realm it names, never to mirrors
of other hosts, foreign layer URLs or redirect targets on other hosts (blob
storage).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from crispy import errors
from crispy.images.hosts import Endpoint
from crispy.images.manifest import ACCEPT

log = logging.getLogger(__name__)

RETRIES = 3
BACKOFF = 0.2
MAX_REDIRECTS = 5
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
USER_AGENT = "crispy"


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # an OAuth2 refresh token
    registry_token: str = ""  # a bearer token to use as it is
    server_address: str = ""

    def __bool__(self) -> bool:
        return bool(self.username or self.identity_token or self.registry_token)

    @classmethod
    def from_auth(
        cls,
        username: str = "",
        password: str = "",
        auth: str = "",
        identity_token: str = "",
        registry_token: str = "",
        server_address: str = "",
    ) -> Credentials:
        if auth and not username:
            try:
                decoded = base64.b64decode(auth, validate=True).decode()
                username, _, password = decoded.partition(":")
            except (ValueError, UnicodeDecodeError):
                raise errors.InvalidArgument("auth: not base64 of user:password") from None
        return cls(username, password, identity_token, registry_token, server_address)


class RegistryError(errors.Unavailable):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…",scope="…"` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM.finditer(rest)
    }
    return scheme.lower(), params


class TokenCache:
    """Bearer tokens per (realm, service, scope, who), until shortly before they expire."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}

    def get(self, key: tuple[str, ...]) -> str | None:
        hit = self._tokens.get(key)
        if hit and hit[1] > time.monotonic():
            return hit[0]
        self._tokens.pop(key, None)
        return None

    def put(self, key: tuple[str, ...], token: str, expires_in: float) -> None:
        # Renew a little early so a token never expires mid-request.
        self._tokens[key] = (token, time.monotonic() + max(expires_in - 10, 1))


def _host_of(url: str) -> str:
    return urlsplit(url).netloc.lower()


class RegistryClient:
    """Talks to one registry (through its mirrors) for one repository."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        registry_host: str,
        repo: str,
        endpoints: list[Endpoint],
        creds: Credentials | None = None,
        tokens: TokenCache | None = None,
        retries: int = RETRIES,
    ) -> None:
        self.session = session
        self.registry_host = registry_host.lower()
        self.repo = repo
        self.endpoints = endpoints
        self.creds = creds or Credentials()
        self.tokens = tokens or TokenCache()
        self.retries = retries
        self._auth: dict[str, str] = {}  # endpoint url -> Authorization that worked
        self._http: set[str] = set()  # endpoints that answered over plain HTTP

    # -- credentials ----------------------------------------------------------

    def _trusted(self, url: str) -> bool:
        """May this URL see the user's credentials?"""
        host = _host_of(url)
        allowed = {self.registry_host}
        if self.registry_host == "docker.io":
            allowed |= {"registry-1.docker.io", "index.docker.io"}
        if self.creds.server_address:
            addr = self.creds.server_address
            allowed.add(_host_of(addr if "://" in addr else f"https://{addr}"))
        return host in allowed

    async def _authorize(self, url: str, challenge: str, scope: str) -> str | None:
        scheme, params = parse_challenge(challenge)
        trusted = self._trusted(url)
        if scheme == "basic":
            if not (trusted and self.creds.username):
                return None
            raw = f"{self.creds.username}:{self.creds.password}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        if scheme != "bearer":
            raise errors.Unauthenticated(f"{url}: unsupported auth scheme {scheme!r}")
        if trusted and self.creds.registry_token:
            return f"Bearer {self.creds.registry_token}"
        realm = params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise errors.Unauthenticated(f"{url}: bad token realm {realm!r}")
        service = params.get("service", "")
        scope = params.get("scope", scope)
        who = self.creds.username or self.creds.identity_token[:16] if trusted else ""
        key = (realm, service, scope, who)
        token = self.tokens.get(key)
        if token is None:
            token, expires_in = await self._fetch_token(realm, service, scope, trusted)
            self.tokens.put(key, token, expires_in)
        return f"Bearer {token}"

    async def _fetch_token(
        self, realm: str, service: str, scope: str, trusted: bool
    ) -> tuple[str, float]:
        c = self.creds
        try:
            if trusted and c.identity_token:
                # OAuth2 refresh-token grant: what an identity token is for.
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": c.identity_token,
                    "service": service,
                    "scope": scope,
                    "client_id": USER_AGENT,
                }
                resp_cm = self.session.post(realm, data=form)
            else:
                query = {"service": service, "scope": scope} if service else {"scope": scope}
                headers = {}
                if trusted and c.username:
                    raw = f"{c.username}:{c.password}".encode()
                    headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
                resp_cm = self.session.get(f"{realm}?{urlencode(query)}", headers=headers)
            async with resp_cm as resp:
                body = await resp.read()
                if resp.status in (401, 403):
                    raise errors.Unauthenticated(
                        f"token server {realm} refused the credentials: "
                        f"{resp.status} {_message(body)}"
                    )
                if resp.status != 200:
                    raise RegistryError(
                        f"token server {realm}: {resp.status} {_message(body)}", resp.status
                    )
        except aiohttp.ClientError as e:
            raise RegistryError(f"token server {realm}: {e}") from None
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            expires_in = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise RegistryError(f"token server {realm} answered no token") from None
        if not token:
            raise RegistryError(f"token server {realm} answered no token")
        return str(token), expires_in

    # -- requests ---------------------------------------------------------------

    def _endpoints(self, capability: str) -> list[Endpoint]:
        eps = [e for e in self.endpoints if capability in e.capabilities]
        if not eps:
            raise errors.Unavailable(f"no endpoint of {self.registry_host} can {capability}")
        return eps

    def _url(self, ep: Endpoint, path: str) -> str:
        url = ep.api_url(path)
        if ep.url in self._http and url.startswith("https://"):
            url = "http://" + url[len("https://") :]
        return url

    @asynccontextmanager
    async def _request(
        self,
        method: str,
        path: str,
        capability: str,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One API request, tried on each endpoint in order, with auth, redirects, retries.

        Yields the response (status in `ok`) with its body unread.
        """
        scope = f"repository:{self.repo}:pull"
        last: Exception | None = None
        endpoints = self._endpoints(capability)
        for i, ep in enumerate(endpoints):
            final = i == len(endpoints) - 1
            try:
                resp = await self._send(ep, method, path, headers or {}, scope)
            except (errors.Unauthenticated, errors.PermissionDenied) as e:
                if final:
                    raise
                last = e
                continue
            except RegistryError as e:
                if final:
                    raise
                log.info("endpoint %s failed (%s); trying the next", ep.url, e)
                last = e
                continue
            try:
                if resp.status in ok:
                    yield resp
                    return
                body = await _read_error_body(resp)
                err = self._status_error(method, path, resp.status, body)
                if final or (resp.status != 404 and resp.status < 500):
                    raise err
                last = err
            finally:
                resp.release()
        raise last or RegistryError(f"{self.registry_host}: no endpoint answered")

    def _status_error(self, method: str, path: str, status: int, body: bytes) -> Exception:
        what = f"{self.registry_host}/{self.repo}: {method} {path}"
        msg = f"{what}: {status} {_message(body)}"
        if status == 401:
            return errors.Unauthenticated(msg)
        if status == 403:
            return errors.PermissionDenied(msg)
        if status == 404:
            return errors.NotFound(msg)
        return RegistryError(msg, status)

    async def _send(
        self, ep: Endpoint, method: str, path: str, headers: dict[str, str], scope: str
    ) -> aiohttp.ClientResponse:
        """Send with retries on transient failures; handle a 401 challenge once."""
        hdrs = {"User-Agent": USER_AGENT, **dict(ep.headers), **headers}
        attempt = 0
        challenged = False
        while True:
            url = self._url(ep, path)
            auth = self._auth.get(ep.url)
            h = dict(hdrs)
            if auth:
                h["Authorization"] = auth
            try:
                resp = await self._follow(method, url, h, ep)
            except (
                aiohttp.ClientConnectorSSLError,
                aiohttp.ClientSSLError,
                aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError,
            ) as e:
                if ep.allow_http_fallback and ep.url not in self._http and url.startswith("https"):
                    log.info("%s: TLS failed (%s); using plain HTTP", ep.url, e)
                    self._http.add(ep.url)
                    continue
                attempt += 1
                if attempt >= self.retries:
                    raise RegistryError(f"{url}: {e}") from None
                await asyncio.sleep(BACKOFF * 2 ** (attempt - 1))
                continue
            except (TimeoutError, aiohttp.ClientError) as e:
                attempt += 1
                if attempt >= self.retries:
                    raise RegistryError(f"{url}: {type(e).__name__}: {e}") from None
                await asyncio.sleep(BACKOFF * 2 ** (attempt - 1))
                continue
            if resp.status == 401 and not challenged:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.release()
                challenged = True
                if not challenge:
                    raise errors.Unauthenticated(f"{url}: 401 without a challenge")
                new_auth = await self._authorize(url, challenge, scope)
                if new_auth is None:
                    raise errors.Unauthenticated(
                        f"{self.registry_host} requires credentials ({url}: 401 Unauthorized)"
                    )
                self._auth[ep.url] = new_auth
                continue
            if resp.status in TRANSIENT_STATUS and attempt + 1 < self.retries:
                resp.release()
                attempt += 1
                await asyncio.sleep(BACKOFF * 2 ** (attempt - 1))
                continue
            return resp

    async def _follow(
        self, method: str, url: str, headers: dict[str, str], ep: Endpoint
    ) -> aiohttp.ClientResponse:
        """Follow redirects by hand, dropping credentials when the host changes."""
        origin = _host_of(url)
        for _ in range(MAX_REDIRECTS + 1):
            ssl = ep.ssl_context() if url.startswith("https://") else False
            resp = await self.session.request(
                method, url, headers=headers, allow_redirects=False, ssl=ssl
            )
            if resp.status not in (301, 302, 303, 307, 308):
                return resp
            location = resp.headers.get("Location")
            resp.release()
            if not location:
                raise RegistryError(f"{url}: redirect without Location")
            url = urljoin(url, location)
            if _host_of(url) != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        raise RegistryError(f"{url}: too many redirects")

    # -- the API ----------------------------------------------------------------

    async def resolve(self, reference: str) -> tuple[str, str, int]:
        """HEAD a manifest: (digest, media type, size) of what a tag points at now."""
        async with self._request(
            "HEAD", f"/v2/{self.repo}/manifests/{reference}", "resolve", {"Accept": ACCEPT}
        ) as resp:
            digest = resp.headers.get("Docker-Content-Digest", "")
            return digest, resp.headers.get("Content-Type", ""), int(resp.content_length or 0)

    async def get_manifest(self, reference: str, max_size: int = 4 << 20) -> tuple[bytes, str]:
        capability = "pull" if reference.startswith("sha256:") else "resolve"
        async with self._request(
            "GET", f"/v2/{self.repo}/manifests/{reference}", capability, {"Accept": ACCEPT}
        ) as resp:
            body = await _read_capped(resp, max_size, "manifest")
            return body, resp.headers.get("Content-Type", "")

    async def get_blob(self, digest: str, max_size: int = 16 << 20) -> bytes:
        async with self._request("GET", f"/v2/{self.repo}/blobs/{digest}", "pull") as resp:
            return await _read_capped(resp, max_size, f"blob {digest}")

    @asynccontextmanager
    async def open_blob(
        self, digest: str, offset: int = 0
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A blob's response, from `offset` when >0: 206, or 200 if Range is ignored, or 416
        (body unread: some registries promise a length they never send) if refused."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        ok = (200, 206, 416) if offset else (200, 206)
        async with self._request(
            "GET", f"/v2/{self.repo}/blobs/{digest}", "pull", headers, ok=ok
        ) as resp:
            yield resp

    @asynccontextmanager
    async def open_url(self, url: str, offset: int = 0) -> AsyncIterator[aiohttp.ClientResponse]:
        """A foreign layer URL: fetched without any credentials."""
        headers = {"User-Agent": USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = await self.session.get(url, headers=headers)
        except aiohttp.ClientError as e:
            raise RegistryError(f"{url}: {e}") from None
        try:
            if resp.status not in ((200, 206, 416) if offset else (200, 206)):
                raise RegistryError(f"{url}: {resp.status}", resp.status)
            yield resp
        finally:
            resp.release()


async def _read_capped(resp: aiohttp.ClientResponse, cap: int, what: str) -> bytes:
    if resp.content_length is not None and resp.content_length > cap:
        raise errors.ResourceExhausted(f"{what} is {resp.content_length} bytes (cap {cap})")
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 16):
        buf += chunk
        if len(buf) > cap:
            raise errors.ResourceExhausted(f"{what} exceeds {cap} bytes")
    return bytes(buf)


async def _read_error_body(resp: aiohttp.ClientResponse, cap: int = 64 << 10) -> bytes:
    """An error response's body, for its message: what arrives of it, never an error
    (a 416 from Go's ServeContent keeps the blob's Content-Length on a short text)."""
    buf = bytearray()
    try:
        async for chunk in resp.content.iter_chunked(1 << 14):
            buf += chunk
            if len(buf) >= cap:
                break
    except (TimeoutError, aiohttp.ClientError) as e:
        log.debug("%s: error body broke off: %s", resp.url, e)
    return bytes(buf[:cap])


def _message(body: bytes) -> str:
    """The registry's own error text (distribution's {"errors": [...]}), or the body."""
    try:
        doc: Any = json.loads(body)
        errs = doc.get("errors") if isinstance(doc, dict) else None
        if errs:
            return "; ".join(
                f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errs
            )
        if isinstance(doc, dict) and doc.get("details"):
            return str(doc["details"])
    except (ValueError, AttributeError):
        pass
    return body[:200].decode(errors="replace").strip()
