"""SQLite metadata: the one source of truth for what exists."""

from crispy.store.db import (
    SCHEMA_VERSION,
    ContainerRow,
    ImageRow,
    PodRow,
    SnapshotRow,
    Store,
    StoreError,
)

__all__ = [
    "SCHEMA_VERSION",
    "ContainerRow",
    "ImageRow",
    "PodRow",
    "SnapshotRow",
    "Store",
    "StoreError",
]
