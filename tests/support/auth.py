"""Registry authentication for tests: htpasswd files and a Docker token server.

``TokenServer`` implements the Docker registry token spec (GET /token with HTTP Basic) and its
OAuth2 variant (POST /token with grant_type=password or refresh_token), issuing ES256 JWTs
that distribution's ``auth.token`` accepts: the header carries the signing certificate as
``x5c`` (or a libtrust ``kid``), and that self-signed certificate is the registry's
``rootcertbundle``.  It runs in the test process on its own event loop thread, on 127.0.0.1.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import secrets
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bcrypt
import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .faultproxy import STOP_TIMEOUT, BackgroundLoop
from .loopback import LoopbackServer

DEFAULT_SERVICE = "crispy-test-registry"
DEFAULT_ISSUER = "crispy-test-token-issuer"
KNOWN_ACTIONS = ("pull", "push", "delete", "*")

# -- htpasswd --------------------------------------------------------------------------------


def htpasswd_line(username: str, password: str, rounds: int = 4) -> str:
    """One htpasswd entry.  Distribution only accepts bcrypt, and htpasswd(1) writes "$2y$";
    the minimum cost keeps the registry's per-request password check cheap."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()
    return f"{username}:$2y${hashed[4:]}\n"


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    path.write_text("".join(htpasswd_line(u, p) for u, p in users.items()))
    return path


def htpasswd_auth(path: Path, realm: str = "crispy-test") -> dict[str, Any]:
    """The ``auth`` config section for Registry(auth=...)."""
    return {"htpasswd": {"realm": realm, "path": str(path)}}


def token_auth(realm: str, service: str, issuer: str, rootcertbundle: Path) -> dict[str, Any]:
    """The ``auth`` config section for Registry(auth=...) trusting ``rootcertbundle``."""
    return {
        "token": {
            "realm": realm,
            "service": service,
            "issuer": issuer,
            "rootcertbundle": str(rootcertbundle),
        }
    }


# -- keys ------------------------------------------------------------------------------------


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """docker/libtrust's key ID: SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits,
    base32 without padding, in 12 colon-separated groups of 4."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def self_signed_cert(
    key: ec.EllipticCurvePrivateKey, common_name: str, days: int = 30
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))  # tolerate clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


# -- the token server ------------------------------------------------------------------------


@dataclass
class TokenRequest:
    """One request to the token server, as logged in :attr:`TokenServer.log`."""

    method: str
    grant_type: str  # "basic" for the GET flow, else the POST grant_type
    scopes: tuple[str, ...]
    account: str | None  # the account query parameter of the GET flow
    user: str | None  # who authenticated; None when anonymous or refused
    status: int = 0
    offline: bool = False  # a refresh token was asked for
    time: float = field(default_factory=time.monotonic)


class TokenError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def parse_scope(scope: str) -> dict[str, Any] | None:
    """``type:name:actions`` (name may hold colons, e.g. a port) -> a JWT access entry."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


class TokenServer(LoopbackServer):
    """A Docker registry token server for one user.

    Behaviour switches (safe to flip from the test thread at any time):
    ``reject_status`` answers every request with that status; ``post_enabled`` False answers
    POST with 405 (clients must fall back to GET); ``allow_anonymous`` gives anonymous GETs a
    pull-only token instead of a 401; ``denied`` repository names get tokens without access;
    ``expires_in`` sets the lifetime of new tokens.
    """

    def __init__(
        self,
        username: str,
        password: str,
        *,
        service: str = DEFAULT_SERVICE,
        issuer: str = DEFAULT_ISSUER,
        expires_in: int = 300,
        key_header: Literal["x5c", "kid"] = "x5c",
    ) -> None:
        self.username = username
        self.password = password
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.key_header = key_header
        self.reject_status: int | None = None
        self.post_enabled = True
        self.allow_anonymous = False
        self.denied: set[str] = set()
        self.requests: Counter[str] = Counter()  # token requests per scope ("" for none)
        self.log: list[TokenRequest] = []
        self.port: int | None = None
        self._lock = threading.Lock()
        self._refresh_tokens: dict[str, str] = {}  # token -> username
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = self_signed_cert(self.key, issuer)
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.key_id = libtrust_key_id(self.key.public_key())
        self._bg: BackgroundLoop | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The realm: what the registry's challenges send clients to."""
        return f"{super().url}/token"

    def write_cert(self, path: Path) -> Path:
        """Write the signing certificate: the registry's ``rootcertbundle``."""
        path.write_bytes(self.cert_pem)
        return path

    def auth_config(self, rootcertbundle: Path) -> dict[str, Any]:
        """The registry ``auth`` section trusting this server (writes the bundle)."""
        return token_auth(self.url, self.service, self.issuer, self.write_cert(rootcertbundle))

    def start(self) -> TokenServer:
        self._bg = BackgroundLoop.serving("token-server", self._start)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/token", self._get)
        app.router.add_post("/token", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # Binding the socket ourselves is the public way to learn the port it got.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.port = int(sock.getsockname()[1])

    def stop(self) -> None:
        if self._bg is None:
            return
        try:
            if self._runner is not None:
                self._bg.run(self._runner.cleanup(), STOP_TIMEOUT)
        finally:
            self._bg.stop()
            self._bg = None
            self._runner = None
            self.port = None

    def reset(self) -> None:
        """Back to defaults: counters and log cleared, nothing rejected or denied."""
        with self._lock:
            self.requests.clear()
            self.log.clear()
        self.reject_status = None
        self.post_enabled = True
        self.allow_anonymous = False
        self.denied = set()

    # -- tokens ------------------------------------------------------------------------------

    def mint_refresh_token(self, username: str | None = None) -> str:
        """A refresh token: CRI's AuthConfig.identity_token, used with POST
        grant_type=refresh_token."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._refresh_tokens[token] = username or self.username
        return token

    def revoke_refresh_tokens(self) -> None:
        with self._lock:
            self._refresh_tokens.clear()

    def issue_token(
        self, subject: str, access: list[dict[str, Any]], *, expires_in: int | None = None
    ) -> str:
        """A signed JWT as the registry expects it, for ``access`` entries."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,  # a string: distribution 2.8 does not take a list
            "exp": now + (self.expires_in if expires_in is None else expires_in),
            "nbf": now - 5,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        headers: dict[str, Any]
        if self.key_header == "x5c":
            der = self.cert.public_bytes(serialization.Encoding.DER)
            headers = {"x5c": [base64.b64encode(der).decode()]}
        else:
            headers = {"kid": self.key_id}
        return jwt.encode(claims, self.key, algorithm="ES256", headers=headers)

    def _grant(self, user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        access = []
        for scope in scopes:
            entry = parse_scope(scope)
            if entry is None:
                raise TokenError(400, "invalid_request", f"malformed scope {scope!r}")
            if entry["type"] == "repository" and entry["name"] in self.denied:
                continue  # as real servers do: a token, just without this access
            actions = [a for a in entry["actions"] if a in KNOWN_ACTIONS]
            if user is None:
                actions = [a for a in actions if a == "pull"]
            if actions:
                access.append({**entry, "actions": actions})
        return access

    def _reply(
        self, user: str | None, scopes: list[str], *, refresh_token: str | None, oauth: bool
    ) -> dict[str, Any]:
        token = self.issue_token(user or "", self._grant(user, scopes))
        reply: dict[str, Any] = {
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if oauth:
            reply["scope"] = " ".join(scopes)
        else:
            reply["token"] = token
        if refresh_token is not None:
            reply["refresh_token"] = refresh_token
        return reply

    # -- HTTP --------------------------------------------------------------------------------

    def _record(self, entry: TokenRequest) -> None:
        with self._lock:
            self.log.append(entry)
            for scope in entry.scopes or ("",):
                self.requests[scope] += 1

    def _check_service(self, service: str | None) -> None:
        if service is not None and service != self.service:
            raise TokenError(400, "invalid_request", f"unknown service {service!r}")

    def _basic_user(self, header: str | None) -> str | None:
        """The authenticated user of a Basic header; None when there is no header."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        try:
            username, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            username = password = ""
        if scheme.lower() != "basic" or not self._valid(username, password):
            raise TokenError(401, "unauthorized", "bad credentials")
        return username

    def _valid(self, username: str, password: str) -> bool:
        return secrets.compare_digest(
            f"{username}\0{password}".encode(), f"{self.username}\0{self.password}".encode()
        )

    async def _get(self, request: web.Request) -> web.Response:
        q = request.query
        entry = TokenRequest(
            "GET",
            "basic",
            tuple(s for value in q.getall("scope", []) for s in value.split(" ") if s),
            q.get("account"),
            None,
            offline=q.get("offline_token", "").lower() == "true",
        )
        try:
            if self.reject_status is not None:
                raise TokenError(self.reject_status, "unauthorized", "token server rejects all")
            self._check_service(q.get("service"))
            entry.user = self._basic_user(request.headers.get("Authorization"))
            if entry.user is None and not self.allow_anonymous:
                raise TokenError(401, "unauthorized", "authentication required")
            refresh = None
            if entry.offline and entry.user is not None:
                refresh = self.mint_refresh_token(entry.user)
            reply = self._reply(entry.user, list(entry.scopes), refresh_token=refresh, oauth=False)
        except TokenError as err:
            return self._error(entry, err)
        return self._ok(entry, reply)

    async def _post(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant_type = str(form.get("grant_type", ""))
        scopes = tuple(s for value in form.getall("scope", []) for s in str(value).split(" ") if s)
        entry = TokenRequest("POST", grant_type, scopes, None, None)
        entry.offline = form.get("access_type") == "offline"
        try:
            if self.reject_status is not None:
                raise TokenError(self.reject_status, "unauthorized", "token server rejects all")
            if not self.post_enabled:
                raise TokenError(405, "unsupported", "POST /token is disabled")
            if not form.get("client_id"):
                raise TokenError(400, "invalid_request", "client_id is required")
            self._check_service(str(form.get("service", "")) or None)
            refresh = None
            if grant_type == "password":
                username, password = str(form.get("username", "")), str(form.get("password", ""))
                if not self._valid(username, password):
                    raise TokenError(401, "invalid_grant", "bad credentials")
                entry.user = username
                refresh = self.mint_refresh_token(username) if entry.offline else None
            elif grant_type == "refresh_token":
                presented = str(form.get("refresh_token", ""))
                with self._lock:
                    entry.user = self._refresh_tokens.get(presented)
                if entry.user is None:
                    raise TokenError(401, "invalid_grant", "unknown refresh token")
                refresh = presented if entry.offline else None  # never a new one
            else:
                raise TokenError(400, "unsupported_grant_type", f"grant_type {grant_type!r}")
            reply = self._reply(entry.user, list(scopes), refresh_token=refresh, oauth=True)
        except TokenError as err:
            return self._error(entry, err)
        return self._ok(entry, reply)

    def _ok(self, entry: TokenRequest, reply: dict[str, Any]) -> web.Response:
        entry.status = 200
        self._record(entry)
        return web.json_response(reply)

    def _error(self, entry: TokenRequest, err: TokenError) -> web.Response:
        entry.status = err.status
        self._record(entry)
        headers = {}
        if err.status == 401 and entry.method == "GET":
            headers["WWW-Authenticate"] = 'Basic realm="crispy-test-token"'
        body: dict[str, Any] = {"error": err.error, "error_description": err.description}
        # Distribution-style "errors" too, so either kind of client finds a message.
        body["errors"] = [{"code": err.error.upper(), "message": err.description}]
        return web.Response(
            status=err.status,
            text=json.dumps(body),
            content_type="application/json",
            headers=headers,
        )
