"""CRI → OCI: a container's `config.json` from its CRI config, its pod's and its image's.

`build_spec` is a pure function of its inputs: it makes no system call but reading the
image's /etc/passwd and /etc/group (symlink-safely, inside the rootfs), stat()ing the
host devices a container asks for, reading a Localhost seccomp profile, and (through
ctx.mount_propagation) looking up the host mount under a propagating mount. Everything
else about the host (namespace files, cgroup path, the kernel's last capability, the
machine) comes in the SpecContext, so it is tested against golden files without root.

It is built as containerd's CRI plugin builds its spec: a list of small option
functions, one per concern, each filling in its part of the spec in order (`_OPTIONS`).
A pod's sandbox (infra, "pause") container is built by the same functions from a fixed
CRI config (`build_sandbox_spec`, `_SANDBOX_OPTIONS`), so the two cannot drift apart.
Everything that comes from the image or the pod is validated here, and anything
malformed or unsafe is an InvalidArgument that names the field.

Choices where the CRI leaves room:
- Sysctls: no `linux.sysctl`. The CRI carries sysctls on the pod only; the namespaced
  ones (net.*, kernel.shm*/msg*/sem, fs.mqueue.*) belong to the network, IPC and UTS
  namespaces, which a container always shares with its pod (or the host), and the
  sandbox manager has already set them there.
- Masked and readonly paths: the CRI cannot tell an empty list from an unset one, so
  both mean the defaults (as containerd does); privileged containers get none.
- HOME is set from the image's /etc/passwd when neither the image nor the CRI sets it
  ("/" for a uid without an entry), as runc would.
- AppArmor: RuntimeDefault is `ctx.apparmor_default_profile` (crispyd loads it), or no
  profile on a host without AppArmor; Localhost on such a host is an error. A
  privileged container keeps a Localhost profile but not the default one (containerd).
- Seccomp: RuntimeDefault and Localhost on a host without seccomp are errors (as
  containerd); privileged containers run unconfined whatever is asked.
- Image VOLUMEs are bound from `<ctx.volume_dir>/<volume_name(dest)>` (dirs the caller
  makes, see image_volumes); with no volume_dir they stay plain dirs of the rootfs.
- Image mounts (CRI `Mount.image`, KEP-4639 image volumes): host_path must be empty (as
  containerd 2.x: the fields are exclusive) and readonly true (kubelet always sets it);
  the caller mounts the image's read-only view and passes its dir in ctx.image_mounts.
  image_sub_path is relative, without "..", and names a dir (checked in the image by
  image_mounts.py). BIDIRECTIONAL is refused; the others bind it rprivate (nothing on
  the host ever mounts inside an image's view, so there is nothing to propagate).
- Host paths of CRI mounts are used as given (kubelet makes them); they must be absolute.
  A BIDIRECTIONAL mount's host path must be on a shared mount, a HOST_TO_CONTAINER one's
  on a shared or slave mount, else nothing would propagate: InvalidArgument (containerd
  refuses them too). A host path that does not exist is left for runc to report.
"""

from __future__ import annotations

import copy
import hashlib
import os
import platform
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from crispy import errors
from crispy.api import pb
from crispy.oci import seccomp, users

OCI_VERSION = "1.1.0"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Paths a container must not see or change (the OCI/containerd defaults).
MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

# Capability numbers → names, as in linux/capability.h (CAP_LAST_CAP is 40 in 5.9+).
CAP_NAMES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
# containerd's default set, in its order.
DEFAULT_CAPS = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)


def _allow_char(major: int, minor: int | None) -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": True, "type": "c", "major": major}
    if minor is not None:  # no minor: any
        rule["minor"] = minor
    rule["access"] = "rwm"
    return rule


# Deny every device, then allow the ones every container gets (runc's defaults).
DEFAULT_DEVICE_RULES: list[dict[str, Any]] = [
    {"allow": False, "access": "rwm"},
    _allow_char(1, 3),  # /dev/null
    _allow_char(1, 5),  # /dev/zero
    _allow_char(1, 7),  # /dev/full
    _allow_char(1, 8),  # /dev/random
    _allow_char(1, 9),  # /dev/urandom
    _allow_char(5, 0),  # /dev/tty
    _allow_char(5, 1),  # /dev/console
    _allow_char(5, 2),  # /dev/ptmx
    _allow_char(136, None),  # /dev/pts/*
]

# What host_devices() leaves out of /dev for privileged containers (as containerd).
_SKIPPED_DEV_DIRS = frozenset(("pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"))

ANNOTATION_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
ANNOTATION_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
ANNOTATION_CONTAINER_NAME = "io.kubernetes.cri.container-name"
ANNOTATION_IMAGE_NAME = "io.kubernetes.cri.image-name"

_PROPAGATION = {
    pb.PROPAGATION_PRIVATE: "rprivate",
    pb.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    pb.PROPAGATION_BIDIRECTIONAL: "rshared",
}
_CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_PAGE_SIZE = re.compile(r"^\d+[KMGTP]?B$")
_CGROUP_FILE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)+$")


def host_cap_last_cap() -> int:
    """The highest capability number the running kernel knows (40 when unreadable)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return len(CAP_NAMES) - 1


def host_capabilities() -> tuple[str, ...]:
    """Every capability crispyd can hand out: its own effective set (containerd's
    cap.Current()), else every one the kernel knows. A host that runs crispy with a
    reduced bounding set (in a container, say) refuses the others to runc."""
    try:
        with open("/proc/self/status") as f:
            eff = next(line for line in f if line.startswith("CapEff:"))
        bits = int(eff.split(":", 1)[1], 16)
    except (OSError, StopIteration, ValueError):
        return CAP_NAMES[: min(host_cap_last_cap(), len(CAP_NAMES) - 1) + 1]
    return tuple(name for i, name in enumerate(CAP_NAMES) if bits >> i & 1)


_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


def host_mount_propagation(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The propagation of the host mount that holds `path` (symlinks resolved): "shared",
    "slave" or "private"; None when `path` does not exist or the table can't be read."""
    try:
        real = os.path.realpath(path, strict=True)
        with open(mountinfo, "rb") as f:
            lines = f.read().splitlines()
    except (OSError, ValueError):
        return None
    best: str | None = None
    tags: list[bytes] = []
    for line in lines:
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)  # the optional fields (shared:N...) end at "-"
        except ValueError:
            continue
        # the kernel writes space, tab, newline and backslash as \040 \011 \012 \134
        raw = _OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4])
        mp = os.fsdecode(raw)
        inside = real == mp or real.startswith(mp.rstrip("/") + "/")
        # the longest mount point holds it; of stacked ones the later is on top
        if inside and (best is None or len(mp) >= len(best)):
            best, tags = mp, fields[6:sep]
    if best is None:
        return None
    if any(t.startswith(b"shared:") for t in tags):
        return "shared"
    if any(t.startswith(b"master:") for t in tags):
        return "slave"
    return "private"


@dataclass
class SpecContext:
    """Everything about the pod and the host that is not in the CRI messages."""

    container_id: str
    pod_id: str
    rootfs: str  # the container's mounted rootfs (its users and groups are read there)
    netns: str  # pinned netns file, "" when the pod uses the host network
    ipcns: str  # "" = host IPC
    utsns: str  # "" = host UTS
    pid_ns: str  # the pod's shared PID namespace ("/proc/<infra pid>/ns/pid"), or ""
    shm: str  # the pod's /dev/shm source dir ("/dev/shm" for host IPC)
    resolv_conf: str  # the pod's files bound in ("" = none)
    hosts: str
    hostname_file: str
    hostname: str  # the pod's hostname ("" for host network: then none in the spec)
    cgroups_path: str
    volume_dir: str = ""  # image VOLUMEs are bound from dirs below it ("" = not bound)
    # CRI image mounts: container_path → the host dir to bind (the image's read-only view,
    # or the image_sub_path inside it), made by the caller (containers/image_mounts.py)
    image_mounts: dict[str, str] = field(default_factory=dict)
    apparmor_available: bool = False
    apparmor_default_profile: str = "crispy-default"  # loaded by crispyd
    seccomp_available: bool = True
    rro_supported: bool = False  # the OCI runtime does recursive read-only mounts
    swap_available: bool = True  # the memory cgroup can limit swap
    cgroupns: bool = False  # give the container its own cgroup namespace (cgroup v2)
    min_oom_score_adj: int = 0  # oom_score_adj is clamped up to this
    # The pod has a sandbox container to join: sandbox runtimes (gVisor, VMs) read the
    # container-type/sandbox-id annotations as "join it", so they are only set where it exists.
    sandbox_container: bool = True
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)  # name → (soft, hard)
    all_caps: tuple[str, ...] = field(default_factory=host_capabilities)  # privileged, "ALL"
    # host path → "shared" | "slave" | "private" | None (unknown: not checked)
    mount_propagation: Callable[[str], str | None] = host_mount_propagation
    machine: str = field(default_factory=platform.machine)
    kernel: tuple[int, int] = field(default_factory=seccomp.host_kernel)
    node_hostname: str = field(default_factory=lambda: os.uname().nodename)


@dataclass
class _Inputs:
    config: pb.ContainerConfig
    sandbox: pb.PodSandboxConfig
    image: dict[str, Any]  # the image config's "config" object
    ctx: SpecContext
    sc: pb.LinuxContainerSecurityContext
    privileged: bool
    home: str = "/"


SpecOpt = Callable[[dict[str, Any], _Inputs], None]


# -- small validators ------------------------------------------------------------------


def _text(value: str, what: str, *, newline: bool = True) -> str:
    if "\x00" in value or (not newline and "\n" in value):
        raise errors.InvalidArgument(f"{what} {value!r} contains a NUL or newline")
    return value


def clean_path(path: str, what: str) -> str:
    """An absolute path inside the container, "//" and "." removed; ".." is refused."""
    if not path.startswith("/"):
        raise errors.InvalidArgument(f"{what} {path!r} is not an absolute path")
    _text(path, what, newline=False)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise errors.InvalidArgument(f"{what} {path!r} contains a '..' component")
    return "/" + "/".join(parts)


def _image_cfg(image_config: dict[str, Any]) -> dict[str, Any]:
    """The "config" object of an OCI image config (where Entrypoint, Env, User... are)."""
    cfg = image_config.get("config") or {}
    if not isinstance(cfg, dict):
        raise errors.InvalidArgument("image config: config is not an object")
    return cfg


def _image_list(cfg: dict[str, Any], key: str) -> list[str] | None:
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise errors.InvalidArgument(f"image config {key} is not a list of strings")
    return value


def _image_str(cfg: dict[str, Any], key: str) -> str:
    value = cfg.get(key) or ""
    if not isinstance(value, str):
        raise errors.InvalidArgument(f"image config {key} is not a string")
    return value


# -- the option functions, in the order build_spec applies them ------------------------


def with_process_args(spec: dict[str, Any], inp: _Inputs) -> None:
    """kubelet's rules: CRI command replaces ENTRYPOINT and CMD; CRI args replace CMD."""
    command, args = list(inp.config.command), list(inp.config.args)
    if not command:
        if not args:
            args = _image_list(inp.image, "Cmd") or []
        entrypoint = _image_list(inp.image, "Entrypoint") or []
        if entrypoint != [""]:  # ENTRYPOINT [""] resets it
            command = entrypoint
    argv = command + args
    if not argv:
        raise errors.InvalidArgument("no command specified")
    for a in argv:
        _text(a, "command or argument")
    spec["process"]["args"] = argv


def with_cwd(spec: dict[str, Any], inp: _Inputs) -> None:
    cwd = inp.config.working_dir or _image_str(inp.image, "WorkingDir") or "/"
    what = "working_dir" if inp.config.working_dir else "image config WorkingDir"
    if not cwd.startswith("/"):
        raise errors.InvalidArgument(f"{what} {cwd!r} is not an absolute path")
    spec["process"]["cwd"] = _text(cwd, what, newline=False)


def _image_user(inp: _Inputs) -> tuple[int | str, int | str | None]:
    """The image's USER: "name", "uid", "name:group", "uid:gid" (and the mixed forms)."""
    raw = _image_str(inp.image, "User")
    if not raw:
        return 0, None
    _text(raw, "image config User", newline=False)
    user, sep, group = raw.partition(":")
    if not user or (sep and not group) or ":" in group:
        raise errors.InvalidArgument(f"image config User {raw!r} is not user[:group]")
    u: int | str = int(user) if user.isascii() and user.isdigit() else user
    g: int | str | None = None
    if group:
        g = int(group) if group.isascii() and group.isdigit() else group
    return u, g


def with_user(spec: dict[str, Any], inp: _Inputs) -> None:
    """uid, gid and groups from the security context, else the image's USER."""
    sc = inp.sc
    has_gid = sc.HasField("run_as_group")
    user: int | str
    group: int | str | None = None
    if sc.run_as_username:
        user_field = "run_as_username"
        user = _text(sc.run_as_username, user_field, newline=False)
    elif sc.HasField("run_as_user"):
        user, user_field = sc.run_as_user.value, "run_as_user"
    else:
        if has_gid:
            raise errors.InvalidArgument(
                "run_as_group is set without run_as_user or run_as_username"
            )
        user, group = _image_user(inp)
        user_field = "image config User"
    group_field = user_field
    if has_gid:
        group, group_field = sc.run_as_group.value, "run_as_group"
    resolved = users.resolve(
        inp.ctx.rootfs,
        user,
        group,
        supplemental=list(sc.supplemental_groups),
        image_groups=sc.supplemental_groups_policy != pb.SupplementalGroupsPolicy.Strict,
        user_field=user_field,
        group_field=group_field,
    )
    spec["process"]["user"] = {
        "uid": resolved.uid,
        "gid": resolved.gid,
        "additionalGids": resolved.additional_gids,
    }
    inp.home = resolved.home


def _env_pair(key: str, value: str, what: str) -> tuple[str, str]:
    if not key or "=" in key or "\x00" in key or "\n" in key:
        raise errors.InvalidArgument(f"{what}: bad variable name {key!r}")
    if "\x00" in value or "\n" in value:
        raise errors.InvalidArgument(f"{what}: the value of {key} contains a NUL or newline")
    return key, value


def _add_image_env(env: dict[str, str], inp: _Inputs) -> None:
    for item in _image_list(inp.image, "Env") or []:
        key, sep, value = item.partition("=")
        if not sep:  # "KEY" alone unsets it, as containerd reads it
            _env_pair(key, "", "image config Env")
            env.pop(key, None)
            continue
        env.update([_env_pair(key, value, "image config Env")])


def with_env(spec: dict[str, Any], inp: _Inputs) -> None:
    """PATH and HOSTNAME defaults, the image's Env, then the CRI envs, by key; then HOME."""
    hostname = inp.ctx.hostname or inp.sandbox.hostname or inp.ctx.node_hostname
    env = {"PATH": DEFAULT_PATH}
    env.update([_env_pair("HOSTNAME", hostname, "hostname")])
    _add_image_env(env, inp)
    for kv in inp.config.envs:
        env.update([_env_pair(kv.key, kv.value, "envs")])
    if "HOME" not in env:
        env.update([_env_pair("HOME", inp.home, "HOME from the image's /etc/passwd")])
    spec["process"]["env"] = [f"{k}={v}" for k, v in env.items()]


def with_image_env(spec: dict[str, Any], inp: _Inputs) -> None:
    """The sandbox container's: the default PATH and the image's Env, nothing else."""
    env = {"PATH": DEFAULT_PATH}
    _add_image_env(env, inp)
    spec["process"]["env"] = [f"{k}={v}" for k, v in env.items()]


def with_namespaces(spec: dict[str, Any], inp: _Inputs) -> None:
    """Join the pod's namespaces (none = the host's); a new mount namespace always."""
    ctx, opts = inp.ctx, inp.sc.namespace_options
    if opts.HasField("userns_options") and opts.userns_options.mode != pb.NODE:
        raise errors.InvalidArgument("user namespaces (userns_options) are not supported")
    ns: list[dict[str, str]] = []
    pid = opts.pid
    if pid == pb.CONTAINER:
        ns.append({"type": "pid"})
    elif pid in (pb.POD, pb.TARGET):
        if ctx.pid_ns:
            ns.append({"type": "pid", "path": ctx.pid_ns})
        elif pid == pb.TARGET:
            raise errors.InvalidArgument(
                f"namespace_options.pid TARGET: no PID namespace of {opts.target_id!r} to join"
            )
        elif inp.sandbox.linux.security_context.namespace_options.pid != pb.NODE:
            ns.append({"type": "pid"})
        # else: POD (also the zero value) in a host-PID pod is the host's, as containerd has it
    elif pid != pb.NODE:
        raise errors.InvalidArgument(f"namespace_options.pid: unknown mode {pid}")
    for kind, path in (("network", ctx.netns), ("ipc", ctx.ipcns), ("uts", ctx.utsns)):
        if path:
            ns.append({"type": kind, "path": path})
    ns.append({"type": "mount"})
    if ctx.cgroupns:
        ns.append({"type": "cgroup"})
    spec["linux"]["namespaces"] = ns
    if ctx.hostname and ctx.utsns:
        spec["hostname"] = _text(ctx.hostname, "hostname", newline=False)


def volume_name(destination: str) -> str:
    """The dir below volume_dir that backs the image VOLUME at `destination`."""
    clean = clean_path(destination, "image config Volumes")
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", clean.strip("/").replace("/", "-"))[:64] or "root"
    return f"{slug}-{hashlib.sha256(clean.encode()).hexdigest()[:12]}"


def _image_volume_dests(image: dict[str, Any], config: pb.ContainerConfig) -> list[str]:
    vols = image.get("Volumes") or {}
    if not isinstance(vols, dict):
        raise errors.InvalidArgument("image config Volumes is not an object")
    covered = {clean_path(m.container_path, "mount container_path") for m in config.mounts}
    dests = []
    for v in vols:
        dest = clean_path(str(v), "image config Volumes")
        if dest == "/":  # it would hide the whole rootfs (and the runtime's /proc)
            raise errors.InvalidArgument(
                f"image config Volumes {str(v)!r}: the container's root can't be a volume"
            )
        dests.append(dest)
    return sorted({d for d in dests if d not in covered})


def image_volumes(
    image_config: dict[str, Any], config: pb.ContainerConfig, volume_dir: str = ""
) -> list[str]:
    """The dirs the caller must make for the image's VOLUMEs that no CRI mount covers.

    Joined to `volume_dir` when given (the same as SpecContext.volume_dir), else bare
    names (volume_name() of each destination).
    """
    image = _image_cfg(image_config)
    return [os.path.join(volume_dir, volume_name(d)) for d in _image_volume_dests(image, config)]


def image_volume_destinations(
    image_config: dict[str, Any], config: pb.ContainerConfig
) -> list[str]:
    """The image's VOLUME destinations that no CRI mount covers."""
    return list(_image_volume_dests(_image_cfg(image_config), config))


def _default_mounts(privileged: bool) -> list[dict[str, Any]]:
    sys_mode = "rw" if privileged else "ro"
    return [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", sys_mode],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", sys_mode],
        },
    ]


def _bind(dest: str, source: str, options: list[str]) -> dict[str, Any]:
    return {"destination": dest, "type": "bind", "source": source, "options": options}


def image_mount(m: pb.Mount) -> tuple[str, str] | None:
    """(destination, sub path) of a CRI image mount; None for a host path mount.

    Checks what can be checked without the image: InvalidArgument naming the field. The
    sub path comes back relative and normalised ("" = the image's root).
    """
    if not m.HasField("image"):
        if m.image_sub_path:
            raise errors.InvalidArgument(
                f"mount {m.container_path!r}: image_sub_path is only for image mounts"
            )
        return None
    dest = clean_path(m.container_path, "mount container_path")
    what = f"mount {dest}"
    if m.host_path:
        raise errors.InvalidArgument(f"{what}: host_path must be empty for an image mount")
    if not m.image.image:
        raise errors.InvalidArgument(f"{what}: image.image is empty")
    _text(m.image.image, f"{what}: image.image", newline=False)
    if not m.readonly:
        raise errors.InvalidArgument(f"{what}: readonly must be true for an image mount")
    if m.propagation == pb.PROPAGATION_BIDIRECTIONAL:
        raise errors.InvalidArgument(
            f"{what}: propagation PROPAGATION_BIDIRECTIONAL is not possible for an image mount"
        )
    sub = m.image_sub_path
    if "\x00" in sub:
        raise errors.InvalidArgument(f"{what}: image_sub_path {sub!r} contains a NUL")
    if sub.startswith("/"):
        raise errors.InvalidArgument(f"{what}: image_sub_path {sub!r} is not a relative path")
    parts = [p for p in sub.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise errors.InvalidArgument(f"{what}: image_sub_path {sub!r} contains a '..' component")
    return dest, "/".join(parts)


def _cri_mount(m: pb.Mount, ctx: SpecContext, spec: dict[str, Any]) -> dict[str, Any]:
    dest = clean_path(m.container_path, "mount container_path")
    what = f"mount {dest}"
    if m.uidMappings or m.gidMappings:
        raise errors.InvalidArgument(f"{what}: ID-mapped mounts are not supported")
    if image_mount(m) is not None:
        source = ctx.image_mounts.get(dest)
        if source is None:
            raise errors.FailedPrecondition(f"{what}: image {m.image.image!r} is not mounted")
        if m.propagation not in _PROPAGATION:
            raise errors.InvalidArgument(f"{what}: unknown propagation {m.propagation}")
        ro = "rro" if m.recursive_read_only else "ro"
        if ro == "rro" and not ctx.rro_supported:
            raise errors.InvalidArgument(
                f"{what}: recursive read-only mounts are not supported by the OCI runtime"
            )
        return _bind(dest, source, ["rbind", "rprivate", ro])
    if not m.host_path.startswith("/"):
        raise errors.InvalidArgument(f"{what}: host_path {m.host_path!r} is not absolute")
    _text(m.host_path, f"{what}: host_path", newline=False)
    prop = _PROPAGATION.get(m.propagation)
    if prop is None:
        raise errors.InvalidArgument(f"{what}: unknown propagation {m.propagation}")
    if prop != "rprivate":
        # As containerd: a mount that cannot propagate is refused, not silently private.
        need = ("shared",) if prop == "rshared" else ("shared", "slave")
        have = ctx.mount_propagation(m.host_path)
        if have is not None and have not in need:
            kind = pb.MountPropagation.Name(m.propagation)
            raise errors.InvalidArgument(
                f"{what}: {kind} needs host_path {m.host_path!r} on a "
                f"{' or '.join(need)} mount, but its mount is {have}"
            )
    if prop == "rshared":
        spec["linux"]["rootfsPropagation"] = "rshared"
    elif prop == "rslave" and spec["linux"].get("rootfsPropagation") != "rshared":
        spec["linux"]["rootfsPropagation"] = "rslave"
    options = ["rbind", prop]
    if m.recursive_read_only:
        if not m.readonly:
            raise errors.InvalidArgument(f"{what}: recursive_read_only needs readonly")
        if prop != "rprivate":
            raise errors.InvalidArgument(f"{what}: recursive_read_only needs PROPAGATION_PRIVATE")
        if not ctx.rro_supported:
            raise errors.InvalidArgument(
                f"{what}: recursive read-only mounts are not supported by the OCI runtime"
            )
        options.append("rro")
    else:
        options.append("ro" if m.readonly else "rw")
    # selinux_relabel: accepted and ignored, crispy does not do SELinux.
    return _bind(dest, m.host_path, options)


def with_mounts(spec: dict[str, Any], inp: _Inputs) -> None:
    """OCI defaults, the pod's files and /dev/shm, CRI mounts, then image VOLUMEs."""
    ctx, config = inp.ctx, inp.config
    supplied = [_cri_mount(m, ctx, spec) for m in config.mounts]
    covered = {m["destination"] for m in supplied}
    files_mode = "ro" if inp.sc.readonly_rootfs else "rw"
    for dest, source, mode in (
        ("/etc/hostname", ctx.hostname_file, files_mode),
        ("/etc/hosts", ctx.hosts, files_mode),
        ("/etc/resolv.conf", ctx.resolv_conf, files_mode),
        ("/dev/shm", ctx.shm, "rw"),
    ):
        if source and dest not in covered:
            supplied.append(_bind(dest, source, ["rbind", "rprivate", mode]))
    if ctx.volume_dir:
        for dest in _image_volume_dests(inp.image, config):
            source = os.path.join(ctx.volume_dir, volume_name(dest))
            supplied.append(_bind(dest, source, ["rbind", "rprivate", "rw"]))
    dests = {m["destination"] for m in supplied}
    defaults = [
        m
        for m in _default_mounts(inp.privileged)
        if m["destination"] not in dests
        and not ("/dev" in dests and m["destination"].startswith("/dev/"))
    ]
    # Shallow destinations first, so that no mount hides one below it (containerd).
    supplied.sort(key=lambda m: m["destination"].count("/"))
    spec["mounts"] = defaults + supplied


def host_device(path: str, *, follow: bool = True) -> dict[str, Any] | None:
    """The OCI device for a host device node; None when `path` is not one."""
    st = os.stat(path) if follow else os.lstat(path)
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    elif stat.S_ISFIFO(st.st_mode):
        kind = "p"
    else:
        return None
    return {
        "path": path,
        "type": kind,
        "major": os.major(st.st_rdev),
        "minor": os.minor(st.st_rdev),
        "fileMode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }


def host_devices(top: str = "/dev") -> list[dict[str, Any]]:
    """Every char and block device below `top` (symlinks and FIFOs left out), as containerd."""
    out: list[dict[str, Any]] = []
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError:
        return out
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            if e.name not in _SKIPPED_DEV_DIRS:
                out += host_devices(e.path)
            continue
        if e.name == "console":
            continue
        try:
            dev = host_device(e.path, follow=False)
        except OSError:
            continue
        if dev is not None and dev["type"] != "p":
            out.append(dev)
    return out


def _cri_devices(d: pb.Device) -> tuple[list[dict[str, Any]], str]:
    """The OCI devices a CRI device names (a dir names those below it), and its access."""
    dest = clean_path(d.container_path, "device container_path")
    what = f"device {d.host_path!r}"
    if not d.host_path.startswith("/"):
        raise errors.InvalidArgument(f"{what}: host_path is not absolute")
    _text(d.host_path, what, newline=False)
    perms = d.permissions or "rwm"
    if not set(perms) <= set("rwm") or len(set(perms)) != len(perms):
        raise errors.InvalidArgument(f"{what}: permissions {d.permissions!r} are not of 'rwm'")
    try:
        dev = host_device(d.host_path)
    except OSError as e:
        raise errors.InvalidArgument(f"{what}: {e.strerror}") from None
    if dev is not None:
        found = [{**dev, "path": dest}]
    else:  # a dir: every device below it, as containerd does
        top = d.host_path.rstrip("/")
        found = [{**x, "path": dest + x["path"][len(top) :]} for x in host_devices(top)]
        if not found:
            raise errors.InvalidArgument(f"{what} is not a device nor a dir of devices")
    return found, perms


def with_devices(spec: dict[str, Any], inp: _Inputs) -> None:
    """CRI devices (and every host device when privileged) plus the devices cgroup rules."""
    found = [_cri_devices(d) for d in inp.config.devices]
    devices = [dev for devs, _ in found for dev in devs]
    if inp.privileged:
        paths = {dev["path"] for dev in devices}
        devices += [dev for dev in host_devices() if dev["path"] not in paths]
        rules: list[dict[str, Any]] = [{"allow": True, "access": "rwm"}]
    else:
        rules = copy.deepcopy(DEFAULT_DEVICE_RULES)
        for devs, access in found:
            rules += [
                {
                    "allow": True,
                    "type": dev["type"],
                    "major": dev["major"],
                    "minor": dev["minor"],
                    "access": access,
                }
                for dev in devs
            ]
    if devices:
        spec["linux"]["devices"] = devices
    spec["linux"].setdefault("resources", {})["devices"] = rules


def cap_name(raw: str) -> str:
    """ "chown", "CHOWN", "cap_chown" and "CAP_CHOWN" all name CAP_CHOWN."""
    name = raw.strip().upper()
    return name if name.startswith("CAP_") else "CAP_" + name


def with_capabilities(spec: dict[str, Any], inp: _Inputs) -> None:
    """containerd's default set; then ALL, adds and drops; every cap when privileged.

    "Every cap" is ctx.all_caps, the ones crispyd holds; the defaults are cut down to
    them too, and asking for one outside them is an error rather than a runc failure.
    """
    ctx, want = inp.ctx, inp.sc.capabilities
    all_caps = [c for c in CAP_NAMES if c in ctx.all_caps]

    def held(raw: str, what: str) -> str:
        name = cap_name(raw)
        if name not in CAP_NAMES:
            raise errors.InvalidArgument(f"{what}: unknown capability {raw!r}")
        if name not in all_caps:
            raise errors.InvalidArgument(f"{what}: {name} is not available on this host")
        return name

    add = [a for a in want.add_capabilities if a.strip().upper() != "ALL"]
    drop = [d for d in want.drop_capabilities if d.strip().upper() != "ALL"]
    ambient = [
        held(a, "add_ambient_capabilities")
        for a in want.add_ambient_capabilities
        if a.strip().upper() != "ALL"
    ]
    if inp.privileged:
        caps = list(all_caps)
    else:
        caps = [c for c in DEFAULT_CAPS if c in all_caps]
        if len(add) != len(want.add_capabilities):
            caps = list(all_caps)
        if len(drop) != len(want.drop_capabilities):
            caps = []
        for a in add:
            name = held(a, "add_capabilities")
            if name not in caps:
                caps.append(name)
        dropped = {cap_name(d) for d in drop}  # unknown names: nothing to drop
        caps = [c for c in caps if c not in dropped]
    ambient = list(dict.fromkeys(ambient))
    caps = caps + [a for a in ambient if a not in caps]  # an ambient cap must be held
    out: dict[str, list[str]] = {"bounding": caps, "effective": caps, "permitted": caps}
    if ambient:
        out["inheritable"] = ambient
        out["ambient"] = ambient
    spec["process"]["capabilities"] = {k: list(v) for k, v in out.items()}


def with_security_flags(spec: dict[str, Any], inp: _Inputs) -> None:
    """no_new_privs, readonly_rootfs, masked and readonly paths."""
    sc = inp.sc
    spec["process"]["noNewPrivileges"] = sc.no_new_privs
    spec["root"]["readonly"] = sc.readonly_rootfs
    if inp.privileged:
        return
    masked = [clean_path(p, "masked_paths") for p in sc.masked_paths] or MASKED_PATHS
    ro = [clean_path(p, "readonly_paths") for p in sc.readonly_paths] or READONLY_PATHS
    spec["linux"]["maskedPaths"] = list(masked)
    spec["linux"]["readonlyPaths"] = list(ro)


def _legacy_profile(path: str, what: str) -> pb.SecurityProfile | None:
    """The deprecated string form: runtime/default, docker/default, unconfined, localhost/<p>."""
    if not path:
        return None
    if path in ("runtime/default", "docker/default"):
        return pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    if path == "unconfined":
        return pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)
    if path.startswith("localhost/"):
        return pb.SecurityProfile(
            profile_type=pb.SecurityProfile.Localhost, localhost_ref=path[len("localhost/") :]
        )
    raise errors.InvalidArgument(f"{what}: unknown profile {path!r}")


def _profile(
    sc: pb.LinuxContainerSecurityContext,
    field_name: Literal["seccomp", "apparmor"],
    legacy: str,
) -> pb.SecurityProfile | None:
    if sc.HasField(field_name):
        p: pb.SecurityProfile = getattr(sc, field_name)
        if p.profile_type != pb.SecurityProfile.Localhost and p.localhost_ref:
            raise errors.InvalidArgument(
                f"{field_name}: localhost_ref is only for the Localhost profile type"
            )
        if p.profile_type not in pb.SecurityProfile.ProfileType.values():
            raise errors.InvalidArgument(f"{field_name}: unknown profile type {p.profile_type}")
        return p
    return _legacy_profile(getattr(sc, legacy), legacy)


def with_seccomp(spec: dict[str, Any], inp: _Inputs) -> None:
    """RuntimeDefault → crispy's profile, Localhost → the file, Unconfined/unset → none."""
    ctx = inp.ctx
    p = _profile(inp.sc, "seccomp", "seccomp_profile_path")
    if inp.privileged or p is None or p.profile_type == pb.SecurityProfile.Unconfined:
        return
    if not ctx.seccomp_available:
        raise errors.InvalidArgument("seccomp is not supported on this host")
    caps = spec["process"]["capabilities"]["bounding"]
    if p.profile_type == pb.SecurityProfile.RuntimeDefault:
        spec["linux"]["seccomp"] = seccomp.default_profile(ctx.machine, caps, ctx.kernel)
    else:
        ref = p.localhost_ref.removeprefix("localhost/")
        spec["linux"]["seccomp"] = seccomp.localhost_profile(
            ref, machine=ctx.machine, caps=caps, kernel=ctx.kernel
        )


def with_apparmor(spec: dict[str, Any], inp: _Inputs) -> None:
    """RuntimeDefault (also when unset) → ctx's default profile; Localhost → its name."""
    ctx = inp.ctx
    p = _profile(inp.sc, "apparmor", "apparmor_profile")
    if p is None:
        p = pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    if p.profile_type == pb.SecurityProfile.Unconfined:
        return
    if not ctx.apparmor_available:
        if p.profile_type == pb.SecurityProfile.Localhost:
            raise errors.InvalidArgument("AppArmor is not available on this host")
        return
    if p.profile_type == pb.SecurityProfile.RuntimeDefault:
        name = "" if inp.privileged else ctx.apparmor_default_profile
    else:
        name = p.localhost_ref.removeprefix("localhost/")
        if not name or any(ch.isspace() for ch in name):
            raise errors.InvalidArgument(f"apparmor: bad profile name {name!r}")
    if name:
        spec["process"]["apparmorProfile"] = _text(name, "apparmor profile", newline=False)


def _nonneg(value: int, what: str) -> int:
    if value < 0:
        raise errors.InvalidArgument(f"{what} {value} is negative")
    return value


def linux_resources(
    res: pb.LinuxContainerResources, *, swap_available: bool = True
) -> dict[str, Any]:
    """The OCI `linux.resources` (devices aside) for CRI resources; also `runc update`'s."""
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if res.cpu_shares:
        cpu["shares"] = _nonneg(res.cpu_shares, "cpu_shares")
    if res.cpu_quota:
        if res.cpu_quota < -1:
            raise errors.InvalidArgument(f"cpu_quota {res.cpu_quota} is below -1")
        cpu["quota"] = res.cpu_quota
    if res.cpu_period:
        cpu["period"] = _nonneg(res.cpu_period, "cpu_period")
    for key, value in (("cpus", res.cpuset_cpus), ("mems", res.cpuset_mems)):
        if value:
            if not _CPUSET.match(value):
                raise errors.InvalidArgument(f"cpuset_{key} {value!r} is not a CPU list")
            cpu[key] = value
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    limit, swap = res.memory_limit_in_bytes, res.memory_swap_limit_in_bytes
    if limit:
        memory["limit"] = _nonneg(limit, "memory_limit_in_bytes")
        if not swap and swap_available:
            memory["swap"] = limit  # memory+swap = memory: no swap unless asked
    if swap and swap_available:
        if swap < -1:
            raise errors.InvalidArgument(f"memory_swap_limit_in_bytes {swap} is below -1")
        if swap != -1 and limit and swap < limit:
            raise errors.InvalidArgument(
                f"memory_swap_limit_in_bytes {swap} (memory+swap) is below "
                f"memory_limit_in_bytes {limit}"
            )
        memory["swap"] = swap
    if memory:
        out["memory"] = memory
    pages = []
    for h in res.hugepage_limits:
        if not _PAGE_SIZE.match(h.page_size):
            raise errors.InvalidArgument(f"hugepage_limits: bad page_size {h.page_size!r}")
        pages.append({"pageSize": h.page_size, "limit": h.limit})
    if pages:
        out["hugepageLimits"] = pages
    if res.unified:
        unified = {}
        for key in sorted(res.unified):
            if not _CGROUP_FILE.match(key):
                raise errors.InvalidArgument(f"unified: {key!r} is not a cgroup file name")
            unified[key] = _text(res.unified[key], f"unified {key}")
        out["unified"] = unified
    return out


def with_resources(spec: dict[str, Any], inp: _Inputs) -> None:
    res = inp.config.linux.resources
    spec["linux"]["resources"].update(linux_resources(res, swap_available=inp.ctx.swap_available))
    spec["linux"]["cgroupsPath"] = inp.ctx.cgroups_path


def with_oom_score_and_rlimits(spec: dict[str, Any], inp: _Inputs) -> None:
    """oom_score_adj, never below ctx.min_oom_score_adj; the host's rlimits from ctx."""
    adj = inp.config.linux.resources.oom_score_adj
    if not -1000 <= adj <= 1000:
        raise errors.InvalidArgument(f"oom_score_adj {adj} is outside -1000..1000")
    spec["process"]["oomScoreAdj"] = max(adj, inp.ctx.min_oom_score_adj)
    if inp.ctx.rlimits:
        spec["process"]["rlimits"] = [
            {"type": kind, "soft": soft, "hard": hard}
            for kind, (soft, hard) in sorted(inp.ctx.rlimits.items())
        ]


def with_annotations(spec: dict[str, Any], inp: _Inputs) -> None:
    """Only crispy's own: nothing from the pod's annotations or the image's labels."""
    image = inp.config.image.user_specified_image or inp.config.image.image
    annotations = {}
    if inp.ctx.sandbox_container:
        annotations[ANNOTATION_CONTAINER_TYPE] = "container"
        annotations[ANNOTATION_SANDBOX_ID] = inp.ctx.pod_id
    annotations[ANNOTATION_CONTAINER_NAME] = _text(inp.config.metadata.name, "metadata.name")
    annotations[ANNOTATION_IMAGE_NAME] = _text(image, "image")
    spec["annotations"] = annotations


_OPTIONS: list[SpecOpt] = [
    with_process_args,
    with_cwd,
    with_user,
    with_env,
    with_namespaces,
    with_mounts,
    with_devices,
    with_capabilities,
    with_security_flags,
    with_seccomp,  # after the capabilities: its rules depend on them
    with_apparmor,
    with_resources,
    with_oom_score_and_rlimits,
    with_annotations,
]


def build_spec(
    config: pb.ContainerConfig,
    sandbox: pb.PodSandboxConfig,
    image_config: dict[str, Any],
    ctx: SpecContext,
    options: Iterable[SpecOpt] = _OPTIONS,
) -> dict[str, Any]:
    """The OCI runtime-spec config.json of a container; InvalidArgument for a bad input."""
    image = _image_cfg(image_config)
    sc = config.linux.security_context
    if sc.privileged and not sandbox.linux.security_context.privileged:
        raise errors.InvalidArgument(
            "security_context.privileged: the pod sandbox is not privileged"
        )
    inp = _Inputs(config, sandbox, image, ctx, sc, sc.privileged)
    spec = _new_spec(config, ctx)
    for opt in options:
        opt(spec, inp)
    return spec


def _new_spec(config: pb.ContainerConfig, ctx: SpecContext) -> dict[str, Any]:
    """What every option function starts from."""
    return {
        "ociVersion": OCI_VERSION,
        "process": {"terminal": config.tty},
        "root": {"path": ctx.rootfs, "readonly": False},
        "mounts": [],
        "linux": {"resources": {}},
    }


# -- the sandbox (infra, "pause") container ---------------------------------------------


def without_mounts(*destinations: str) -> SpecOpt:
    """An option that drops the mounts at `destinations`."""

    def opt(spec: dict[str, Any], inp: _Inputs) -> None:
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] not in destinations]

    return opt


def without_additional_gids(spec: dict[str, Any], inp: _Inputs) -> None:
    """No supplementary groups: the process has its gid alone."""
    spec["process"]["user"].pop("additionalGids", None)


def without_host_mqueue(spec: dict[str, Any], inp: _Inputs) -> None:
    """No /dev/mqueue outside a pod's own IPC namespace."""
    if not inp.ctx.ipcns:
        without_mounts("/dev/mqueue")(spec, inp)


def with_devices_denied(spec: dict[str, Any], inp: _Inputs) -> None:
    """No devices: the device cgroup denies them all."""
    spec["linux"]["resources"]["devices"] = copy.deepcopy(DEFAULT_DEVICE_RULES[:1])


def with_sandbox_annotations(spec: dict[str, Any], inp: _Inputs) -> None:
    """The container is the pod's sandbox (what sandbox runtimes read as "make it")."""
    spec["annotations"] = {
        ANNOTATION_CONTAINER_TYPE: "sandbox",
        ANNOTATION_SANDBOX_ID: inp.ctx.pod_id,
    }


def _sandbox_container() -> pb.ContainerConfig:
    """The sandbox container as a CRI container config: the image's entrypoint in the root
    dir, no capabilities, no new privileges, a read-only root, a PID namespace of its own."""
    return pb.ContainerConfig(
        working_dir="/",
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(
                capabilities=pb.Capability(drop_capabilities=["ALL"]),
                namespace_options=pb.NamespaceOption(pid=pb.CONTAINER),
                readonly_rootfs=True,
                no_new_privs=True,
            )
        ),
    )


# The container options that apply to it as they are, and its own. Unlike a container
# it gets no /sys/fs/cgroup (as containerd's sandbox), no device, no seccomp or AppArmor
# profile, no supplementary groups, no oom_score_adj and no HOSTNAME or HOME.
_SANDBOX_OPTIONS: list[SpecOpt] = [
    with_process_args,
    with_cwd,
    with_user,
    without_additional_gids,
    with_image_env,
    with_namespaces,
    with_mounts,
    without_mounts("/sys/fs/cgroup"),
    without_host_mqueue,
    with_devices_denied,
    with_capabilities,
    with_security_flags,
    with_resources,
    with_sandbox_annotations,
]


def sandbox_context(
    pod_id: str,
    rootfs: str,
    *,
    netns: str,
    ipcns: str,
    utsns: str,
    shm: str,
    cgroups_path: str,
    **kw: Any,
) -> SpecContext:
    """The SpecContext of a pod's sandbox container: its rootfs, the pod's namespaces and
    /dev/shm (a new PID namespace), its cgroup; none of the pod's files."""
    return SpecContext(
        container_id=pod_id,
        pod_id=pod_id,
        rootfs=rootfs,
        netns=netns,
        ipcns=ipcns,
        utsns=utsns,
        pid_ns="",
        shm=shm,
        resolv_conf="",
        hosts="",
        hostname_file="",
        hostname="",
        cgroups_path=cgroups_path,
        **kw,
    )


def build_sandbox_spec(
    sandbox: pb.PodSandboxConfig,
    image_config: dict[str, Any],
    ctx: SpecContext,
    options: Iterable[SpecOpt] = _SANDBOX_OPTIONS,
) -> dict[str, Any]:
    """The OCI config.json of a pod's sandbox container (`ctx` from sandbox_context),
    built by the option functions of a container's; a bad image is an InvalidArgument."""
    config = _sandbox_container()
    spec = _new_spec(config, ctx)
    try:
        image = _image_cfg(image_config)
        inp = _Inputs(config, sandbox, image, ctx, config.linux.security_context, False)
        for opt in options:
            opt(spec, inp)
    except errors.InvalidArgument as e:
        raise errors.InvalidArgument(f"the sandbox image: {e}") from None
    return spec


_EXEC_KEYS = (
    "user",
    "env",
    "cwd",
    "capabilities",
    "noNewPrivileges",
    "apparmorProfile",
    "selinuxLabel",
    "rlimits",
    "oomScoreAdj",
)


def exec_process(spec: dict[str, Any], argv: list[str], tty: bool = False) -> dict[str, Any]:
    """The OCI process for `runc exec --process`: the container's identity, new args."""
    if not argv:
        raise errors.InvalidArgument("no command to exec")
    for a in argv:
        if not isinstance(a, str):
            raise errors.InvalidArgument("exec command: arguments must be strings")
        _text(a, "exec command argument")
    proc = spec.get("process") or {}
    out: dict[str, Any] = {"terminal": tty, "args": list(argv)}
    for key in _EXEC_KEYS:
        if key in proc:
            out[key] = copy.deepcopy(proc[key])
    out.setdefault("cwd", "/")
    out.setdefault("user", {"uid": 0, "gid": 0})
    return out
