"""crispyd's configuration: TOML file, defaults for every key, strict validation.

Precedence: built-in defaults < config file < command-line flags. Every key is
documented in the README; an unknown key or a value of the wrong type or range
stops startup with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import shutil
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = "/etc/crispy/config.toml"
DEFAULT_ROOT = "/var/lib/crispy"
DEFAULT_STATE = "/run/crispy"
DEFAULT_ENDPOINT = "unix:///run/crispy/crispy.sock"
LOG_LEVELS = ("debug", "info", "warning", "error")

# Handlers crispy configures by itself where their binary is installed.
BUILTIN_RUNTIMES = ("runc", "crun", "runsc")


class ConfigError(Exception):
    """A config file or flag that crispyd can't start with; the message names the key."""


@dataclass
class RuntimeHandlerConfig:
    # Binary name (looked up in PATH) or absolute path of an OCI runtime.
    path: str = ""
    # The runtime's --root state dir; empty means <state>/<handler name>.
    root: str = ""
    # Start every pod with a sandbox ("pause") container its containers join, as VM-based
    # runtimes need. Off for runsc: each container is then its own gVisor sandbox.
    sandbox_container: bool = False
    # Extra global flags, placed after --root (e.g. runsc's --network, --platform).
    options: list[str] = field(default_factory=list)
    # Run the runtime itself inside the pod's network namespace: gVisor keeps its control
    # socket there and, with --network=host, builds its network from the namespace it
    # starts in. On for the built-in runsc handler; set it for a handler of your own
    # that runs runsc.
    in_pod_netns: bool = False


@dataclass
class CNIConfig:
    conf_dir: str = "/etc/cni/net.d"
    bin_dirs: list[str] = field(default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"])


@dataclass
class RegistryConfig:
    # containerd hosts.toml layout: <hosts_dir>/<host[:port]>/hosts.toml
    hosts_dir: str = "/etc/crispy/certs.d"


@dataclass
class ImagesConfig:
    # overlayfs, native (copies; for filesystems overlay can't sit on), or auto.
    snapshotter: str = "overlayfs"
    max_concurrent_downloads: int = 3
    # Bytes one layer may unpack to (files' apparent sizes); a decompression bomb stops
    # there. 0: no limit.
    max_unpacked_layer_size: int = 64 << 30


@dataclass
class StreamingConfig:
    address: str = "127.0.0.1"
    # 0 picks a free port at start, as containerd's stream_server_port = "0".
    port: int = 0
    # Serve https with this certificate chain and key (PEM); both or neither.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Seconds a streaming session may move no byte before it is closed; 0: never.
    idle_timeout: float = 4 * 3600.0


@dataclass
class MetricsConfig:
    # host:port of the Prometheus /metrics endpoint; empty serves none. ":9433" listens on
    # every interface; port 0 picks a free one (logged at start).
    address: str = ""


@dataclass
class Config:
    root: str = DEFAULT_ROOT
    state: str = DEFAULT_STATE
    listen: str = DEFAULT_ENDPOINT
    log_level: str = "info"
    sandbox_image: str = "registry.k8s.io/pause:3.10"
    default_runtime: str = "runc"
    runtimes: dict[str, RuntimeHandlerConfig] = field(default_factory=dict)
    cni: CNIConfig = field(default_factory=CNIConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @property
    def socket_path(self) -> str:
        return endpoint_path(self.listen)

    @property
    def db_path(self) -> str:
        return str(Path(self.root) / "crispy.db")

    def runtime_root(self, name: str) -> str:
        return self.runtimes[name].root

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def endpoint_path(endpoint: str) -> str:
    """`unix:///run/x.sock` or `/run/x.sock` -> `/run/x.sock`."""
    if endpoint.startswith("unix://"):
        return endpoint[len("unix://") :]
    return endpoint


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` -> (host, port); host "" means every interface.

    Raises ValueError saying what is wrong.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"must be host:port or :port, got {address!r}")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"port must be 0..65535, got {port_text!r} in {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address, in {address!r}") from None
    elif ":" in host:
        raise ValueError(f"an IPv6 host goes in brackets ([::1]:9433), got {address!r}")
    elif host and not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or address, in {address!r}")
    return host, int(port_text)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "table"
    if dataclasses.is_dataclass(tp):
        return "table"
    return {str: "string", int: "integer", bool: "boolean"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; build dataclasses from tables."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__}")
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__}")
        return {k: _convert(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    # bool is an int subclass: reject `port = true` and `flag = 1` alike.
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp in (str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected a {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, table: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"unknown key {full!r}")
        kwargs[key] = _convert(value, hints[key], full)
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    for key in ("root", "state"):
        if not Path(getattr(cfg, key)).is_absolute():
            raise ConfigError(f"{key}: must be an absolute path, got {getattr(cfg, key)!r}")
    sock = cfg.socket_path
    if not cfg.listen.startswith("unix://") and not cfg.listen.startswith("/"):
        raise ConfigError(f"listen: must be unix:///path or /path, got {cfg.listen!r}")
    if not sock.startswith("/") or sock.endswith("/"):
        raise ConfigError(f"listen: not an absolute socket path: {cfg.listen!r}")
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(
            f"log_level: must be one of {', '.join(LOG_LEVELS)}, got {cfg.log_level!r}"
        )
    if not cfg.sandbox_image.strip():
        raise ConfigError("sandbox_image: must not be empty")
    if not 0 <= cfg.streaming.port <= 65535:
        raise ConfigError(f"streaming.port: must be 0..65535, got {cfg.streaming.port}")
    if cfg.images.snapshotter not in ("overlayfs", "native", "auto"):
        raise ConfigError(
            f"images.snapshotter: must be overlayfs, native or auto, got {cfg.images.snapshotter!r}"
        )
    if not 1 <= cfg.images.max_concurrent_downloads <= 32:
        raise ConfigError(
            "images.max_concurrent_downloads: must be 1..32, got "
            f"{cfg.images.max_concurrent_downloads}"
        )
    if cfg.images.max_unpacked_layer_size < 0:
        raise ConfigError(
            "images.max_unpacked_layer_size: must be >= 0 bytes (0: no limit), got "
            f"{cfg.images.max_unpacked_layer_size}"
        )
    if not cfg.streaming.address:
        raise ConfigError("streaming.address: must not be empty")
    if cfg.streaming.idle_timeout < 0:
        raise ConfigError("streaming.idle_timeout: must be >= 0 seconds (0: never)")
    if bool(cfg.streaming.tls_cert_file) != bool(cfg.streaming.tls_key_file):
        raise ConfigError("streaming: tls_cert_file and tls_key_file go together")
    if cfg.metrics.address:
        try:
            split_host_port(cfg.metrics.address)
        except ValueError as e:
            raise ConfigError(f"metrics.address: {e}") from None
    for key, value in (
        ("cni.conf_dir", cfg.cni.conf_dir),
        ("registry.hosts_dir", cfg.registry.hosts_dir),
    ):
        if not Path(value).is_absolute():
            raise ConfigError(f"{key}: must be an absolute path, got {value!r}")
    for i, d in enumerate(cfg.cni.bin_dirs):
        if not Path(d).is_absolute():
            raise ConfigError(f"cni.bin_dirs[{i}]: must be an absolute path, got {d!r}")
    for name, handler in cfg.runtimes.items():
        key = f"runtimes.{name}"
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ConfigError(f"{key}: handler names may hold letters, digits, '-', '_', '.'")
        if not handler.path:
            raise ConfigError(f"{key}.path: must name the runtime binary")
        if shutil.which(handler.path) is None:
            raise ConfigError(f"{key}.path: runtime binary {handler.path!r} not found")
        if handler.root and not Path(handler.root).is_absolute():
            raise ConfigError(f"{key}.root: must be an absolute path, got {handler.root!r}")
    if cfg.default_runtime not in cfg.runtimes:
        known = ", ".join(sorted(cfg.runtimes)) or "none"
        raise ConfigError(
            f"default_runtime: handler {cfg.default_runtime!r} is not configured "
            f"(configured: {known})"
        )


# runsc's own netstack needs it to tell the root network namespace from a pod's, which
# Debian's runsc (2022-12) does by a sysctl file that kernels >= 6.x show in every
# namespace; gVisor then uses the pod namespace's kernel stack instead.
BUILTIN_OPTIONS = {"runsc": ["--network=host"]}
BUILTIN_IN_POD_NETNS = {"runsc"}


def _builtin_runtimes() -> dict[str, RuntimeHandlerConfig]:
    return {
        name: RuntimeHandlerConfig(
            path=name,
            options=list(BUILTIN_OPTIONS.get(name, [])),
            in_pod_netns=name in BUILTIN_IN_POD_NETNS,
        )
        for name in BUILTIN_RUNTIMES
        if shutil.which(name) is not None
    }


def load(path: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the config file (the default one only if it exists) and apply flag overrides."""
    table: dict[str, Any] = {}
    if path is None and Path(DEFAULT_CONFIG_PATH).exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None
        except OSError as e:
            raise ConfigError(f"config file {path}: {e.strerror}") from None
    return from_table(table, overrides, source=path)


def from_table(
    table: dict[str, Any],
    overrides: dict[str, Any] | None = None,
    source: str | None = None,
) -> Config:
    """Build and validate a Config from a parsed TOML table plus flag overrides."""
    where = f"config file {source}: " if source else ""
    try:
        user_runtimes = table.get("runtimes", {})
        cfg = _build(Config, {k: v for k, v in table.items() if k != "runtimes"}, "")
        runtimes = _builtin_runtimes()
        runtimes.update(_convert(user_runtimes, dict[str, RuntimeHandlerConfig], "runtimes"))
        cfg.runtimes = runtimes
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None
    hints = typing.get_type_hints(Config)
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(cfg, key, _convert(value, hints[key], f"--{key.replace('_', '-')}"))
    for name, handler in cfg.runtimes.items():
        handler.root = handler.root or str(Path(cfg.state) / name)
    try:
        _validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None
    return cfg


__all__ = [
    "Config",
    "ConfigError",
    "MetricsConfig",
    "RuntimeHandlerConfig",
    "endpoint_path",
    "from_table",
    "load",
    "split_host_port",
]
