"""Seccomp profiles: crispy's RuntimeDefault profile and Localhost profiles, as OCI `linux.seccomp`.

Profiles are data in Docker's seccomp profile format (the one containerd, CRI-O and
the Kubernetes docs use): an `archMap`, and syscall rules that apply only on some
architectures (`includes`/`excludes` `arches`, Go's names: amd64, arm64...), only when
the container holds some capabilities (`caps`, checked against its bounding set), or
only from some kernel (`minKernel`). `oci_profile` picks the rules that apply to this
machine and container and returns the plain OCI form runc takes. A profile already in
the OCI form (`architectures`, no conditions) passes through unchanged.

The default profile (seccomp_default.json beside this module) denies with EPERM every
syscall but an allowlist, as Docker's and containerd's defaults do.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Collection
from importlib import resources
from typing import Any

from crispy import errors
from crispy.oci.users import read_limited

DEFAULT_PROFILE_FILE = "seccomp_default.json"
MAX_PROFILE_SIZE = 4 << 20

# uname machine -> (libseccomp's name of the native arch, Go's name used in `arches`)
ARCHES = {
    "x86_64": ("SCMP_ARCH_X86_64", "amd64"),
    "amd64": ("SCMP_ARCH_X86_64", "amd64"),
    "aarch64": ("SCMP_ARCH_AARCH64", "arm64"),
    "arm64": ("SCMP_ARCH_AARCH64", "arm64"),
}
# The OCI LinuxSeccomp keys taken from a profile as they are.
_PASSED = ("defaultAction", "defaultErrnoRet", "flags", "listenerPath", "listenerMetadata")
_RULE_KEYS = ("names", "action", "errnoRet", "args")


class ProfileError(ValueError):
    """A profile that is not a well-formed seccomp profile."""


def host_kernel() -> tuple[int, int]:
    """The running kernel's (major, minor), for `minKernel` conditions."""
    return parse_version(os.uname().release) or (0, 0)


def parse_version(s: str) -> tuple[int, int] | None:
    parts = s.split(".")
    try:
        major = int(parts[0])
        minor = int("".join(ch for ch in parts[1].split("-")[0] if ch.isdigit()) or "0")
    except (IndexError, ValueError):
        return None
    return major, minor


@functools.cache
def _default_data() -> dict[str, Any]:
    text = resources.files("crispy.oci").joinpath(DEFAULT_PROFILE_FILE).read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def default_profile(machine: str, caps: Collection[str], kernel: tuple[int, int]) -> dict[str, Any]:
    """crispy's RuntimeDefault profile for a container with bounding set `caps`."""
    return oci_profile(copy.deepcopy(_default_data()), machine=machine, caps=caps, kernel=kernel)


def localhost_profile(
    path: str, *, machine: str, caps: Collection[str], kernel: tuple[int, int]
) -> dict[str, Any]:
    """The OCI `linux.seccomp` of the profile file at `path` on the host (Localhost)."""
    what = f"seccomp profile {path!r}"
    if not path.startswith("/") or "\x00" in path:
        raise errors.InvalidArgument(f"{what}: the path must be absolute")
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise errors.InvalidArgument(f"{what} cannot be read: {e.strerror}") from None
    try:
        text = read_limited(fd, os.fstat(fd), what, MAX_PROFILE_SIZE)
    finally:
        os.close(fd)
    try:
        return oci_profile(json.loads(text), machine=machine, caps=caps, kernel=kernel)
    except ValueError as e:  # JSONDecodeError and ProfileError
        raise errors.InvalidArgument(f"{what} is not a valid seccomp profile: {e}") from None


def oci_profile(
    profile: Any, *, machine: str, caps: Collection[str], kernel: tuple[int, int]
) -> dict[str, Any]:
    """The OCI `linux.seccomp` for a profile in Docker's or the OCI format."""
    if not isinstance(profile, dict):
        raise ProfileError("a seccomp profile must be a JSON object")
    action = profile.get("defaultAction")
    if not isinstance(action, str) or not action.startswith("SCMP_ACT_"):
        raise ProfileError("defaultAction is missing or not an SCMP_ACT_* action")
    out: dict[str, Any] = {k: profile[k] for k in _PASSED if k in profile}
    native, goarch = ARCHES.get(machine, ("", machine))
    if profile.get("archMap") is not None and profile.get("architectures"):
        raise ProfileError("a profile has either architectures or archMap, not both")
    if profile.get("architectures"):
        out["architectures"] = _str_list(profile["architectures"], "architectures")
    for entry in _list(profile.get("archMap"), "archMap"):
        if not isinstance(entry, dict):
            raise ProfileError("archMap entries must be objects")
        if entry.get("architecture") == native:
            subs = _str_list(entry.get("subArchitectures") or [], "subArchitectures")
            out["architectures"] = [native, *subs]
    rules = []
    for rule in _list(profile.get("syscalls"), "syscalls"):
        if not isinstance(rule, dict):
            raise ProfileError("syscalls entries must be objects")
        if not _applies(rule, goarch, caps, kernel):
            continue
        raw = rule.get("names")
        if raw is None and "name" in rule:  # the old single-name form
            raw = [rule["name"]]
        names = _str_list(raw or [], "syscalls names")
        if not names:
            raise ProfileError("a syscalls entry has no names")
        if not isinstance(rule.get("action"), str):
            raise ProfileError(f"the syscalls entry for {names[0]!r} has no action")
        kept = {k: rule[k] for k in _RULE_KEYS if k in rule}
        kept["names"] = list(names)
        if kept.get("args") is not None:
            for arg in _list(kept["args"], "args"):
                if not isinstance(arg, dict) or not isinstance(arg.get("index"), int):
                    raise ProfileError(f"bad args in the syscalls entry for {names[0]!r}")
        rules.append(kept)
    if rules:
        out["syscalls"] = rules
    return out


def _applies(
    rule: dict[str, Any], goarch: str, caps: Collection[str], kernel: tuple[int, int]
) -> bool:
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    if not isinstance(inc, dict) or not isinstance(exc, dict):
        raise ProfileError("includes and excludes must be objects")
    if goarch in _str_list(exc.get("arches") or [], "excludes arches"):
        return False
    if any(c in caps for c in _str_list(exc.get("caps") or [], "excludes caps")):
        return False
    arches = _str_list(inc.get("arches") or [], "includes arches")
    if arches and goarch not in arches:
        return False
    if not all(c in caps for c in _str_list(inc.get("caps") or [], "includes caps")):
        return False
    if inc.get("minKernel"):
        wanted = parse_version(str(inc["minKernel"]))
        if wanted is None:
            raise ProfileError(f"bad minKernel {inc['minKernel']!r}")
        if kernel < wanted:
            return False
    return True


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProfileError(f"{what} must be a list")
    return value


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"{what} must be a list of strings")
    return value
