"""Registry host configuration in containerd's `hosts.toml` format.

`<hosts_dir>/<host>/hosts.toml` says how to reach the registry `<host>`: mirrors
(`[host."<url>"]` tables, tried in file order), then the upstream `server`. See
https://github.com/containerd/containerd/blob/main/docs/hosts.md. The directory
for a host is looked up as containerd does: `host_port_`, then `host:port`, then
`_default`; a directory without `hosts.toml` (or with an empty one) is read in
Docker's certs.d layout instead (`*.crt` CAs, `*.cert` + `*.key` client pairs).

Parsed files are cached by (path, mtime, size, inode): a pull does not re-read
TOML, and an edited file is picked up by the next pull without a restart, as
with containerd.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import posixpath
import re
import ssl
import tomllib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from crispy.errors import InvalidArgument

DOCKER_HUB = "docker.io"
DOCKER_HUB_REGISTRY = "https://registry-1.docker.io"
DEFAULT_DIR = "_default"
CAPABILITIES = frozenset({"pull", "resolve", "push"})
MIRROR_CAPABILITIES = frozenset({"pull", "resolve"})

_COMMON_KEYS = frozenset(
    {"capabilities", "ca", "client", "skip_verify", "header", "override_path", "dial_timeout",
     "proxy"}
)  # fmt: skip
_TOP_KEYS = _COMMON_KEYS | {"server", "host"}
# RFC 9110 token: what a header name may be made of.
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DURATION_PART_RE = re.compile(r"([0-9]*\.?[0-9]+|[0-9]+\.)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
    "h": 3600.0,
}  # fmt: skip
_HOST_RE = re.compile(r"[A-Za-z0-9.\-]+(?::[0-9]+)?|\[[A-Fa-f0-9:.]+\](?::[0-9]+)?|[A-Fa-f0-9:]+")


class HostsConfigError(InvalidArgument):
    """A hosts.toml that can't be used; the message names the file and the field."""

    def __init__(self, path: str, fld: str | None, problem: str) -> None:
        self.path = path
        self.field = fld
        super().__init__(f"{path}: {fld}: {problem}" if fld else f"{path}: {problem}")


@dataclass(frozen=True)
class Endpoint:
    """One place to send a registry's API requests, in the order `load_hosts` gives."""

    url: str  # scheme://host[:port][/prefix], no trailing slash and no "/v2" (api_url adds it)
    host: str  # the registry (reference domain) this endpoint serves, e.g. "docker.io"
    capabilities: frozenset[str]  # subset of {"pull", "resolve", "push"}
    skip_verify: bool = False
    ca_files: tuple[str, ...] = ()
    client_certs: tuple[tuple[str, str | None], ...] = ()  # (cert, key); None: key in cert
    headers: tuple[tuple[str, str], ...] = ()
    override_path: bool = False  # url already holds the API root: api_url adds no "/v2"
    is_mirror: bool = False  # from a [host."..."] table rather than the upstream server
    # Try https, and if the TLS handshake fails use plain http (loopback registries).
    allow_http_fallback: bool = False
    dial_timeout: float | None = None  # seconds to wait for a connection; None: default
    proxy: str | None = None  # http(s) proxy URL for this endpoint
    source: str | None = field(default=None, compare=False)  # hosts.toml it came from

    @property
    def url_host(self) -> str:
        """host[:port] of the URL, lowercased."""
        return urlsplit(self.url).netloc.lower()

    @property
    def is_proxy(self) -> bool:
        """Serves `host` from another host, as containerd's `RegistryHost.isProxy`.

        Such endpoints get `?ns=<host>` on every request (multi-registry caches
        route on it); registry credentials belong to non-proxy endpoints only.
        """
        ours, theirs = self.url_host, self.host.lower()
        if ours == theirs:
            return False
        return not (theirs == DOCKER_HUB and ours == "registry-1.docker.io")

    def api_url(self, path: str) -> str:
        """The URL for an API path such as `/v2/<repo>/manifests/<ref>`.

        With override_path the URL is the API root, so the path's `/v2` is dropped.
        """
        if not path.startswith("/"):
            path = "/" + path
        if self.override_path and (path == "/v2" or path.startswith("/v2/")):
            path = path[3:]
        url = self.url + path
        if self.is_proxy:
            url += ("&" if "?" in url else "?") + urlencode({"ns": self.host})
        return url

    def ssl_context(self) -> ssl.SSLContext | bool:
        """False for plain http; else a (cached) context with this endpoint's TLS settings.

        CA files are added to the system roots, as containerd does. Raises
        HostsConfigError if a CA or client certificate file can't be loaded.
        """
        if urlsplit(self.url).scheme == "http":
            return False
        return _tls_context(self)


@dataclass(frozen=True)
class _Spec:
    """One host entry of a hosts.toml, before the registry's defaults are applied."""

    url: str | None  # None: the top level without `server`
    capabilities: frozenset[str] | None
    skip_verify: bool | None
    ca_files: tuple[str, ...] | None
    client_certs: tuple[tuple[str, str | None], ...] | None
    headers: tuple[tuple[str, str], ...]
    override_path: bool
    dial_timeout: float | None
    proxy: str | None


@dataclass(frozen=True)
class _Parsed:
    mirrors: tuple[_Spec, ...]
    upstream: _Spec
    source: str | None


_EMPTY_SPEC = _Spec(None, None, None, None, None, (), False, None, None)

_file_cache: dict[str, tuple[tuple[int, int, int], _Parsed]] = {}
_ctx_cache: dict[tuple[Any, ...], ssl.SSLContext] = {}
_CACHE_MAX = 256


# -- reading hosts.toml ---------------------------------------------------------------


class _Fields:
    """Typed access to one TOML table, with errors naming the file and the key."""

    def __init__(self, path: str, prefix: str, table: dict[str, Any]) -> None:
        self.path, self.prefix, self.table = path, prefix, table

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def error(self, key: str, problem: str) -> HostsConfigError:
        return HostsConfigError(self.path, self.name(key), problem)

    def get(self, key: str, types: type | tuple[type, ...], what: str) -> Any:
        value = self.table.get(key)
        if value is not None and not isinstance(value, types):
            raise self.error(key, f"expected {what}, got {type(value).__name__} {value!r}")
        return value

    def string_list(self, key: str, value: list[Any]) -> list[str]:
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}]", f"expected a string, got {item!r}")
        return value


def _abs(base_dir: str, p: str) -> str:
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p))


def _parse_duration(text: str) -> float | None:
    """A Go duration ("1s", "500ms", "1m30s") in seconds; None if malformed."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART_RE.match(text, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total if text else None


def _parse_url(f: _Fields, key: str, raw: str, override_path: bool, what: str) -> str:
    """Normalise a host/server URL to scheme://netloc[/prefix] without "/v2".

    `key` is the full field name (`server`, `host."<url>"`), not one under f's prefix.
    """
    if not raw.startswith(("http://", "https://")):
        if "://" in raw:
            raise HostsConfigError(f.path, key, f"{what} {raw!r}: scheme must be http or https")
        raw = "https://" + raw  # containerd's default for a bare host[:port]
    try:
        u = urlsplit(raw)
        u.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise HostsConfigError(f.path, key, f"{what} {raw!r}: {e}") from None
    if not u.hostname:
        raise HostsConfigError(f.path, key, f"{what} {raw!r} has no host")
    if "@" in u.netloc or u.query or u.fragment:
        raise HostsConfigError(
            f.path, key, f"{what} {raw!r}: must not hold user info, a query or a fragment"
        )
    path = ""
    if u.path.strip("/"):
        path = posixpath.normpath("/" + u.path.lstrip("/")).rstrip("/")
    # containerd appends "/v2" to the path unless it is there already or override_path.
    if not override_path and (path == "/v2" or path.endswith("/v2")):
        path = path[:-3]
    return f"{u.scheme}://{u.netloc}{path}"


def _parse_spec(f: _Fields, base_dir: str, url_key: str | None, raw_url: str | None) -> _Spec:
    allowed = _COMMON_KEYS if f.prefix else _TOP_KEYS
    for key in f.table:
        if key not in allowed:
            hint = " (mirrors can't nest)" if key == "host" else ""
            raise f.error(key, f"unknown key{hint}")

    override_path = bool(f.get("override_path", bool, "a boolean") or False)
    url = None
    if raw_url is not None:
        assert url_key is not None
        url = _parse_url(f, url_key, raw_url, override_path, "URL")

    caps = f.get("capabilities", list, "a list of strings")
    capabilities = None
    if caps:  # an empty list means the default, as in containerd
        found = set()
        for i, c in enumerate(f.string_list("capabilities", caps)):
            if c.lower() not in CAPABILITIES:
                raise f.error(
                    f"capabilities[{i}]", f"unknown capability {c!r} (use pull, resolve, push)"
                )
            found.add(c.lower())
        capabilities = frozenset(found)

    ca = f.get("ca", (str, list), "a path or a list of paths")
    ca_files: tuple[str, ...] | None = None
    if isinstance(ca, str):
        ca_files = (_abs(base_dir, ca),)
    elif isinstance(ca, list):
        ca_files = tuple(_abs(base_dir, p) for p in f.string_list("ca", ca))

    client = f.get("client", (str, list), "a path, a list of paths or of [cert, key] pairs")
    client_certs: tuple[tuple[str, str | None], ...] | None = None
    if isinstance(client, str):
        client_certs = ((_abs(base_dir, client), None),)
    elif isinstance(client, list):
        pairs: list[tuple[str, str | None]] = []
        for i, item in enumerate(client):
            if isinstance(item, str):
                pairs.append((_abs(base_dir, item), None))
            elif (
                isinstance(item, list) and len(item) == 2 and all(isinstance(p, str) for p in item)
            ):
                cert, key = item
                pairs.append((_abs(base_dir, cert), _abs(base_dir, key) if key else None))
            else:
                raise f.error(
                    f"client[{i}]", f"expected a path or a [cert, key] pair, got {item!r}"
                )
        client_certs = tuple(pairs)

    header = f.get("header", dict, "a table")
    headers: list[tuple[str, str]] = []
    for name, value in (header or {}).items():
        hf = f"header.{name}"
        if not _HEADER_NAME_RE.fullmatch(name):
            raise f.error(hf, "not a valid HTTP header name")
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise f.error(hf, f"expected a string or a list of strings, got {value!r}")
        for v in values:
            if any(c in v for c in "\r\n\0"):
                raise f.error(hf, "header values must not contain CR, LF or NUL")
            headers.append((name, v))

    dial = f.get("dial_timeout", str, 'a duration string such as "5s"')
    dial_timeout = None
    if dial is not None:
        dial_timeout = _parse_duration(dial)
        if dial_timeout is None:
            raise f.error("dial_timeout", f'{dial!r} is not a duration such as "5s" or "500ms"')

    proxy = f.get("proxy", str, "a URL")
    if proxy is not None:
        p = urlsplit(proxy)
        if p.scheme not in ("http", "https") or not p.hostname:
            raise f.error("proxy", f"{proxy!r}: crispy supports http:// and https:// proxies")
        if p.path.strip("/") or p.query or p.fragment:
            raise f.error("proxy", f"{proxy!r}: must not hold a path, query or fragment")

    return _Spec(
        url=url,
        capabilities=capabilities,
        skip_verify=f.get("skip_verify", bool, "a boolean"),
        ca_files=ca_files,
        client_certs=client_certs,
        headers=tuple(headers),
        override_path=override_path,
        dial_timeout=dial_timeout,
        proxy=proxy,
    )


def _parse_file(path: str, data: bytes) -> _Parsed:
    base_dir = os.path.dirname(path)
    try:
        doc = tomllib.loads(data.decode())
    except UnicodeDecodeError as e:
        raise HostsConfigError(path, None, f"not UTF-8 text: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise HostsConfigError(path, None, f"invalid TOML: {e}") from None
    top = _Fields(path, "", doc)
    server = top.get("server", str, "a URL")
    hosts = top.get("host", dict, 'tables [host."<url>"]')
    mirrors = []
    # tomllib keeps tables in file order: mirrors are tried in the order written.
    for url, table in (hosts or {}).items():
        prefix = f'host."{url}".'
        if not isinstance(table, dict):
            raise HostsConfigError(path, prefix[:-1], f"expected a table, got {table!r}")
        mf = _Fields(path, prefix, table)
        mirrors.append(_parse_spec(mf, base_dir, prefix[:-1], url))
    upstream = _parse_spec(top, base_dir, "server", server or None)
    return _Parsed(tuple(mirrors), upstream, path)


def _cert_dir(dir_path: str) -> _Parsed:
    """Docker's certs.d layout: `*.crt` are CAs, `x.cert` (+ `x.key`) client pairs."""
    try:
        names = sorted(os.listdir(dir_path))
    except FileNotFoundError:
        names = []
    except OSError as e:
        raise HostsConfigError(dir_path, None, f"cannot list: {e.strerror}") from None
    cas = tuple(os.path.join(dir_path, n) for n in names if n.endswith(".crt"))
    pairs = []
    for n in names:
        if n.endswith(".cert"):
            key = os.path.join(dir_path, n[: -len(".cert")] + ".key")
            pairs.append((os.path.join(dir_path, n), key if os.path.exists(key) else None))
    spec = _Spec(
        None, None, None, cas or None, tuple(pairs) or None, (), False, None, None
    )  # fmt: skip
    return _Parsed((), spec, None)


def _load_dir(dir_path: str) -> _Parsed:
    path = os.path.join(dir_path, "hosts.toml")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _cert_dir(dir_path)
    except OSError as e:
        raise HostsConfigError(path, None, f"cannot read: {e.strerror}") from None
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _file_cache.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise HostsConfigError(path, None, f"cannot read: {e.strerror}") from None
    # containerd treats an empty hosts.toml as absent.
    parsed = _cert_dir(dir_path) if not data else _parse_file(path, data)
    if len(_file_cache) >= _CACHE_MAX:
        _file_cache.clear()
    _file_cache[path] = (stamp, parsed)
    return parsed


# -- building endpoints ---------------------------------------------------------------


def _split_host_port(host: str) -> tuple[str, str | None]:
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        return host[1:end], (rest[1:] if rest.startswith(":") else None)
    if host.count(":") == 1:
        name, port = host.split(":")
        return name, port
    return host, None  # a name, or a bare IPv6 address


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1, with or without a port (containerd's IsLocalhost)."""
    name, _ = _split_host_port(host)
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_dirs(hosts_dir: str, host: str) -> list[str]:
    name, port = _split_host_port(host)
    dirs = []
    if port is not None:
        # containerd tries "host_port_" first: ":" is awkward in paths on some systems.
        bare = f"[{name}]" if host.startswith("[") else name
        dirs.append(f"{bare}_{port}_")
    dirs += [host, DEFAULT_DIR]
    return [os.path.join(hosts_dir, d) for d in dirs]


def _endpoint(spec: _Spec, url: str, host: str, mirror: bool, source: str | None) -> Endpoint:
    default_caps = MIRROR_CAPABILITIES if mirror else CAPABILITIES
    fallback = False
    explicit_tls = (
        spec.ca_files is not None or spec.client_certs is not None or spec.skip_verify is not None
    )
    u = urlsplit(url)
    if u.scheme == "http" and explicit_tls and u.port != 80:
        # containerd: TLS settings on an http:// host with an ambiguous port mean
        # "try https first, then plain http".
        url = "https://" + url[len("http://") :]
        fallback = True
    return Endpoint(
        url=url,
        host=host,
        capabilities=spec.capabilities if spec.capabilities is not None else default_caps,
        skip_verify=bool(spec.skip_verify),
        ca_files=spec.ca_files or (),
        client_certs=spec.client_certs or (),
        headers=spec.headers,
        override_path=spec.override_path,
        is_mirror=mirror,
        allow_http_fallback=fallback,
        dial_timeout=spec.dial_timeout,
        proxy=spec.proxy,
        source=source,
    )


def _check_host(host: str) -> None:
    # `host` names a directory under hosts_dir: keep it to host[:port] characters.
    if not _HOST_RE.fullmatch(host) or host in (".", "..") or host.startswith("."):
        raise InvalidArgument(f"invalid registry host {host!r}")


def load_hosts(hosts_dir: str, host: str) -> list[Endpoint]:
    """The endpoints to try for registry `host` ("docker.io", "localhost:5000"), in order.

    Mirrors come first in file order, then the upstream server. Endpoints that can
    neither pull nor resolve are left out (crispy never pushes), so the list may be
    empty when the config routes nothing for this host.
    """
    _check_host(host)
    parsed = _Parsed((), _EMPTY_SPEC, None)
    if hosts_dir:
        for d in _host_dirs(hosts_dir, host):
            if os.path.isdir(d):
                parsed = _load_dir(d)
                break

    src = parsed.source
    endpoints = [_endpoint(m, m.url or "", host, True, src) for m in parsed.mirrors if m.url]
    up = parsed.upstream
    if up.url is not None:
        endpoints.append(_endpoint(up, up.url, host, False, src))
    elif host == DOCKER_HUB:
        endpoints.append(_endpoint(up, DOCKER_HUB_REGISTRY, host, False, src))
    else:
        ep = _endpoint(up, f"https://{host}", host, False, src)
        if is_loopback(host):
            # As containerd: a loopback registry is usually plain HTTP or self-signed,
            # so try https without verification, then fall back to http.
            skip = up.skip_verify if up.skip_verify is not None else True
            ep = dataclasses.replace(ep, allow_http_fallback=True, skip_verify=skip)
        endpoints.append(ep)
    return [e for e in endpoints if e.capabilities & MIRROR_CAPABILITIES]


# -- TLS ----------------------------------------------------------------------------------


def _stamp(path: str, ep: Endpoint, fld: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise HostsConfigError(
            ep.source or path, fld, f"cannot read {path}: {e.strerror}"
        ) from None
    return st.st_mtime_ns, st.st_size


def _tls_context(ep: Endpoint) -> ssl.SSLContext:
    # Key on the files' stamps too, so a renewed certificate is picked up.
    key = (
        ep.skip_verify,
        tuple((p, _stamp(p, ep, "ca")) for p in ep.ca_files),
        tuple(
            (c, k, _stamp(c, ep, "client"), _stamp(k, ep, "client") if k else None)
            for c, k in ep.client_certs[:1]
        ),
    )
    ctx = _ctx_cache.get(key)
    if ctx is not None:
        return ctx
    ctx = ssl.create_default_context()
    for p in ep.ca_files:
        try:
            ctx.load_verify_locations(cafile=p)
        except (OSError, ssl.SSLError) as e:
            raise HostsConfigError(ep.source or p, "ca", f"cannot load {p}: {e}") from None
    # An SSLContext holds one client certificate per key type, and registries that
    # want one rarely accept several: use the first pair, as a pinned choice.
    for cert, keyfile in ep.client_certs[:1]:
        try:
            ctx.load_cert_chain(cert, keyfile)
        except (OSError, ssl.SSLError) as e:
            raise HostsConfigError(
                ep.source or cert, "client", f"cannot load {cert}: {e}"
            ) from None
    if ep.skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if len(_ctx_cache) >= _CACHE_MAX:
        _ctx_cache.clear()
    _ctx_cache[key] = ctx
    return ctx


__all__ = ["Endpoint", "HostsConfigError", "is_loopback", "load_hosts"]
