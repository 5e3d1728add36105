"""hosts.toml: mirrors, upstream, TLS files, defaults and errors naming file and field."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

import pytest

from crispy.errors import InvalidArgument
from crispy.images.hosts import Endpoint, HostsConfigError, is_loopback, load_hosts

PULL_RESOLVE = frozenset({"pull", "resolve"})
ALL = frozenset({"pull", "resolve", "push"})


def write(hosts_dir: Path, host: str, text: str) -> Path:
    d = hosts_dir / host
    d.mkdir(parents=True, exist_ok=True)
    path = d / "hosts.toml"
    path.write_text(text)
    return path


def urls(eps: list[Endpoint]) -> list[str]:
    return [e.url for e in eps]


# -- defaults ---------------------------------------------------------------------------


def test_no_config_gives_the_upstream(tmp_path: Path) -> None:
    for hosts_dir in (str(tmp_path), str(tmp_path / "missing"), ""):
        (hub,) = load_hosts(hosts_dir, "docker.io")
        assert hub.url == "https://registry-1.docker.io"
        assert hub.host == "docker.io"
        assert hub.capabilities == ALL
        assert not (hub.is_mirror or hub.allow_http_fallback or hub.skip_verify)
        assert not hub.is_proxy
        assert hub.api_url("/v2/library/busybox/manifests/latest") == (
            "https://registry-1.docker.io/v2/library/busybox/manifests/latest"
        )
        (k8s,) = load_hosts(hosts_dir, "registry.k8s.io")
        assert k8s.url == "https://registry.k8s.io"
        (ported,) = load_hosts(hosts_dir, "example.com:5000")
        assert ported.url == "https://example.com:5000"
        assert not ported.allow_http_fallback


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:5000", "127.0.0.1:5000", "127.0.0.2", "[::1]:5000", "::1"]
)
def test_loopback_registries_may_fall_back_to_http(tmp_path: Path, host: str) -> None:
    (ep,) = load_hosts(str(tmp_path), host)
    assert ep.url == f"https://{host}"
    assert ep.allow_http_fallback
    assert ep.skip_verify  # as containerd: a local registry is usually self-signed
    assert ep.capabilities == ALL
    assert is_loopback(host)


def test_loopback_detection() -> None:
    assert not is_loopback("example.com:5000")
    assert not is_loopback("10.0.0.1:5000")
    assert not is_loopback("[2001:db8::1]:5000")
    assert is_loopback("LOCALHOST:1")


# -- mirrors ----------------------------------------------------------------------------

MIRROR_EXAMPLE = """
server = "{server}"

[host."http://127.0.0.1:5001"]
  capabilities = ["pull", "resolve"]
"""


def test_local_mirror_for_docker_io_and_registry_k8s_io(tmp_path: Path) -> None:
    write(tmp_path, "docker.io", MIRROR_EXAMPLE.format(server="https://registry-1.docker.io"))
    write(tmp_path, "registry.k8s.io", MIRROR_EXAMPLE.format(server="https://registry.k8s.io"))

    mirror, hub = load_hosts(str(tmp_path), "docker.io")
    assert mirror.url == "http://127.0.0.1:5001"
    assert mirror.is_mirror and mirror.capabilities == PULL_RESOLVE
    assert mirror.ssl_context() is False
    assert mirror.is_proxy
    # A mirror is told which registry it stands in for, as containerd does.
    assert mirror.api_url("/v2/library/busybox/manifests/1") == (
        "http://127.0.0.1:5001/v2/library/busybox/manifests/1?ns=docker.io"
    )
    assert mirror.api_url("/v2/x/tags/list?n=10") == (
        "http://127.0.0.1:5001/v2/x/tags/list?n=10&ns=docker.io"
    )
    assert hub.url == "https://registry-1.docker.io" and not hub.is_mirror
    assert hub.capabilities == ALL and not hub.is_proxy
    assert str(tmp_path / "docker.io" / "hosts.toml") == mirror.source == hub.source

    mirror, k8s = load_hosts(str(tmp_path), "registry.k8s.io")
    assert (mirror.url, mirror.host) == ("http://127.0.0.1:5001", "registry.k8s.io")
    assert mirror.api_url("/v2/pause/manifests/3.10").endswith("?ns=registry.k8s.io")
    assert k8s.url == "https://registry.k8s.io"


def test_mirrors_keep_file_order_and_upstream_is_last(tmp_path: Path) -> None:
    write(
        tmp_path,
        "docker.io",
        """
[host."https://z.example.com"]
[host."https://a.example.com"]
  capabilities = ["pull"]
[host."m.example.com:8443"]
  capabilities = ["pull", "resolve", "push"]
""",
    )
    eps = load_hosts(str(tmp_path), "docker.io")
    assert urls(eps) == [
        "https://z.example.com",
        "https://a.example.com",
        "https://m.example.com:8443",  # a bare host[:port] means https, as in containerd
        "https://registry-1.docker.io",  # no `server`: the registry's own default
    ]
    assert [e.capabilities for e in eps] == [
        PULL_RESOLVE,
        frozenset({"pull"}),
        ALL,
        ALL,
    ]
    assert [e.is_mirror for e in eps] == [True, True, True, False]


def test_upstream_without_pull_or_resolve_is_not_tried(tmp_path: Path) -> None:
    write(
        tmp_path,
        "example.com",
        """
server = "https://example.com"
capabilities = ["push"]

[host."https://mirror.example.com"]
  capabilities = ["pull"]
[host."https://push-only.example.com"]
  capabilities = ["push"]
""",
    )
    assert urls(load_hosts(str(tmp_path), "example.com")) == ["https://mirror.example.com"]


def test_capabilities_excluding_resolve(tmp_path: Path) -> None:
    write(
        tmp_path,
        "docker.io",
        """
[host."https://public-mirror.example.com"]
  capabilities = ["pull"]
[host."https://docker-mirror.internal"]
  capabilities = ["Pull", "RESOLVE"]
""",
    )
    public, private, hub = load_hosts(str(tmp_path), "docker.io")
    assert public.capabilities == frozenset({"pull"})  # never trusted to resolve a tag
    assert "resolve" not in public.capabilities
    assert private.capabilities == PULL_RESOLVE
    assert "resolve" in hub.capabilities


def test_server_only_config_replaces_the_upstream(tmp_path: Path) -> None:
    write(tmp_path, "_default", 'server = "https://registry.example.com/"\n')
    (ep,) = load_hosts(str(tmp_path), "quay.io")
    assert ep.url == "https://registry.example.com"
    assert not ep.is_mirror and ep.host == "quay.io"
    assert ep.is_proxy  # another host serves quay.io: it gets ?ns=
    assert ep.api_url("/v2/a/b/blobs/sha256:x") == (
        "https://registry.example.com/v2/a/b/blobs/sha256:x?ns=quay.io"
    )


def test_url_paths(tmp_path: Path) -> None:
    write(
        tmp_path,
        "docker.io",
        """
server = "https://upstream.example.com/v2"

[host."https://prefix.example.com/us//west/"]
[host."https://mirror.local/v2/docker.io"]
  override_path = true
[host."https://mirror.local/root"]
  override_path = true
""",
    )
    prefixed, override, override_root, upstream = load_hosts(str(tmp_path), "docker.io")
    assert prefixed.url == "https://prefix.example.com/us/west"
    assert prefixed.api_url("/v2/x/manifests/1").startswith(
        "https://prefix.example.com/us/west/v2/x/manifests/1?"
    )
    # override_path: the URL is the API root, so no "/v2" is added.
    assert override.url == "https://mirror.local/v2/docker.io"
    assert override.override_path
    assert override.api_url("/v2/library/busybox/manifests/1") == (
        "https://mirror.local/v2/docker.io/library/busybox/manifests/1?ns=docker.io"
    )
    assert override_root.api_url("/v2/") == "https://mirror.local/root/?ns=docker.io"
    # A server URL ending in /v2 is the same server: "/v2" is not doubled.
    assert upstream.url == "https://upstream.example.com"
    assert (
        upstream.api_url("v2/x/blobs/y") == "https://upstream.example.com/v2/x/blobs/y?ns=docker.io"
    )


# -- lookup -------------------------------------------------------------------------------


def test_default_dir_is_the_fallback(tmp_path: Path) -> None:
    write(tmp_path, "_default", '[host."http://cache.local:5000"]\n')
    write(tmp_path, "docker.io", "")  # empty hosts.toml: as if absent (containerd)

    mirror, upstream = load_hosts(str(tmp_path), "ghcr.io")
    assert mirror.url == "http://cache.local:5000" and mirror.host == "ghcr.io"
    assert upstream.url == "https://ghcr.io"
    # A host with its own directory does not use _default.
    assert urls(load_hosts(str(tmp_path), "docker.io")) == ["https://registry-1.docker.io"]
    # The registry's defaults still apply through _default.
    _, local = load_hosts(str(tmp_path), "127.0.0.1:5000")
    assert local.url == "https://127.0.0.1:5000" and local.allow_http_fallback


def test_host_port_directories(tmp_path: Path) -> None:
    write(tmp_path, "localhost:5000", 'server = "http://localhost:5000"\n')
    (ep,) = load_hosts(str(tmp_path), "localhost:5000")
    assert ep.url == "http://localhost:5000" and not ep.allow_http_fallback
    assert ep.ssl_context() is False
    # containerd looks at "host_port_" before "host:port".
    write(tmp_path, "localhost_5000_", 'server = "http://localhost:5001"\n')
    assert urls(load_hosts(str(tmp_path), "localhost:5000")) == ["http://localhost:5001"]
    write(tmp_path, "[::1]:5000", 'server = "http://[::1]:5000"\n')
    assert urls(load_hosts(str(tmp_path), "[::1]:5000")) == ["http://[::1]:5000"]
    # Another port is another registry.
    assert load_hosts(str(tmp_path), "localhost:6000")[0].url == "https://localhost:6000"


def test_bad_host_names_are_refused(tmp_path: Path) -> None:
    for host in ("", "..", "../etc", "a/b", "_default/..", "x y"):
        with pytest.raises(InvalidArgument, match="invalid registry host"):
            load_hosts(str(tmp_path), host)


# -- fields -------------------------------------------------------------------------------


def test_tls_fields_and_relative_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "docker.io",
        """
server = "https://registry-1.docker.io"
ca = "upstream.crt"

[host."https://one.example.com"]
  ca = "one-ca.pem"
  client = "certs/client.pem"
  skip_verify = false

[host."https://two.example.com"]
  ca = ["a.pem", "/etc/ssl/b.pem", "sub/../c.pem"]
  client = [["c.cert", "c.key"], ["both.pem", ""]]
  skip_verify = true

[host."https://three.example.com"]
  client = ["x.pem", "/abs/y.pem"]
""",
    )
    d = str(path.parent)
    one, two, three, upstream = load_hosts(str(tmp_path), "docker.io")
    assert one.ca_files == (f"{d}/one-ca.pem",)
    assert one.client_certs == ((f"{d}/certs/client.pem", None),)
    assert not one.skip_verify
    assert two.ca_files == (f"{d}/a.pem", "/etc/ssl/b.pem", f"{d}/c.pem")
    assert two.client_certs == ((f"{d}/c.cert", f"{d}/c.key"), (f"{d}/both.pem", None))
    assert two.skip_verify
    assert three.client_certs == ((f"{d}/x.pem", None), ("/abs/y.pem", None))
    assert upstream.ca_files == (f"{d}/upstream.crt",)
    assert not upstream.is_mirror


def test_headers(tmp_path: Path) -> None:
    write(
        tmp_path,
        "example.com",
        """
[header]
  x-custom-1 = "custom header"

[host."https://mirror.example.com"]
  [host."https://mirror.example.com".header]
    x-custom-2 = ["value1", "value2"]
    Authorization-Hint = "a"
""",
    )
    mirror, upstream = load_hosts(str(tmp_path), "example.com")
    assert mirror.headers == (
        ("x-custom-2", "value1"),
        ("x-custom-2", "value2"),
        ("Authorization-Hint", "a"),
    )
    assert upstream.headers == (("x-custom-1", "custom header"),)


def test_dial_timeout_and_proxy(tmp_path: Path) -> None:
    write(
        tmp_path,
        "example.com",
        """
proxy = "http://proxy.local:3128"

[host."https://mirror.example.com"]
  dial_timeout = "1m30.5s"
[host."https://m2.example.com"]
  dial_timeout = "250ms"
""",
    )
    m1, m2, upstream = load_hosts(str(tmp_path), "example.com")
    assert m1.dial_timeout == 90.5 and m1.proxy is None
    assert m2.dial_timeout == pytest.approx(0.25)
    assert upstream.proxy == "http://proxy.local:3128" and upstream.dial_timeout is None


def test_http_host_with_tls_settings_tries_https_first(tmp_path: Path) -> None:
    # containerd: TLS settings on an http:// host with an ambiguous port mean
    # "https, falling back to http"; on port 80 http is unambiguous.
    write(
        tmp_path,
        "docker.io",
        """
[host."http://192.168.31.250:5000"]
  skip_verify = true
[host."http://plain.example.com:80"]
  skip_verify = true
""",
    )
    tls, plain, _ = load_hosts(str(tmp_path), "docker.io")
    assert tls.url == "https://192.168.31.250:5000" and tls.allow_http_fallback
    assert plain.url == "http://plain.example.com:80" and not plain.allow_http_fallback


def test_docker_certs_d_layout_without_hosts_toml(tmp_path: Path) -> None:
    d = tmp_path / "registry.example.com:5000"
    d.mkdir()
    for name in ("ca.crt", "client.cert", "client.key", "lone.cert", "notes.txt"):
        (d / name).write_text("x")
    (ep,) = load_hosts(str(tmp_path), "registry.example.com:5000")
    assert ep.url == "https://registry.example.com:5000"
    assert ep.ca_files == (f"{d}/ca.crt",)
    assert ep.client_certs == ((f"{d}/client.cert", f"{d}/client.key"), (f"{d}/lone.cert", None))


# -- TLS contexts ---------------------------------------------------------------------


def _self_signed(d: Path) -> tuple[Path, Path]:
    cert, key = d / "client.crt", d / "client.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=crispy-test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path]:
    try:
        return _self_signed(tmp_path)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("openssl is not available")


def test_ssl_context_honours_the_settings(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    cert, key = certs
    write(
        tmp_path,
        "example.com",
        f"""
server = "https://example.com"
ca = "{cert}"
client = [["{cert}", "{key}"]]

[host."https://insecure.example.com"]
  skip_verify = true
""",
    )
    insecure, upstream = load_hosts(str(tmp_path), "example.com")
    ctx = upstream.ssl_context()
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    subjects = [c.get("subject") for c in ctx.get_ca_certs()]
    assert ((("commonName", "crispy-test"),),) in subjects
    assert upstream.ssl_context() is ctx  # cached

    lax = insecure.ssl_context()
    assert isinstance(lax, ssl.SSLContext)
    assert lax.verify_mode == ssl.CERT_NONE and not lax.check_hostname

    # A renewed CA file is picked up: the cache key holds the file's stamp.
    _self_signed(tmp_path)  # rewrites the same two files
    os.utime(cert, ns=(1, 1))
    assert upstream.ssl_context() is not ctx


def test_ssl_context_error_names_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "example.com", 'ca = "missing.pem"\n')
    (ep,) = load_hosts(str(tmp_path), "example.com")
    with pytest.raises(HostsConfigError) as exc:
        ep.ssl_context()
    assert str(path) in str(exc.value) and "ca" in str(exc.value)
    assert "missing.pem" in str(exc.value)

    bad = tmp_path / "example.com" / "bad.pem"
    bad.write_text("not a certificate")
    path.write_text(f'client = "{bad}"\n')
    (ep,) = load_hosts(str(tmp_path), "example.com")
    with pytest.raises(HostsConfigError, match="client"):
        ep.ssl_context()


# -- errors and caching -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fld"),
    [
        ("server = 5", "server"),
        ('server = "ftp://x"', "server"),
        ('server = "https://user:pw@x"', "server"),
        ('server = "https://x:port"', "server"),
        ('capabilities = "pull"', "capabilities"),
        ('capabilities = ["pull", "fetch"]', "capabilities[1]"),
        ('capabilities = ["pull", 1]', "capabilities[1]"),
        ('skip_verify = "yes"', "skip_verify"),
        ("override_path = 1", "override_path"),
        ("ca = 1", "ca"),
        ('ca = ["a", 2]', "ca[1]"),
        ("client = 1", "client"),
        ('client = [["a", "b", "c"]]', "client[0]"),
        ('header = "x"', "header"),
        ('[header]\n"bad name" = "x"', "header.bad name"),
        ("[header]\nx = 1", "header.x"),
        ('[header]\nx = "a\\r\\nInjected: 1"', "header.x"),
        ('dial_timeout = "soon"', "dial_timeout"),
        ('proxy = "socks5://p:1080"', "proxy"),
        ("skip_verfy = true", "skip_verfy"),
        ('host = "x"', "host"),
        ('[host."https://m"]\nskip_verify = "no"', 'host."https://m".skip_verify'),
        ('[host."https://m"]\nserver = "https://x"', 'host."https://m".server'),
        ('[host."https://m".host."https://n"]', 'host."https://m".host'),
        ('[host."gopher://m"]', 'host."gopher://m"'),
        ('[host."https://m"]\ncapabilities = ["pull", "x"]', 'host."https://m".capabilities[1]'),
    ],
)
def test_bad_fields_name_file_and_field(tmp_path: Path, text: str, fld: str) -> None:
    path = write(tmp_path, "example.com", text + "\n")
    with pytest.raises(HostsConfigError) as exc:
        load_hosts(str(tmp_path), "example.com")
    msg = str(exc.value)
    assert msg.startswith(f"{path}: {fld}: "), msg
    assert exc.value.path == str(path) and exc.value.field == fld
    assert isinstance(exc.value, InvalidArgument)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "docker.io", '[host."http://x"\ncapabilities = ["pull"]\n')
    with pytest.raises(HostsConfigError) as exc:
        load_hosts(str(tmp_path), "docker.io")
    assert str(path) in str(exc.value) and "TOML" in str(exc.value)

    (tmp_path / "docker.io" / "hosts.toml").write_bytes(b'server = "\xff"\n')
    with pytest.raises(HostsConfigError, match="UTF-8"):
        load_hosts(str(tmp_path), "docker.io")


def test_parsed_files_are_cached_until_edited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "docker.io", '[host."http://127.0.0.1:5001"]\n')
    assert urls(load_hosts(str(tmp_path), "docker.io"))[0] == "http://127.0.0.1:5001"

    import crispy.images.hosts as hosts

    reads: list[str] = []
    real = hosts._parse_file

    def counting(p: str, data: bytes) -> object:
        reads.append(p)
        return real(p, data)

    monkeypatch.setattr(hosts, "_parse_file", counting)
    for _ in range(3):
        load_hosts(str(tmp_path), "docker.io")
    assert reads == []

    path.write_text('[host."http://127.0.0.1:5002"]\n')
    os.utime(path, ns=(10**18, 10**18))  # a distinct mtime even on coarse clocks
    assert urls(load_hosts(str(tmp_path), "docker.io"))[0] == "http://127.0.0.1:5002"
    assert reads == [str(path)]
