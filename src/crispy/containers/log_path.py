"""Where a container's CRI log goes: its `log_path` inside the pod's `log_directory`."""

from __future__ import annotations

import os

from crispy import errors


def log_path_parts(log_path: str) -> list[str]:
    """The components of a container's `log_path`, which must stay inside the pod's
    log_directory: relative, no `..`, no NUL, naming a file ("//" and "." dropped)."""
    if "\0" in log_path:
        raise errors.InvalidArgument(f"log_path {log_path!r} contains a NUL byte")
    if log_path.startswith("/"):
        raise errors.InvalidArgument(
            f"log_path {log_path!r} must be relative to the pod's log_directory"
        )
    parts = [p for p in log_path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise errors.InvalidArgument(f"log_path {log_path!r} contains a '..' component")
    if not parts or log_path.endswith("/") or log_path.rstrip("/").endswith("/."):
        raise errors.InvalidArgument(f"log_path {log_path!r} names no file")
    return parts


def container_log_path(log_directory: str, log_path: str) -> str:
    """Where a container's CRI log goes: `log_path` inside the pod's `log_directory` ("" for
    no log: either is empty). InvalidArgument, naming the field, for a relative
    log_directory or a log_path that would leave it."""
    parts = log_path_parts(log_path) if log_path else []
    if not log_directory:
        return ""
    if "\0" in log_directory or not os.path.isabs(log_directory):
        raise errors.InvalidArgument(
            f"the pod's log_directory {log_directory!r} is not an absolute path"
        )
    if not parts:
        return ""
    return os.path.join(os.path.normpath(log_directory), *parts)
