"""SQLite metadata: the one source of truth for what exists."""

from crispy.store.db import SCHEMA_VERSION, ImageRow, PodRow, SnapshotRow, Store, StoreError

__all__ = ["SCHEMA_VERSION", "ImageRow", "PodRow", "SnapshotRow", "Store", "StoreError"]
