"""A container as crispy keeps it: its CRI config as sent, its state, what crispy made."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from crispy.api import pb
from crispy.store import ContainerRow, jsonrecord

CREATING = "creating"
CREATED = "created"
RUNNING = "running"
EXITED = "exited"

# ContainerStatus reasons kubelet knows.
COMPLETED = "Completed"
ERROR = "Error"
OOM_KILLED = "OOMKilled"


def bundle_dir(state: str, container_id: str) -> str:
    return os.path.join(state, "containers", container_id)


@dataclass
class ImageMountPlan:
    """A CRI image mount (KEP-4639): the image's read-only view and where it is mounted."""

    index: int = 0  # in the container config's mounts
    dest: str = ""  # container_path
    image: str = ""  # image ID
    sub_path: str = ""
    snapshot: str = ""  # the view's key
    target: str = ""  # its mount point in the bundle
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ContainerInfo:
    """What crispy made for a container (JSON in the row's `info`), planned before any of
    it exists: removal and recovery read what to undo here."""

    bundle: str = ""
    snapshot: str = ""  # the writable layer's key
    log_path: str = ""  # absolute; "" for no log
    pid: int = 0  # the init's, once created
    handler: str = ""  # the runtime handler that runs it
    stop_signal: int | None = None  # fixed at create; None: recorded by an older crispy
    image_mounts: list[ImageMountPlan] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # keys of another crispy version


@dataclass
class Container:
    id: str
    pod_id: str
    name: str  # reserved in the pod: <metadata name>_<attempt>
    state: str
    created_at: int
    config: pb.ContainerConfig
    image_ref: str
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    info: ContainerInfo = field(default_factory=ContainerInfo)

    @property
    def pid(self) -> int:
        return self.info.pid

    @property
    def bundle(self) -> str:
        return self.info.bundle

    @property
    def exit_file(self) -> str:
        return os.path.join(self.bundle, "exit")

    @property
    def log_path(self) -> str:
        return self.info.log_path

    def labels_match(self, selector: dict[str, str]) -> bool:
        labels = self.config.labels
        return all(labels.get(k) == v for k, v in selector.items())

    def to_row(self) -> ContainerRow:
        return ContainerRow(
            id=self.id,
            pod_id=self.pod_id,
            name=self.name,
            state=self.state,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            exit_code=self.exit_code,
            reason=self.reason,
            message=self.message,
            image_ref=self.image_ref,
            config=self.config.SerializeToString(),
            info=jsonrecord.dump(self.info),
        )

    @classmethod
    def from_row(cls, row: ContainerRow) -> Container:
        config = pb.ContainerConfig()
        config.ParseFromString(row.config)
        return cls(
            id=row.id,
            pod_id=row.pod_id,
            name=row.name,
            state=row.state,
            created_at=row.created_at,
            config=config,
            image_ref=row.image_ref,
            started_at=row.started_at,
            finished_at=row.finished_at,
            exit_code=row.exit_code,
            reason=row.reason,
            message=row.message,
            info=jsonrecord.load(ContainerInfo, row.info),
        )
