"""A container as crispy keeps it: its CRI config as sent, its state, what crispy made."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from crispy.api import pb
from crispy.store import ContainerRow

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
    # "bundle", "snapshot", "log_path", "pid", "exit_file", "volumes" (dirs crispy made),
    # "image_mounts" (image_mounts.plan(): the views and mounts of CRI image mounts)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return int(self.info.get("pid") or 0)

    @property
    def bundle(self) -> str:
        return str(self.info["bundle"])

    @property
    def exit_file(self) -> str:
        return os.path.join(self.bundle, "exit")

    @property
    def log_path(self) -> str:
        return str(self.info.get("log_path", ""))

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
            info=self.info,
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
            info=dict(row.info),
        )
