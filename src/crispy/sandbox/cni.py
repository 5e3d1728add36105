"""The CNI driver: attaches a pod's network namespace to the pod network and detaches it.

Plugins run as the CNI spec says: the command, container, netns, ifname and args in
the environment, the plugin's config on stdin with the network's name and cniVersion,
the previous plugin's result (`prevResult`) and the capability args the plugin declares
(`runtimeConfig`) injected; a failure is a non-zero exit with a JSON error on stdout.

Every attachment is cached in libcni's format (cniCacheV1) before its ADD starts and
again with the result, so DEL runs with the config, args and result of the ADD: after
the conf dir changed, after crispyd restarted, and after a crash in the middle of ADD.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import math
import os
import re
import signal
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from crispy.sandbox import cni_config
from crispy.sandbox.cni_config import CNIConfigError, NetworkConfig
from crispy.system.atomic import write_atomic

log = logging.getLogger(__name__)

CACHE_KIND = "cniCacheV1"
POD_ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"
INGRESS_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_ANNOTATION = "kubernetes.io/egress-bandwidth"
# Kubernetes gives no burst; the largest int32 (kubenet's choice) means "no burst limit".
MAX_BURST = 2147483647
# kubelet's bounds for the bandwidth annotations (pkg/util/bandwidth).
MIN_BANDWIDTH, MAX_BANDWIDTH = 1000, 10**15
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# CNI spec: a network name starts alphanumeric, then alphanumerics, '_', '.', '-'.
NETWORK_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
KILL_GRACE = 5.0


@dataclass
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"  # tcp, udp or sctp, lower case
    host_ip: str = ""


@dataclass
class PodNetwork:
    """What to attach: the pod's netns and the facts the plugins are told about the pod."""

    pod_id: str  # CNI_CONTAINERID
    netns: str  # CNI_NETNS: a pinned netns file; may be gone by teardown
    name: str
    namespace: str
    uid: str
    ifname: str = "eth0"
    port_mappings: list[PortMapping] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""


@dataclass
class NetworkResult:
    ips: list[str]  # plain addresses, IPv4 first
    result: dict[str, Any]  # the final CNI result


class CNIError(Exception):
    """A network could not be attached, checked or detached; the message says where."""


# Kubernetes resource quantities: a decimal number, then a binary or SI suffix or an exponent.
_QUANTITY = re.compile(
    r"([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?"
)
_SUFFIX = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}


def parse_quantity(text: str) -> int:
    """A Kubernetes quantity ("10M", "1Gi", "1.5k", "1e6") as an integer, rounded up."""
    m = _QUANTITY.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a quantity")
    sign, number, exponent, suffix = m.groups()
    value = Fraction(number)
    if exponent is not None:
        value *= Fraction(10) ** int(exponent)
    elif suffix:
        value *= _SUFFIX[suffix]
    return -math.ceil(value) if sign == "-" else math.ceil(value)


def bandwidth_args(annotations: dict[str, str]) -> dict[str, int] | None:
    """The `bandwidth` capability from the pod's annotations (bits per second), if any."""
    out: dict[str, int] = {}
    for annotation, key in ((INGRESS_ANNOTATION, "ingress"), (EGRESS_ANNOTATION, "egress")):
        if annotation not in annotations:
            continue
        text = annotations[annotation]
        try:
            rate = parse_quantity(text)
        except ValueError:
            raise CNIError(f"annotation {annotation}: {text!r} is not a quantity") from None
        if not MIN_BANDWIDTH <= rate <= MAX_BANDWIDTH:
            raise CNIError(
                f"annotation {annotation}: {text!r} is out of range (1k to 1P bits per second)"
            )
        out[f"{key}Rate"] = rate
        out[f"{key}Burst"] = MAX_BURST
    return out or None


def capability_args(net: PodNetwork) -> dict[str, Any]:
    """Every capability arg crispy offers; each plugin gets those it declares."""
    caps: dict[str, Any] = {
        # A host port of 0 asks for no mapping (kubelet and containerd drop them too).
        "portMappings": [
            {
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": p.protocol.lower(),
                **({"hostIP": p.host_ip} if p.host_ip else {}),
            }
            for p in net.port_mappings
            if p.host_port > 0
        ],
        POD_ANNOTATIONS_CAPABILITY: dict(net.annotations),
    }
    bandwidth = bandwidth_args(net.annotations)
    if bandwidth:
        caps["bandwidth"] = bandwidth
    if net.cgroup_parent:
        caps["cgroupPath"] = net.cgroup_parent
    return caps


def cni_args(net: PodNetwork) -> list[list[str]]:
    return [
        ["IgnoreUnknown", "1"],
        ["K8S_POD_NAMESPACE", net.namespace],
        ["K8S_POD_NAME", net.name],
        ["K8S_POD_INFRA_CONTAINER_ID", net.pod_id],
        ["K8S_POD_UID", net.uid],
    ]


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0, 1, 0)  # no or bad cniVersion: the spec's oldest


def result_ips(result: dict[str, Any], ifname: str) -> list[str]:
    """The pod's addresses from a result: those on `ifname` if any are, IPv4 first."""
    found: list[tuple[str, bool]] = []
    ips = result.get("ips")
    if isinstance(ips, list):  # CNI >= 0.3.0
        ifaces = result.get("interfaces")
        ifaces = ifaces if isinstance(ifaces, list) else []
        for ip in ips:
            if not isinstance(ip, dict) or not isinstance(ip.get("address"), str):
                continue
            idx = ip.get("interface")
            on_if = (
                isinstance(idx, int)
                and 0 <= idx < len(ifaces)
                and isinstance(ifaces[idx], dict)
                and ifaces[idx].get("name") == ifname
            )
            found.append((ip["address"], on_if))
    else:  # CNI 0.1/0.2: ip4 and ip6
        for key in ("ip4", "ip6"):
            v = result.get(key)
            if isinstance(v, dict) and isinstance(v.get("ip"), str):
                found.append((v["ip"], True))
    if any(on_if for _, on_if in found):
        found = [f for f in found if f[1]]
    addrs = []
    for a, _ in found:
        with contextlib.suppress(ValueError):
            addrs.append(ipaddress.ip_address(a.split("/")[0]))
    addrs.sort(key=lambda a: a.version)  # stable: the plugin's order within a family
    return [str(a) for a in addrs]


def _is_netns(path: str) -> bool:
    """Whether `path` is a live network namespace: an nsfs inode, not the empty file a
    pin leaves behind once unmounted (plugins fail on that, but skip CNI_NETNS="")."""
    try:
        return bool(path) and os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def _write_cache_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_atomic(path, data, mode=0o600)


@dataclass
class _Attachment:
    """One network on one pod interface: what each plugin call of a chain runs with."""

    config: NetworkConfig
    container_id: str
    ifname: str
    netns: str
    args: list[list[str]]
    caps: dict[str, Any]
    result: dict[str, Any] | None = None

    @property
    def version(self) -> tuple[int, ...]:
        return version_tuple(self.config.cni_version)

    def cache_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "kind": CACHE_KIND,
            "containerId": self.container_id,
            "config": base64.b64encode(self.config.raw).decode(),
            "ifName": self.ifname,
            "networkName": self.config.name,
            "cniArgs": self.args,
            "capabilityArgs": self.caps,
        }
        if self.result is not None:
            entry["result"] = self.result
        return entry


class CNI:
    def __init__(
        self, conf_dir: str, bin_dirs: list[str], cache_dir: str, timeout: float = 60.0
    ) -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = list(bin_dirs)
        self.cache_dir = cache_dir
        self.timeout = timeout

    async def setup(self, net: PodNetwork) -> NetworkResult:
        """ADD the pod to the current network; on failure, undo what was done and raise."""
        config = cni_config.load_network(self.conf_dir)
        if config is None:
            raise CNIError(f"no network config found in {self.conf_dir}")
        if not NETWORK_NAME.fullmatch(config.name):
            raise CNIError(f"{config.path}: invalid network name {config.name!r}")
        for t in config.plugin_types:  # before any ADD, so a missing one leaves nothing behind
            self._plugin_path(config, t, "ADD")
        att = _Attachment(
            config, net.pod_id, net.ifname, net.netns, cni_args(net), capability_args(net)
        )
        path = self._cache_path(config.name, net.pod_id, net.ifname)
        try:
            await self._write_cache(path, att)
        except OSError as e:
            raise CNIError(f"writing the CNI result cache {path}: {e}") from e
        # A cancelled ADD leaves the cache behind: teardown then DELs with the right config.
        prev: dict[str, Any] | None = None
        try:
            for plugin in config.plugins:
                prev = await self._exec("ADD", att, plugin, prev)
            att.result = prev or {}
            await self._write_cache(path, att)
        except (CNIError, OSError) as e:
            att.result = prev  # what the chain got to: DEL's best prevResult
            try:
                await self._del_chain(att)
                os.unlink(path)
            except (CNIError, OSError) as undo:
                # The cache stays, so the pod's teardown retries DEL with this config.
                log.warning("undoing the failed ADD of pod %s: %s", net.pod_id, undo)
            if isinstance(e, OSError):
                raise CNIError(f"writing the CNI result cache {path}: {e}") from e
            raise
        return NetworkResult(result_ips(att.result, net.ifname), att.result)

    async def check(self, net: PodNetwork) -> None:
        """CHECK the cached attachment; CNI < 0.4.0 has no CHECK."""
        found = self._load_caches(net.pod_id, net.ifname)
        for _, att in found:
            if att is None or att.result is None or att.version < (0, 4, 0):
                continue
            att.netns = net.netns
            for plugin in att.config.plugins:
                await self._exec("CHECK", att, plugin, att.result)

    async def teardown(self, net: PodNetwork) -> None:
        """DEL the pod from the network it was added to (the cached one, else the current one)."""
        netns = net.netns if _is_netns(net.netns) else ""
        found = self._load_caches(net.pod_id, net.ifname)
        atts = [att for _, att in found if att is not None]
        if not atts:
            config = cni_config.load_network(self.conf_dir)
            if config is None:
                log.warning("no cached or current network to detach pod %s from", net.pod_id)
            else:  # plugins tolerate DEL of what they never added
                atts = [
                    _Attachment(
                        config, net.pod_id, net.ifname, "", cni_args(net), capability_args(net)
                    )
                ]
        for att in atts:
            att.netns = netns
            await self._del_chain(att)
        for path, _ in found:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def cached(self, pod_id: str, ifname: str = "eth0") -> dict[str, Any] | None:
        """The cache entry of the pod's attachment, for status and verbose info."""
        for path in self._cache_files(pod_id, ifname):
            with contextlib.suppress(OSError, ValueError):
                with open(path, "rb") as f:
                    entry = json.load(f)
                if isinstance(entry, dict):
                    return entry
        return None

    async def _del_chain(self, att: _Attachment) -> None:
        # Stops at the first failure, as libcni does: a later plugin's DEL (bridge's IP
        # release) must not run while an earlier one (portmap's DNAT to that IP) remains.
        prev = att.result if att.version >= (0, 4, 0) and att.result else None
        for plugin in reversed(att.config.plugins):
            await self._exec("DEL", att, plugin, prev)

    def _plugin_path(self, config: NetworkConfig, plugin_type: str, command: str) -> str:
        path = cni_config.find_plugin(plugin_type, self.bin_dirs)
        if path is None:
            raise CNIError(
                f'plugin type="{plugin_type}" name="{config.name}" failed ({command.lower()}): '
                f"plugin binary not found in {':'.join(self.bin_dirs)}"
            )
        return path

    async def _exec(
        self,
        command: str,
        att: _Attachment,
        plugin: dict[str, Any],
        prev: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Run one plugin; the result for ADD, None for CHECK and DEL."""
        config = att.config
        ptype = str(plugin.get("type", ""))
        where = f'plugin type="{ptype}" name="{config.name}" failed ({command.lower()})'
        path = self._plugin_path(config, ptype, command)
        conf = dict(plugin)
        conf["name"] = config.name
        conf["cniVersion"] = config.cni_version
        if prev is not None:
            conf["prevResult"] = prev
        declared = plugin.get("capabilities")
        if isinstance(declared, dict):
            runtime = {k: v for k, v in att.caps.items() if declared.get(k) is True}
            if runtime:
                conf["runtimeConfig"] = runtime
        env = {
            "PATH": os.environ.get("PATH") or DEFAULT_PATH,  # plugins exec iptables, ip, tc
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": att.container_id,
            "CNI_NETNS": att.netns,
            "CNI_IFNAME": att.ifname,
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in att.args),
            "CNI_PATH": ":".join(self.bin_dirs),
        }
        start = time.monotonic()
        # Its own session, so a timeout kills the plugin and whatever it started.
        try:
            proc = await asyncio.create_subprocess_exec(
                path,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            raise CNIError(f"{where}: {e}") from e
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(json.dumps(conf).encode()), self.timeout
            )
        except TimeoutError:
            await _kill(proc)
            raise CNIError(f"{where}: timed out after {self.timeout:g}s") from None
        except asyncio.CancelledError:
            await _kill(proc)
            raise
        log.debug(
            "cni %s %s/%s for %s: exit %s in %.3fs",
            command,
            config.name,
            ptype,
            att.container_id[:12],
            proc.returncode,
            time.monotonic() - start,
        )
        if proc.returncode != 0:
            raise CNIError(f"{where}: {_plugin_error(out, err, proc.returncode)}")
        if err.strip():
            log.debug("cni %s %s/%s stderr: %s", command, config.name, ptype, err.decode())
        if command != "ADD":
            return None
        try:
            result = json.loads(out)
        except ValueError:
            result = None
        if not isinstance(result, dict):
            raise CNIError(f"{where}: invalid result {out[:200]!r}")
        return result

    def _cache_path(self, network: str, pod_id: str, ifname: str) -> str:
        return os.path.join(self.cache_dir, f"{network}-{pod_id}-{ifname}")

    def _cache_files(self, pod_id: str, ifname: str) -> list[str]:
        # The network name may have changed since the ADD; the pod id and ifname have not.
        suffix = f"-{pod_id}-{ifname}"
        try:
            names = os.listdir(self.cache_dir)
        except OSError:
            return []
        return [
            os.path.join(self.cache_dir, n)
            for n in sorted(names)
            if n.endswith(suffix) and len(n) > len(suffix) and not n.startswith(".")
        ]

    def _load_caches(self, pod_id: str, ifname: str) -> list[tuple[str, _Attachment | None]]:
        """Each cache file of the attachment, with None for one that cannot be read."""
        out: list[tuple[str, _Attachment | None]] = []
        for path in self._cache_files(pod_id, ifname):
            try:
                with open(path, "rb") as f:
                    entry = json.load(f)
                if not isinstance(entry, dict) or entry.get("kind") != CACHE_KIND:
                    raise ValueError(f"not a {CACHE_KIND} entry")
                raw = base64.b64decode(entry["config"])
                config = cni_config.parse(path, raw, conflist=True)
                result = entry.get("result")
                att = _Attachment(
                    config,
                    str(entry.get("containerId") or pod_id),
                    str(entry.get("ifName") or ifname),
                    "",
                    [[str(k), str(v)] for k, v in entry.get("cniArgs") or []],
                    dict(entry.get("capabilityArgs") or {}),
                    result if isinstance(result, dict) else None,
                )
            except (OSError, ValueError, KeyError, TypeError, CNIConfigError) as e:
                log.warning("ignoring unreadable CNI cache %s: %s", path, e)
                out.append((path, None))
                continue
            out.append((path, att))
        return out

    async def _write_cache(self, path: str, att: _Attachment) -> None:
        data = json.dumps(att.cache_entry()).encode()
        await asyncio.to_thread(_write_cache_file, path, data)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    # Bounded: a grandchild that left the session could hold the pipes open.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), KILL_GRACE)


def _plugin_error(out: bytes, err: bytes, code: int | None) -> str:
    """The plugin's {code, msg, details} error, else whatever it wrote."""
    try:
        doc = json.loads(out)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("msg"):
        msg = str(doc["msg"])
        if doc.get("details"):
            msg += f": {doc['details']}"
        return msg
    text = (err or out).decode(errors="replace").strip()
    return text[:2000] or f"exit status {code}"
