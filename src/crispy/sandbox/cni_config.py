"""Finding the pod network's CNI configuration, as libcni does.

The first file in the conf dir (sorted by name) ending in .conflist, .conf or
.json that parses as a network config is the pod network. The network is ready
when every plugin it chains has its binary in one of the bin dirs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

CONF_EXTENSIONS = (".conf", ".conflist", ".json")


@dataclass
class NetworkConfig:
    name: str
    cni_version: str
    path: str
    plugins: list[dict[str, Any]] = field(default_factory=list)
    # The config as conflist JSON bytes (a .conf wrapped in a list of one), as libcni
    # caches it: what a later DEL must run with even if the file changed since.
    raw: bytes = field(default=b"", repr=False)

    @property
    def plugin_types(self) -> list[str]:
        return [str(p.get("type", "")) for p in self.plugins]


@dataclass
class NetworkStatus:
    ready: bool
    reason: str = ""
    message: str = ""
    config: NetworkConfig | None = None


class CNIConfigError(ValueError):
    pass


def parse(path: str, data: bytes, conflist: bool | None = None) -> NetworkConfig:
    """Parse a network config; it is a list when `conflist` says so, else by the file name."""
    if conflist is None:
        conflist = path.endswith(".conflist")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise CNIConfigError(f"{path}: not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CNIConfigError(f"{path}: not a JSON object")
    if conflist:
        plugins = doc.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise CNIConfigError(f"{path}: a .conflist needs a non-empty 'plugins' list")
    else:
        plugins = [doc]  # a single-plugin .conf is a list of one
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise CNIConfigError(f"{path}: missing network 'name'")
    for i, p in enumerate(plugins):
        if not isinstance(p, dict) or not isinstance(p.get("type"), str) or not p["type"]:
            raise CNIConfigError(f"{path}: plugin {i} has no 'type'")
    version = str(doc.get("cniVersion", ""))
    if not conflist:
        data = json.dumps({"cniVersion": version, "name": name, "plugins": plugins}).encode()
    return NetworkConfig(name=name, cni_version=version, path=path, plugins=plugins, raw=data)


def find_plugin(plugin_type: str, bin_dirs: list[str]) -> str | None:
    if "/" in plugin_type:  # a type is a file name; never a path out of the bin dirs
        return None
    for d in bin_dirs:
        candidate = os.path.join(d, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _first_config(conf_dir: str) -> tuple[NetworkConfig | None, list[str]]:
    """The first config that parses, and why the ones before it did not."""
    try:
        names = sorted(n for n in os.listdir(conf_dir) if n.endswith(CONF_EXTENSIONS))
    except OSError:
        names = []
    errors = []
    for n in names:
        path = os.path.join(conf_dir, n)
        try:
            with open(path, "rb") as f:
                config = parse(path, f.read())
        except (OSError, CNIConfigError) as e:
            errors.append(str(e))
            continue
        return config, errors
    return None, errors


def load_network(conf_dir: str) -> NetworkConfig | None:
    """The pod network's config as it is now, or None when there is none."""
    return _first_config(conf_dir)[0]


def network_status(conf_dir: str, bin_dirs: list[str]) -> NetworkStatus:
    """NetworkReady as kubelet reads it: a loadable config whose plugins exist."""
    config, errors = _first_config(conf_dir)
    if config is not None:
        missing = [t for t in config.plugin_types if find_plugin(t, bin_dirs) is None]
        if missing:
            return NetworkStatus(
                ready=False,
                reason="NetworkPluginNotReady",
                message=(
                    f"cni plugin {', '.join(missing)} of network {config.name!r} not found "
                    f"in {', '.join(bin_dirs)}"
                ),
                config=config,
            )
        return NetworkStatus(ready=True, config=config)
    message = f"cni plugin not initialized: no network config found in {conf_dir}"
    if errors:
        message += f" ({'; '.join(errors)})"
    return NetworkStatus(ready=False, reason="NetworkPluginNotReady", message=message)
