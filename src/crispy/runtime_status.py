"""Daemon-wide facts the CRI reports: version, readiness conditions, handlers,
cgroup driver, and the pod CIDR kubelet hands down with UpdateRuntimeConfig."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from crispy import CRI_API_VERSION, CRI_VERSION, RUNTIME_NAME, __version__
from crispy.config import Config
from crispy.errors import InvalidArgument
from crispy.oci.runtime import OciRuntime
from crispy.sandbox.cni_config import NetworkStatus, network_status
from crispy.store import Store
from crispy.system import cgroups

POD_CIDR_KEY = "pod_cidr"


@dataclass
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


class RuntimeInfo:
    def __init__(self, cfg: Config, store: Store, handlers: dict[str, OciRuntime]) -> None:
        self.cfg = cfg
        self.store = store
        self.handlers = handlers

    @staticmethod
    def version() -> dict[str, str]:
        return {
            "version": CRI_VERSION,
            "runtime_name": RUNTIME_NAME,
            "runtime_version": __version__,
            "runtime_api_version": CRI_API_VERSION,
        }

    def network(self) -> NetworkStatus:
        """The pod network's state, read afresh: CNI configs come and go at run time."""
        return network_status(self.cfg.cni.conf_dir, self.cfg.cni.bin_dirs)

    def conditions(self, net: NetworkStatus) -> list[Condition]:
        runtime = Condition("RuntimeReady", True)
        if self.cfg.default_runtime not in self.handlers:
            runtime = Condition(
                "RuntimeReady",
                False,
                "NoDefaultRuntime",
                f"default runtime handler {self.cfg.default_runtime!r} is not available",
            )
        network = Condition("NetworkReady", net.ready, net.reason, net.message)
        return [runtime, network]

    def cgroup_driver(self) -> str:
        return cgroups.cgroup_driver()

    @property
    def pod_cidr(self) -> str:
        return self.store.get_meta(POD_CIDR_KEY) or ""

    def update_pod_cidr(self, cidr: str) -> None:
        """Remember kubelet's pod CIDR (one, or a dual-stack pair, comma-separated)."""
        cidr = cidr.strip()
        if not cidr:
            return  # kubelet sends an empty CIDR when it has none; keep what we have
        for part in cidr.split(","):
            try:
                ipaddress.ip_network(part.strip(), strict=False)
            except ValueError:
                raise InvalidArgument(f"invalid pod CIDR {part.strip()!r}") from None
        self.store.set_meta(POD_CIDR_KEY, ",".join(p.strip() for p in cidr.split(",")))

    def verbose_info(self, net: NetworkStatus) -> dict[str, str]:
        """Status(verbose=true) info: each value a JSON document, as crictl info expects."""
        cni = {
            "confDir": self.cfg.cni.conf_dir,
            "binDirs": self.cfg.cni.bin_dirs,
            "network": None
            if net.config is None
            else {
                "name": net.config.name,
                "cniVersion": net.config.cni_version,
                "path": net.config.path,
                "plugins": net.config.plugin_types,
            },
            "podCIDR": self.pod_cidr,
        }
        runtime = {
            "name": RUNTIME_NAME,
            "version": __version__,
            "cgroupDriver": self.cgroup_driver(),
            "cgroupVersion": cgroups.cgroup_version().value,
            "stateSchemaVersion": self.store.schema_version,
            "handlers": [h.to_dict() for h in self.handlers.values()],
        }
        return {
            "config": json.dumps(self.cfg.to_dict()),
            "cniconfig": json.dumps(cni),
            "runtime": json.dumps(runtime),
        }
