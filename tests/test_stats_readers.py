"""The readers kubelet's stats come from: cgroup v1/v2 files, writable-layer usage, netns
counters. Fake cgroup trees are laid out as the kernel lays them out; the root tests read
a real cgroup and a real network namespace."""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crispy.stats import cgroups, fs, network
from crispy.system import cgroups as sys_cgroups
from crispy.system.cgroups import CgroupVersion

MiB = 1 << 20
V1_UNLIMITED = 9223372036854771712  # PAGE_COUNTER_MAX * 4096: what v1 shows for "no limit"
CTR = "/crispy/pod1/ctr1"


def needs_root(f: Callable[..., Any]) -> Callable[..., Any]:
    f = pytest.mark.root(f)
    return pytest.mark.skipif(os.geteuid() != 0, reason="needs root")(f)


def write_tree(base: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)


# -- fake trees -----------------------------------------------------------------------------

# One container's figures, as both hierarchies would show them.
USAGE = 50 * MiB
INACTIVE_FILE = 10 * MiB
ANON = 30 * MiB
PGFAULT = 123456
PGMAJFAULT = 78
SWAP = 3 * 4096
PIDS = 3
CPU_USEC = 1_234_567
LIMIT = 100 * MiB
SWAP_LIMIT = 50 * MiB


def v2_memory_stat() -> str:
    # The key set of a 6.x kernel's memory.stat, in the kernel's order.
    keys = {
        "anon": ANON,
        "file": 15 * MiB,
        "kernel": 2 * MiB,
        "kernel_stack": 65536,
        "pagetables": 262144,
        "sec_pagetables": 0,
        "percpu": 1024,
        "sock": 0,
        "vmalloc": 0,
        "shmem": 0,
        "zswap": 0,
        "zswapped": 0,
        "file_mapped": 4 * MiB,
        "file_dirty": 0,
        "file_writeback": 0,
        "swapcached": 0,
        "anon_thp": 0,
        "file_thp": 0,
        "shmem_thp": 0,
        "inactive_anon": 25 * MiB,
        "active_anon": 5 * MiB,
        "inactive_file": INACTIVE_FILE,
        "active_file": 5 * MiB,
        "unevictable": 0,
        "slab_reclaimable": 500000,
        "slab_unreclaimable": 300000,
        "slab": 800000,
        "workingset_refault_anon": 0,
        "workingset_refault_file": 12,
        "workingset_activate_anon": 0,
        "workingset_activate_file": 0,
        "workingset_restore_anon": 0,
        "workingset_restore_file": 0,
        "workingset_nodereclaim": 0,
        "pgscan": 0,
        "pgsteal": 0,
        "pgscan_kswapd": 0,
        "pgscan_direct": 0,
        "pgscan_khugepaged": 0,
        "pgsteal_kswapd": 0,
        "pgsteal_direct": 0,
        "pgsteal_khugepaged": 0,
        "pgfault": PGFAULT,
        "pgmajfault": PGMAJFAULT,
        "pgrefill": 0,
        "pgactivate": 10,
        "pgdeactivate": 0,
        "pglazyfree": 0,
        "pglazyfreed": 0,
        "zswpin": 0,
        "zswpout": 0,
        "zswpwb": 0,
        "thp_fault_alloc": 0,
        "thp_collapse_alloc": 0,
    }
    return "".join(f"{k} {v}\n" for k, v in keys.items())


def v1_memory_stat() -> str:
    # A 6.x kernel's v1 memory.stat: the cgroup's own figures, then the hierarchical
    # total_* ones. The own figures are smaller (children hold the rest): the reader must
    # take the totals.
    own = {
        "cache": 1 * MiB,
        "rss": 1 * MiB,
        "rss_huge": 0,
        "shmem": 0,
        "mapped_file": 0,
        "dirty": 0,
        "writeback": 0,
        "workingset_refault_anon": 0,
        "workingset_refault_file": 0,
        "swap": 0,
        "swapcached": 0,
        "pgpgin": 10,
        "pgpgout": 5,
        "pgfault": 7,
        "pgmajfault": 1,
        "inactive_anon": 0,
        "active_anon": 1 * MiB,
        "inactive_file": 4096,
        "active_file": 0,
        "unevictable": 0,
    }
    totals = {
        "cache": 15 * MiB,
        "rss": ANON,
        "rss_huge": 0,
        "shmem": 0,
        "mapped_file": 4 * MiB,
        "dirty": 0,
        "writeback": 0,
        "workingset_refault_anon": 0,
        "workingset_refault_file": 12,
        "swap": SWAP,
        "swapcached": 0,
        "pgpgin": 20000,
        "pgpgout": 10000,
        "pgfault": PGFAULT,
        "pgmajfault": PGMAJFAULT,
        "inactive_anon": 25 * MiB,
        "active_anon": 5 * MiB,
        "inactive_file": INACTIVE_FILE,
        "active_file": 5 * MiB,
        "unevictable": 0,
    }
    lines = [f"{k} {v}" for k, v in own.items()]
    lines += [
        f"hierarchical_memory_limit {V1_UNLIMITED}",
        f"hierarchical_memsw_limit {V1_UNLIMITED}",
    ]
    lines += [f"total_{k} {v}" for k, v in totals.items()]
    return "\n".join(lines) + "\n"


def make_v2(root: Path, limited: bool, swap_files: bool = True) -> None:
    # The root of a unified hierarchy: cgroup.controllers is what tells v2 apart. The
    # root cgroup has no memory.current / memory.max / pids.current of its own.
    write_tree(
        root,
        {
            "cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
            "cgroup.subtree_control": "cpuset cpu io memory pids\n",
            "cgroup.procs": "1\n",
            "cpu.stat": "usage_usec 999999999\nuser_usec 1\nsystem_usec 1\n",
            "memory.stat": v2_memory_stat(),
        },
    )
    files = {
        "cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
        "cgroup.events": "populated 1\nfrozen 0\n",
        "cgroup.procs": "4242\n",
        "cpu.stat": (
            f"usage_usec {CPU_USEC}\nuser_usec 1000000\nsystem_usec 234567\n"
            "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n"
        ),
        "cpu.max": "max 100000\n",
        "memory.current": f"{USAGE}\n",
        "memory.stat": v2_memory_stat(),
        "memory.max": f"{LIMIT}\n" if limited else "max\n",
        "memory.high": "max\n",
        "memory.min": "0\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        "pids.current": f"{PIDS}\n",
        "pids.max": "max\n",
    }
    if swap_files:  # absent where the kernel has no swap accounting
        files["memory.swap.current"] = f"{SWAP}\n"
        files["memory.swap.max"] = f"{SWAP_LIMIT}\n" if limited else "max\n"
    write_tree(root / CTR.lstrip("/"), files)


def make_v1(root: Path, limited: bool, cpu_mount: str, swap_files: bool = True) -> None:
    # A tmpfs of mount points, one per controller. systemd mounts cpu and cpuacct together
    # as "cpu,cpuacct" and symlinks both names to it; elsewhere cpuacct is its own mount.
    root.mkdir(parents=True, exist_ok=True)
    if cpu_mount == "cpu,cpuacct":
        (root / "cpu,cpuacct").mkdir()
        (root / "cpu").symlink_to("cpu,cpuacct")
        (root / "cpuacct").symlink_to("cpu,cpuacct")
    else:
        (root / "cpu").mkdir()
        (root / cpu_mount).mkdir()
    for name in ("memory", "pids", "devices", "freezer"):
        write_tree(root / name, {"cgroup.procs": "1\n", "tasks": "1\n"})
    rel = CTR.lstrip("/")
    write_tree(
        root / cpu_mount / rel,
        {
            "cgroup.procs": "4242\n",
            "cpuacct.usage": f"{CPU_USEC * 1000}\n",
            "cpuacct.stat": "user 100\nsystem 23\n",
            "cpuacct.usage_percpu": f"{CPU_USEC * 1000} 0\n",
            "cpu.shares": "1024\n",
        },
    )
    limit = LIMIT if limited else V1_UNLIMITED
    mem = {
        "cgroup.procs": "4242\n",
        "memory.usage_in_bytes": f"{USAGE}\n",
        "memory.max_usage_in_bytes": f"{USAGE * 2}\n",
        "memory.limit_in_bytes": f"{limit}\n",
        "memory.soft_limit_in_bytes": f"{V1_UNLIMITED}\n",
        "memory.stat": v1_memory_stat(),
        "memory.use_hierarchy": "1\n",
        "memory.failcnt": "0\n",
    }
    if swap_files:  # memsw exists only with swap accounting (swapaccount=1)
        mem["memory.memsw.usage_in_bytes"] = f"{USAGE + SWAP}\n"
        memsw_limit = LIMIT + SWAP_LIMIT if limited else V1_UNLIMITED
        mem["memory.memsw.limit_in_bytes"] = f"{memsw_limit}\n"
    write_tree(root / "memory" / rel, mem)
    write_tree(root / "pids" / rel, {"cgroup.procs": "4242\n", "pids.current": f"{PIDS}\n"})


def expected(limited: bool) -> cgroups.CgroupStats:
    ws = USAGE - INACTIVE_FILE
    return cgroups.CgroupStats(
        timestamp=0,
        cpu_usage_ns=CPU_USEC * 1000,
        memory_usage=USAGE,
        memory_working_set=ws,
        memory_rss=ANON,
        memory_limit=LIMIT if limited else None,
        memory_available=LIMIT - ws if limited else None,
        page_faults=PGFAULT,
        major_page_faults=PGMAJFAULT,
        swap_usage=SWAP,
        swap_limit=SWAP_LIMIT if limited else None,
        pids=PIDS,
    )


def figures(st: cgroups.CgroupStats | None) -> cgroups.CgroupStats:
    assert st is not None
    return dataclasses.replace(st, timestamp=0)


@pytest.mark.parametrize("cpu_mount", ["cpu,cpuacct", "cpuacct"])
@pytest.mark.parametrize("limited", [False, True], ids=["unlimited", "limited"])
def test_v2_and_v1_readers_agree_on_equivalent_trees(
    tmp_path: Path, limited: bool, cpu_mount: str
) -> None:
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    make_v2(v2, limited)
    make_v1(v1, limited, cpu_mount)
    assert sys_cgroups.cgroup_version(str(v2)) is CgroupVersion.V2
    assert sys_cgroups.cgroup_version(str(v1)) is CgroupVersion.V1

    before = time.time_ns()
    from_v2 = cgroups.read(CTR, root=str(v2))  # the version detected from the tree
    from_v1 = cgroups.read(CTR, root=str(v1))
    assert from_v2 is not None and from_v1 is not None
    assert before <= from_v2.timestamp <= time.time_ns()
    assert figures(from_v2) == figures(from_v1) == expected(limited)
    # An explicit version reads the same; a path without its leading slash too.
    assert figures(cgroups.read(CTR.lstrip("/"), str(v1), CgroupVersion.V1)) == expected(limited)


def test_gone_cgroup_and_empty_path_are_none(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    make_v2(v2, limited=False)
    make_v1(v1, limited=False, cpu_mount="cpu,cpuacct")
    for root in (v2, v1):
        assert cgroups.read("/crispy/pod1/gone", root=str(root)) is None
        assert cgroups.read("", root=str(root)) is None  # never the root cgroup by accident
    with pytest.raises(ValueError):
        cgroups.read("/crispy/../../etc", root=str(v2))


def test_missing_files_leave_their_fields_none(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    make_v2(v2, limited=True, swap_files=False)
    make_v1(v1, limited=True, cpu_mount="cpuacct", swap_files=False)
    (v2 / CTR.lstrip("/") / "pids.current").unlink()  # pids controller not enabled
    (v2 / CTR.lstrip("/") / "memory.stat").unlink()
    shutil.rmtree(v1 / "pids" / CTR.lstrip("/"))  # the cgroup is missing from one hierarchy
    (v1 / "memory" / CTR.lstrip("/") / "memory.stat").unlink()
    want = dataclasses.replace(
        expected(limited=True),
        swap_usage=None,
        swap_limit=None,
        pids=None,
        memory_rss=None,
        page_faults=None,
        major_page_faults=None,
        memory_working_set=USAGE,  # no inactive_file to take off, as cAdvisor
        memory_available=LIMIT - USAGE,
    )
    assert figures(cgroups.read(CTR, root=str(v2))) == want
    assert figures(cgroups.read(CTR, root=str(v1))) == want


def test_working_set_never_below_zero(tmp_path: Path) -> None:
    make_v2(tmp_path, limited=True)
    (tmp_path / CTR.lstrip("/") / "memory.current").write_text(f"{INACTIVE_FILE - 4096}\n")
    st = cgroups.read(CTR, root=str(tmp_path))
    assert st is not None and st.memory_working_set == 0 and st.memory_available == LIMIT


# -- a real cgroup ----------------------------------------------------------------------------

CHILD = """
import sys, time
sys.stdin.readline()              # moved into the cgroup: charges land there from now on
b = bytearray(20 << 20)
for i in range(0, len(b), 4096):  # touch every page: calloc'd pages cost nothing until then
    b[i] = 1
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("ready", flush=True)
sys.stdin.readline()
"""


@needs_root
def test_real_cgroup_of_a_busy_child() -> None:
    path = f"/crispytest-stats-{secrets.token_hex(4)}"
    root = sys_cgroups.CGROUP_ROOT
    if sys_cgroups.cgroup_version() is CgroupVersion.V2:
        roots = [root]
    else:
        roots = [os.path.join(root, n) for n in ("memory", "cpuacct", "pids")]
    sys_cgroups.create(path, roots)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        for r in roots:
            with open(os.path.join(r, path.lstrip("/"), "cgroup.procs"), "w") as f:
                f.write(str(child.pid))
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ready"
        st = cgroups.read(path)
        assert st is not None
        assert st.cpu_usage_ns is not None and st.cpu_usage_ns > 200_000_000
        assert st.memory_usage is not None and st.memory_usage >= 20 * MiB
        assert st.memory_rss is not None and st.memory_rss >= 20 * MiB
        assert st.memory_working_set is not None and 0 < st.memory_working_set <= st.memory_usage
        assert st.page_faults is not None and st.page_faults >= (20 * MiB) // 4096
        assert st.memory_limit is None and st.memory_available is None
        assert st.pids is not None and st.pids >= 1
    finally:
        child.kill()
        child.wait()
        busy = sys_cgroups.remove(path, roots)
    assert not busy
    assert cgroups.read(path) is None


# -- filesystem usage ---------------------------------------------------------------------------


def blocks(*paths: Path) -> int:
    return sum(os.lstat(p).st_blocks * 512 for p in paths)


@pytest.fixture
def layer(tmp_path: Path) -> Iterator[Path]:
    """An upper dir: a 10 MiB file and a hardlink to it, a symlink to a big file outside."""
    top = tmp_path / "upper"
    (top / "etc").mkdir(parents=True)
    big = top / "etc" / "big"
    big.write_bytes(os.urandom(10 * MiB))  # real data: allocated blocks, not a hole
    os.link(big, top / "hardlink")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "huge").write_bytes(os.urandom(2 * MiB))
    (top / "to-outside").symlink_to(outside)
    (top / "to-big").symlink_to(big)
    yield top
    fs.forget(str(top))


def test_usage_counts_blocks_once_per_inode_and_follows_no_symlink(layer: Path) -> None:
    got = fs.usage(str(layer))
    unique = [layer, layer / "etc", layer / "etc" / "big", layer / "to-outside", layer / "to-big"]
    assert got == (blocks(*unique), len(unique))
    assert 10 * MiB <= got[0] < 11 * MiB
    du = shutil.which("du")
    if du and b"GNU" in subprocess.run([du, "--version"], capture_output=True).stdout:
        # du -x counts the same: allocated bytes, hardlinks once, no symlink followed.
        for flag, want in (("-B1", got[0]), ("--inodes", got[1])):
            out = subprocess.run([du, "-sx", flag, str(layer)], capture_output=True, text=True)
            assert int(out.stdout.split()[0]) == want


def test_usage_of_a_single_file_and_of_nothing(layer: Path, tmp_path: Path) -> None:
    assert fs.usage(str(layer / "etc" / "big")) == (blocks(layer / "etc" / "big"), 1)
    with pytest.raises(FileNotFoundError):
        fs.usage(str(tmp_path / "gone"))
    assert fs.usage_cached(str(tmp_path / "gone"), 10.0) is None


class _Listing:
    """What os.scandir returns, from entries already read."""

    def __init__(self, entries: list[os.DirEntry[str]]) -> None:
        self.entries = entries

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __iter__(self) -> Iterator[os.DirEntry[str]]:
        return iter(self.entries)


def test_usage_skips_entries_that_vanish_while_walking(
    layer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A running container writes while the walk goes on: a file is deleted after its dir
    # was listed but before it was stat'ed, and a dir is removed before it is entered.
    victim_file = layer / "etc" / "tmpfile"
    victim_file.write_bytes(os.urandom(MiB))
    victim_dir = layer / "etc" / "tmpdir"
    victim_dir.mkdir()
    before = fs.usage(str(layer))
    dir_blocks = blocks(victim_dir)
    real = os.scandir

    def scandir(path: str) -> Any:
        if path == str(victim_dir):
            victim_dir.rmdir()
        if path == str(layer / "etc"):
            with real(path) as it:
                entries = list(it)
            victim_file.unlink()
            return _Listing(entries)
        return real(path)

    monkeypatch.setattr(fs.os, "scandir", scandir)
    got = fs.usage(str(layer))
    monkeypatch.undo()
    after = fs.usage(str(layer))
    # The file is not counted; the dir was stat'ed before it went, so it still is.
    assert got == (after[0] + dir_blocks, after[1] + 1)
    assert got[0] <= before[0] - MiB and got[1] == before[1] - 1


def test_usage_cached_walks_at_most_once_per_max_age(
    layer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    walks: list[str] = []
    real = fs.usage

    def counting(path: str) -> tuple[int, int]:
        walks.append(path)
        return real(path)

    monkeypatch.setattr(fs, "_clock", lambda: now[0])
    monkeypatch.setattr(fs, "usage", counting)
    first = fs.usage_cached(str(layer), 10.0)
    assert first == real(str(layer)) and len(walks) == 1
    (layer / "new").write_bytes(os.urandom(MiB))
    now[0] += 9.0
    assert fs.usage_cached(str(layer), 10.0) == first and len(walks) == 1
    now[0] += 1.5
    second = fs.usage_cached(str(layer), 10.0)
    assert len(walks) == 2
    assert second is not None and first is not None
    assert second[0] >= first[0] + MiB and second[1] == first[1] + 1
    assert fs.usage_cached(str(layer / "etc"), 10.0) is not None  # each path its own entry
    assert len(walks) == 3
    fs.forget(str(layer / "etc"))


def test_usage_cached_concurrent_callers_share_one_walk(
    layer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    walks: list[str] = []

    def slow(path: str) -> tuple[int, int]:
        walks.append(path)
        time.sleep(0.2)
        return (1, 1)

    monkeypatch.setattr(fs, "usage", slow)
    results: list[tuple[int, int] | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(fs.usage_cached(str(layer), 60.0)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(1, 1)] * 4 and len(walks) == 1


# -- network ------------------------------------------------------------------------------------

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 21789406034 1140083    0    0    0     0          0         0 21789406034 1140083    0    0    0     0       0          0
  eth0: 636148833   18339    2    3    0     0          0         0  1020387    9826    5    7    0     0       0          0
crispy0:     360       5    0    0    0     0          0         5      524       6    0    2    0     0       0          0
veth1234abcd:123456789012   18339    0    0    0     0          0         0  1020387    9826    0    0    0     0       0          0
"""  # noqa: E501  (the kernel's lines, verbatim)


def test_parse_net_dev() -> None:
    def ifs(name: str, *n: int) -> network.IfStats:
        # n: rx bytes packets errs drop, tx bytes packets errs drop
        return network.IfStats(
            name,
            rx_bytes=n[0],
            rx_packets=n[1],
            rx_errors=n[2],
            rx_dropped=n[3],
            tx_bytes=n[4],
            tx_packets=n[5],
            tx_errors=n[6],
            tx_dropped=n[7],
        )

    assert network.parse_net_dev(NET_DEV) == [
        ifs("eth0", 636148833, 18339, 2, 3, 1020387, 9826, 5, 7),
        ifs("crispy0", 360, 5, 0, 0, 524, 6, 0, 2),
        ifs("veth1234abcd", 123456789012, 18339, 0, 0, 1020387, 9826, 0, 0),  # wide
    ]
    assert network.parse_net_dev("") == []


def test_interfaces_of_a_gone_or_unpinned_netns(tmp_path: Path) -> None:
    assert network.interfaces(str(tmp_path / "gone")) == []
    # What stays when the pin's bind mount is gone: the empty file it covered.
    (tmp_path / "net").write_bytes(b"")
    assert network.interfaces(str(tmp_path / "net")) == []


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, timeout=10)


def free_subnet() -> int:
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    for _ in range(50):
        x = secrets.randbelow(250) + 1
        if f"10.254.{x}." not in used:
            return x
    pytest.skip("no free 10.254.x.0/30")


@needs_root
@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")
def test_interfaces_of_a_real_netns() -> None:
    tag = secrets.token_hex(3)
    ns, host_end, ns_end = f"crispytest-{tag}", f"ctsa{tag}", f"ctsb{tag}"
    x = free_subnet()
    ip("netns", "add", ns)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        ip("link", "set", ns_end, "netns", ns)
        ip("addr", "add", f"10.254.{x}.1/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("-n", ns, "addr", "add", f"10.254.{x}.2/30", "dev", ns_end)
        ip("-n", ns, "link", "set", ns_end, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        own_ns = os.readlink("/proc/thread-self/ns/net")

        def rx() -> int:
            found = {i.name: i for i in network.interfaces(f"/run/netns/{ns}")}
            assert set(found) == {ns_end}  # lo is left out
            return found[ns_end].rx_bytes

        start = rx()
        grown = False
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not grown:
                s.sendto(b"x" * 1000, (f"10.254.{x}.2", 9))
                time.sleep(0.02)
                grown = rx() >= start + 3000
        assert grown
        # Reading joined the netns in another thread only: this one never moved.
        assert os.readlink("/proc/thread-self/ns/net") == own_ns
    finally:
        ip("link", "del", host_end, check=False)
        ip("netns", "del", ns, check=False)
    assert network.interfaces(f"/run/netns/{ns}") == []
