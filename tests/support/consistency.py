"""Does what a crispyd lists match what exists on the host? For crash and fault tests.

`problems(daemon, cri, net)` compares the daemon's answers (ListPodSandbox, ListContainers,
ListImages) and its database (read-only) with the host, and returns one line per mismatch:

- every listed pod and container exists (state dirs, pinned namespaces of ready pods, the
  shim of a pod with containers that run), and every pod dir, namespace pin, container
  bundle, OCI runtime container (runc's and crun's state), mount under the daemon's dirs,
  shim, cgroup under the test's cgroup parent and IP lease on the host belongs to a listed
  object;
- every bridge port (veth) of the test network leads into a listed pod's network namespace;
- every content blob's bytes match its digest, every image's blobs and layer snapshots are
  there, every snapshot dir belongs to a snapshot row (and the other way round), and no
  blob or snapshot is garbage (kept by no image and no container).

An empty list means consistent. Only this daemon's objects are looked at (its own root and
state dirs, and its test network), so other test sessions on the host never count.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path

from crispy.api import pb
from crispy.cli.client import CriClient
from support.daemon import Crispyd
from support.pods import TestNetwork

CGROUP_ROOT = Path("/sys/fs/cgroup")


def shims(state: Path) -> dict[int, str]:
    """pid -> its log, of every crispy-shim process of the daemon at `state`. A shim writes
    its log (its stderr) in its pod's dir, `<state>/pods/<id>/shim.log`; the zygote its own
    under `<state>`. (Their sockets are bound through /proc/self/fd, so their names tell
    nothing.)"""
    out: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "crispy-shim":
                continue
            log = os.readlink(entry / "fd" / "2").removesuffix(" (deleted)")
        except OSError:
            continue  # gone meanwhile
        if log.startswith(str(state) + "/"):
            out[int(entry.name)] = log
    return out


def _mount_points(base: Path) -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split(" ")[4].replace("\\040", " ")
        if point.startswith(str(base) + "/"):
            points.append(point)
    return points


def _db(daemon: Crispyd) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{daemon.root / 'crispy.db'}?mode=ro", uri=True)


def _owner(point: str, daemon: Crispyd) -> tuple[str, str] | None:
    """('pod'|'container', id) of a path under the daemon's state dir, else None."""
    rel = Path(point).relative_to(daemon.state).parts
    if len(rel) >= 2 and rel[0] in ("pods", "ns"):
        return "pod", rel[1]
    if len(rel) >= 2 and rel[0] == "containers":
        return "container", rel[1]
    return None


def _host_objects(daemon: Crispyd, pods: set[str], ctrs: set[str]) -> list[str]:
    found = []
    for kind, top in (("pod", "pods"), ("pod", "ns"), ("container", "containers")):
        d = daemon.state / top
        for name in sorted(os.listdir(d)) if d.is_dir() else []:
            if name not in (pods if kind == "pod" else ctrs):
                found.append(f"{top}/{name}: no listed {kind} owns it")
    for point in _mount_points(daemon.base):
        if point.startswith(str(daemon.state) + "/"):
            owner = _owner(point, daemon)
            if owner is None or owner[1] not in (pods if owner[0] == "pod" else ctrs):
                found.append(f"mount {point}: no listed pod or container owns it")
        elif not point.startswith(str(daemon.root / "snapshots") + "/"):
            found.append(f"mount {point}: outside the daemon's state and snapshots")
    for runtime in ("runc", "crun"):
        root = daemon.state / runtime
        if not root.is_dir():
            continue
        out = subprocess.run(
            [runtime, "--root", str(root), "list", "-q"], capture_output=True, text=True
        ).stdout
        for cid in out.split():
            if cid not in pods and cid not in ctrs:  # an infra container has its pod's id
                found.append(f"{runtime} container {cid}: no listed pod or container owns it")
    for pid, log in shims(daemon.state).items():
        owner = _owner(log, daemon)
        if owner is not None and (owner[0] != "pod" or owner[1] not in pods):
            found.append(f"shim {pid} ({log}): no listed pod owns it")
    return found


# A listed pod, its status and its verbose info: asked once, read by every check.
Listed = list[tuple[pb.PodSandbox, pb.PodSandboxStatus, dict]]


def _statuses(cri: CriClient) -> Listed:
    out = []
    for pod in cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
        resp = cri.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id, verbose=True)
        )
        out.append((pod, resp.status, json.loads(resp.info["info"])))
    return out


def _cgroups(listed: Listed, parent: str) -> list[str]:
    """Every cgroup dir below `parent` (in any hierarchy) must hold a listed pod's cgroup."""
    wanted, owned = set(), set()
    for _, _, info in listed:
        path = Path(info["cgroupPath"].lstrip("/"))
        owned.add(path)  # its containers' cgroups are below it
        wanted |= set(path.parents)
    found = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        top = hierarchy / parent.strip("/")
        for d, subdirs, _ in os.walk(top) if top.is_dir() else []:
            rel = Path(d).relative_to(hierarchy)
            if rel in owned or rel not in wanted:
                if rel not in owned:
                    found.append(f"cgroup {d}: holds no listed pod's cgroup")
                subdirs.clear()
    return found


def _pods_exist(daemon: Crispyd, cri: CriClient, listed: Listed) -> list[str]:
    found = []
    points = set(_mount_points(daemon.base))
    serving = set(shims(daemon.state).values())
    for pod, _, info in listed:
        if not (daemon.state / "pods" / pod.id).is_dir():
            found.append(f"pod {pod.id}: its state dir is missing")
        if pod.state == pb.SANDBOX_READY:
            for kind, ns in info["namespaces"].items():
                if ns and ns not in points:
                    found.append(f"pod {pod.id}: ready, but its {kind} namespace is not pinned")
    for c in cri.runtime.ListContainers(pb.ListContainersRequest()).containers:
        if c.state == pb.CONTAINER_RUNNING:
            log = str(daemon.state / "pods" / c.pod_sandbox_id / "shim.log")
            if log not in serving:
                found.append(f"container {c.id}: running, but its pod's shim is gone")
    return found


def _leases(net: TestNetwork, listed: Listed) -> list[str]:
    ips = {status.network.ip for _, status, _ in listed if status.network.ip}
    held = net.allocated()
    found = [f"IP {ip}: leased, but no listed pod has it" for ip in sorted(held - ips)]
    found += [f"IP {ip}: a listed pod has it, but it is not leased" for ip in sorted(ips - held)]
    return found


def _veths(net: TestNetwork, listed: Listed) -> list[str]:
    ports = Path("/sys/class/net") / net.bridge / "brif"
    have = {
        int((Path("/sys/class/net") / name / "ifindex").read_text()): name
        for name in (os.listdir(ports) if ports.is_dir() else [])
    }
    for _, _, info in listed:
        netns = info["namespaces"].get("net")
        if not netns or not os.path.exists(netns):
            continue
        out = subprocess.run(
            ["nsenter", f"--net={netns}", "ip", "-o", "link", "show", "eth0"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        m = re.search(r"eth0@if(\d+)", out)
        if m:
            have.pop(int(m.group(1)), None)
    return [f"veth {name}: on the test bridge, but in no listed pod" for name in have.values()]


def _content(daemon: Crispyd) -> list[str]:
    found = []
    blobs = daemon.root / "content" / "blobs" / "sha256"
    have = set(os.listdir(blobs)) if blobs.is_dir() else set()
    for name in sorted(have):
        digest = hashlib.sha256((blobs / name).read_bytes()).hexdigest()
        if digest != name:
            found.append(f"blob sha256:{name}: its bytes hash to sha256:{digest}")
    with _db(daemon) as db:
        for image_id, digest in db.execute("SELECT image_id, digest FROM image_blobs"):
            if digest.removeprefix("sha256:") not in have:
                found.append(f"image {image_id}: blob {digest} is missing")
        rows = {
            sid: (key, parent, kind)
            for sid, key, parent, kind in db.execute("SELECT id, key, parent, kind FROM snapshots")
        }
        by_key = {key: sid for sid, (key, _, _) in rows.items()}
        for image_id, chain in db.execute("SELECT id, chain_id FROM images"):
            sid = by_key.get(chain) if chain else None
            if chain and (sid is None or rows[sid][2] != "committed"):
                found.append(f"image {image_id}: its top layer {chain} is not committed")
            while sid is not None:  # every layer below it, too
                if not (daemon.root / "snapshots" / str(sid)).is_dir():
                    found.append(f"image {image_id}: snapshot {sid} has no dir")
                sid = rows[sid][1]
        referenced = {
            d.removeprefix("sha256:") for (d,) in db.execute("SELECT digest FROM image_blobs")
        }
        found += [f"blob sha256:{n}: no image holds it" for n in sorted(have - referenced)]
        kept: set[int] = set()
        chains = {c for (c,) in db.execute("SELECT chain_id FROM images") if c}
        for sid, (key, _, kind) in rows.items():
            if kind == "active" or key in chains:
                below: int | None = sid
                while below is not None and below not in kept:
                    kept.add(below)
                    below = rows[below][1] if below in rows else None
        found += [
            f"snapshot {sid} ({rows[sid][0]}): no image or container holds it"
            for sid in sorted(set(rows) - kept)
        ]
    snaps = daemon.root / "snapshots"
    dirs = {int(n) for n in os.listdir(snaps) if n.isdigit()} if snaps.is_dir() else set()
    found += [f"snapshot dir {n}: no snapshot row" for n in sorted(dirs - set(rows))]
    found += [
        f"snapshot {sid} ({rows[sid][0]}): no dir"
        for sid in sorted(set(rows) - dirs)
        if rows[sid][2] != "preparing"
    ]
    return found


def problems(
    daemon: Crispyd, cri: CriClient, net: TestNetwork | None = None, cgroup_parent: str = ""
) -> list[str]:
    """Every way the daemon's view and the host disagree (empty: consistent). Cgroups are
    checked below `cgroup_parent`, which the test's pods must use: the default `/crispy/<pod>`
    cgroups are shared by every crispyd on the host, so they can't be told apart."""
    listed = _statuses(cri)
    ctrs = {c.id for c in cri.runtime.ListContainers(pb.ListContainersRequest()).containers}
    found = _host_objects(daemon, {pod.id for pod, _, _ in listed}, ctrs)
    found += _pods_exist(daemon, cri, listed)
    if net is not None:
        found += _leases(net, listed)
        found += _veths(net, listed)
    if cgroup_parent:
        found += _cgroups(listed, cgroup_parent)
    return found + _content(daemon)
