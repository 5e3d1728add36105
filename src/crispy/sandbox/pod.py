"""A pod sandbox as crispy keeps it: the CRI config as sent, plus what crispy made for it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from crispy.api import pb
from crispy.store import PodRow, jsonrecord

CREATING = "creating"
READY = "ready"
NOTREADY = "notready"


# The kernel's HOST_NAME_MAX; kubelet cuts pod names to 63 (a DNS label) for hostnames.
HOSTNAME_MAX = 64
_NAME_AS_HOSTNAME_MAX = 63


def pod_hostname(config: pb.PodSandboxConfig) -> str:
    """The pod's hostname: `hostname`, else its name as kubelet would cut it.

    Pod names are DNS subdomains of up to 253 characters; sethostname(2) takes 64. kubelet
    keeps the first 63 and strips the `-` and `.` that then end it."""
    if config.hostname:
        return config.hostname
    return config.metadata.name[:_NAME_AS_HOSTNAME_MAX].rstrip("-.")


def reserved_name(meta: pb.PodSandboxMetadata) -> str:
    # containerd's sandbox name: what kubelet must never get two pods for.
    return f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"


@dataclass
class PodPaths:
    """Where a pod's files live under the state dir (tmpfs: gone on reboot, as the pod is)."""

    dir: str  # <state>/pods/<id>
    ns_dir: str  # <state>/ns/<id>

    @classmethod
    def of(cls, state: str, pod_id: str) -> PodPaths:
        return cls(os.path.join(state, "pods", pod_id), os.path.join(state, "ns", pod_id))

    def ns(self, kind: str) -> str:
        return os.path.join(self.ns_dir, kind)

    @property
    def shim_socket(self) -> str:
        return os.path.join(self.dir, "shim.sock")

    @property
    def shim_log(self) -> str:
        return os.path.join(self.dir, "shim.log")

    @property
    def shm(self) -> str:
        return os.path.join(self.dir, "shm")

    def file(self, name: str) -> str:
        return os.path.join(self.dir, name)


@dataclass
class InfraInfo:
    """The pod's infra container: its snapshot, and its init once started."""

    id: str = ""
    pid: int = 0
    start: int = 0  # the pid's start time (/proc/<pid>/stat): a reused pid is not it
    snapshot: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PodInfo:
    """What exists for a pod, recorded (as JSON in the row's `info`) as each piece is made,
    and planned before any is: teardown and recovery read what to undo here."""

    netns: str = ""  # the namespace pins; "" for the host's
    utsns: str = ""
    ipcns: str = ""
    network: bool = False  # CNI ADD may have run: teardown must run CNI DEL
    ips: list[str] = field(default_factory=list)
    cgroup_parent: str = ""
    cgroup_path: str = ""
    cgroup_made: bool = False  # crispy made the pod's cgroup (not kubelet): crispy removes it
    cgroup_parents_made: list[str] = field(default_factory=list)
    shm: str = ""
    shim_pid: int = 0
    shim_start: int | None = None  # None: recorded by a crispy that did not keep it
    infra: InfraInfo | None = None
    stopping: bool = False  # a StopPodSandbox is under way (recovery finishes it)
    removing: bool = False  # a RemovePodSandbox is under way (recovery finishes it)
    requested_handler: str | None = None  # as sent; None: recorded by an older crispy
    extra: dict[str, Any] = field(default_factory=dict)  # keys of another crispy version


@dataclass
class Pod:
    id: str
    name: str
    state: str
    created_at: int
    handler: str
    config: pb.PodSandboxConfig
    info: PodInfo = field(default_factory=PodInfo)

    @property
    def namespace_options(self) -> pb.NamespaceOption:
        return self.config.linux.security_context.namespace_options

    @property
    def host_network(self) -> bool:
        return self.namespace_options.network == pb.NODE

    @property
    def host_ipc(self) -> bool:
        return self.namespace_options.ipc == pb.NODE

    @property
    def host_pid(self) -> bool:
        return self.namespace_options.pid == pb.NODE

    @property
    def shared_pid(self) -> bool:
        return self.namespace_options.pid == pb.POD

    @property
    def hostname(self) -> str:
        """The UTS hostname of the pod's containers; "" for a host-network pod (the node's)."""
        return "" if self.host_network else pod_hostname(self.config)

    @property
    def ips(self) -> list[str]:
        return list(self.info.ips)

    def labels_match(self, selector: dict[str, str]) -> bool:
        labels = self.config.labels
        return all(labels.get(k) == v for k, v in selector.items())

    def to_row(self) -> PodRow:
        return PodRow(
            id=self.id,
            name=self.name,
            state=self.state,
            created_at=self.created_at,
            runtime_handler=self.handler,
            config=self.config.SerializeToString(),
            info=jsonrecord.dump(self.info),
        )

    @classmethod
    def from_row(cls, row: PodRow) -> Pod:
        config = pb.PodSandboxConfig()
        config.ParseFromString(row.config)
        return cls(
            id=row.id,
            name=row.name,
            state=row.state,
            created_at=row.created_at,
            handler=row.runtime_handler,
            config=config,
            info=jsonrecord.load(PodInfo, row.info),
        )
