"""Users and groups of a container image: its /etc/passwd and /etc/group, read safely.

The files are the image's, so nothing in them is trusted: they are read from the
mounted rootfs with every symlink followed by hand and confined to it (an image's
`/etc/passwd -> /etc/shadow` names the image's own shadow file, never the host's),
only if they are regular files (a device or FIFO is never opened), and only up to
MAX_FILE_SIZE. Lines are parsed leniently, as runc's user package does: a malformed
line is skipped, the first match wins.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from crispy import errors
from crispy.system.beneath import BeneathError, open_beneath

MAX_FILE_SIZE = 16 << 20  # an /etc/passwd or /etc/group bigger than this is refused
MAX_ID = (1 << 31) - 1  # uids and gids above this are refused, as kubelet does


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: list[int]  # the primary gid first, as containerd lists them
    home: str  # "/" when the user has no passwd entry or no home
    name: str  # "" when the uid has no passwd entry


def check_id(value: int, what: str) -> int:
    """A uid or gid from a request or an image: 0..2^31-1, else InvalidArgument."""
    if not 0 <= value <= MAX_ID:
        raise errors.InvalidArgument(f"{what} {value} is out of range (0..{MAX_ID})")
    return value


def read_limited(path_fd: int, st: os.stat_result, what: str, limit: int = MAX_FILE_SIZE) -> str:
    """The text of the regular file an O_PATH fd refers to, refused above `limit` bytes."""
    if not stat.S_ISREG(st.st_mode):
        raise errors.InvalidArgument(f"{what} is not a regular file")
    if st.st_size > limit:
        raise errors.InvalidArgument(
            f"{what} is {st.st_size} bytes, more than the {limit} bytes crispy reads"
        )
    fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)  # the file may have grown since the fstat
    if len(data) > limit:
        raise errors.InvalidArgument(f"{what} is more than the {limit} bytes crispy reads")
    return data.decode("utf-8", "replace")


def _lines(text: str) -> Iterable[list[str]]:
    for raw in text.split("\n"):
        line = raw.strip()
        if not line or line[0] in "#+-":  # comments and NIS compat entries
            continue
        yield line.split(":")


def _int(s: str) -> int | None:
    return int(s) if s.isascii() and s.isdigit() else None


def parse_passwd(text: str) -> list[PasswdEntry]:
    out = []
    for f in _lines(text):
        if len(f) < 4:
            continue
        uid, gid = _int(f[2]), _int(f[3])
        if uid is None or gid is None:
            continue
        out.append(PasswdEntry(f[0], uid, gid, f[5] if len(f) > 5 else ""))
    return out


def parse_group(text: str) -> list[GroupEntry]:
    out = []
    for f in _lines(text):
        if len(f) < 3:
            continue
        gid = _int(f[2])
        if gid is None:
            continue
        members = tuple(m.strip() for m in f[3].split(",") if m.strip()) if len(f) > 3 else ()
        out.append(GroupEntry(f[0], gid, members))
    return out


class ImageAccounts:
    """The users and groups of one rootfs, each file read once and only when needed."""

    def __init__(self, rootfs: str) -> None:
        self.rootfs = rootfs
        self._passwd: list[PasswdEntry] | None = None
        self._group: list[GroupEntry] | None = None

    def _read(self, rel: str) -> str | None:
        what = f"/{rel} of the image"
        try:
            root = os.open(self.rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise errors.FailedPrecondition(
                f"container rootfs {self.rootfs}: {e.strerror}"
            ) from None
        try:
            found = open_beneath(root, rel, what)
        except BeneathError as e:
            raise errors.InvalidArgument(str(e)) from None
        except OSError as e:
            raise errors.InvalidArgument(f"{what}: {e.strerror}") from None
        finally:
            os.close(root)
        if found is None:
            return None
        fd, st = found
        try:
            return read_limited(fd, st, what)
        finally:
            os.close(fd)

    def passwd(self) -> list[PasswdEntry]:
        if self._passwd is None:
            self._passwd = parse_passwd(self._read("etc/passwd") or "")
        return self._passwd

    def groups(self) -> list[GroupEntry]:
        if self._group is None:
            self._group = parse_group(self._read("etc/group") or "")
        return self._group

    def user_by_name(self, name: str) -> PasswdEntry | None:
        return next((u for u in self.passwd() if u.name == name), None)

    def user_by_uid(self, uid: int) -> PasswdEntry | None:
        return next((u for u in self.passwd() if u.uid == uid), None)

    def group_by_name(self, name: str) -> GroupEntry | None:
        return next((g for g in self.groups() if g.name == name), None)

    def member_of(self, username: str) -> list[int]:
        """The gids of the groups that list `username` as a member."""
        return [g.gid for g in self.groups() if username in g.members]


def resolve(
    rootfs: str,
    user: int | str,
    group: int | str | None = None,
    *,
    supplemental: Sequence[int] = (),
    image_groups: bool = True,
    user_field: str = "user",
    group_field: str = "group",
) -> ResolvedUser:
    """Resolve a container's user against the image's /etc/passwd and /etc/group.

    `user` is a uid, or a name that must be in /etc/passwd; a uid without an entry runs
    with gid 0 and HOME "/". `group` (a gid, or a name that must be in /etc/group)
    replaces the user's primary group. The additional gids are the primary gid, then
    the groups listing the user as a member (unless not `image_groups`: the CRI's
    Strict policy), then `supplemental`, without repeats. Errors name the fields.
    """
    acc = ImageAccounts(rootfs)
    if isinstance(user, int):
        uid = check_id(user, user_field)
        entry = acc.user_by_uid(uid)
    else:
        entry = acc.user_by_name(user)
        if entry is None:
            raise errors.InvalidArgument(
                f"{user_field}: no user {user!r} in the image's /etc/passwd"
            )
        uid = check_id(entry.uid, f"{user_field} {user!r}: uid")
    if group is None:
        gid = check_id(entry.gid, f"{user_field}: primary gid") if entry else 0
    elif isinstance(group, int):
        gid = check_id(group, group_field)
    else:
        g = acc.group_by_name(group)
        if g is None:
            raise errors.InvalidArgument(
                f"{group_field}: no group {group!r} in the image's /etc/group"
            )
        gid = check_id(g.gid, f"{group_field} {group!r}: gid")
    gids = [gid]
    if image_groups and entry is not None:
        gids += [
            check_id(g, f"{user_field}: a group of {entry.name!r}")
            for g in acc.member_of(entry.name)
        ]
    gids += [check_id(g, "supplemental_groups") for g in supplemental]
    return ResolvedUser(
        uid=uid,
        gid=gid,
        additional_gids=list(dict.fromkeys(gids)),
        home=(entry.home if entry and entry.home else "/"),
        name=entry.name if entry else "",
    )
