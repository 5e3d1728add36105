"""The readers behind ListPodSandboxMetrics, on fixture trees laid out as the kernel lays
them out: cgroup v1 (with a hybrid host's unified mount) and v2, /proc, /sys and
mountinfo; then the cAdvisor rows made from what they read (zeros kept, missing left out)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crispy.api import pb
from crispy.containers.record import Container
from crispy.sandbox.pod import Pod
from crispy.stats import cadvisor, cgroup_v1, cgroup_v2, cgroups, devices, procs
from crispy.stats.cgroups import CgroupExtra, Pressure
from crispy.stats.network import IfStats
from crispy.stats.service import ContainerSample, PodSample
from crispy.system.cgroups import CgroupVersion

MiB = 1 << 20
V1_UNLIMITED = 9223372036854771712
CTR = "/crispy/pod1/ctr1"
REL = CTR.lstrip("/")


def write_tree(base: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)


PSI = {
    "cpu.pressure": "some avg10=1.00 avg60=0.50 avg300=0.10 total=2500000\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\n",
    "memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    "io.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=7000001\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=6000000\n",
}
PSI_EXPECTED = {
    "cpu": Pressure(2500000, 1500000),
    "memory": Pressure(0, 0),
    "io": Pressure(7000001, 6000000),
}


def blkio_file(values: dict[str, int]) -> str:
    # one device, every operation the kernel lists, then the grand total
    lines = [f"254:0 {op} {v}" for op, v in values.items()]
    return "\n".join([*lines, f"Total {values['Total']}"]) + "\n"


def make_v1(root: Path, zero: bool = False) -> None:
    """A hybrid host: one mount per v1 controller and the v2 hierarchy at unified/."""
    z = 0 if zero else 1
    write_tree(
        root / "cpu" / REL,
        {
            "cpu.stat": f"nr_periods {50 * z}\nnr_throttled {20 * z}\n"
            f"throttled_time {3_500_000_000 * z}\nnr_bursts 0\nburst_time 0\n",
            "cpu.cfs_period_us": "100000\n",
            "cpu.cfs_quota_us": "20000\n" if not zero else "-1\n",
            "cpu.shares": "512\n",
        },
    )
    write_tree(
        root / "cpuacct" / REL,
        {
            "cpuacct.usage": f"{5_000_000_000 * z}\n",
            "cpuacct.usage_user": f"{3_000_000_000 * z}\n",
            "cpuacct.usage_sys": f"{2_000_000_000 * z}\n",
        },
    )
    stat = {
        "cache": 1 * MiB,
        "rss": 2 * MiB,
        "mapped_file": 0,
        "pgfault": 70,
        "pgmajfault": 1,
        "inactive_file": 4096,
    }
    totals = {
        "cache": 15 * MiB,
        "rss": 30 * MiB,
        "mapped_file": 4 * MiB,
        "pgfault": 7000,
        "pgmajfault": 12,
        "inactive_file": 10 * MiB,
    }
    mem_stat = [f"{k} {v * z}" for k, v in stat.items()]
    mem_stat += [f"total_{k} {v * z}" for k, v in totals.items()]
    write_tree(
        root / "memory" / REL,
        {
            "memory.usage_in_bytes": f"{50 * MiB * z}\n",
            "memory.limit_in_bytes": f"{V1_UNLIMITED}\n",
            "memory.stat": "\n".join(mem_stat) + "\n",
            "memory.failcnt": f"{4 * z}\n",
            "memory.max_usage_in_bytes": f"{60 * MiB * z}\n",
            "memory.kmem.usage_in_bytes": f"{3 * MiB * z}\n",
            "memory.oom_control": f"oom_kill_disable 0\nunder_oom 0\noom_kill {2 * z}\n",
            "memory.soft_limit_in_bytes": f"{V1_UNLIMITED}\n",
            "memory.memsw.limit_in_bytes": f"{256 * MiB}\n",
            "memory.memsw.usage_in_bytes": f"{50 * MiB * z}\n",
        },
    )
    write_tree(root / "pids" / REL, {"pids.current": "5\n", "pids.max": "max\n"})
    io = {"Read": 4096, "Write": 8192, "Sync": 8192, "Async": 4096, "Discard": 0}
    ios = {"Read": 1, "Write": 2, "Sync": 2, "Async": 1, "Discard": 0}
    write_tree(
        root / "blkio" / REL,
        {
            "blkio.throttle.io_service_bytes_recursive": blkio_file(
                {k: v * z for k, v in io.items()} | {"Total": 12288 * z}
            ),
            "blkio.throttle.io_serviced_recursive": blkio_file(
                {k: v * z for k, v in ios.items()} | {"Total": 3 * z}
            ),
        },
    )
    write_tree(
        root / "hugetlb" / REL,
        {
            "hugetlb.2MB.usage_in_bytes": f"{4 * MiB * z}\n",
            "hugetlb.2MB.max_usage_in_bytes": f"{8 * MiB * z}\n",
            "hugetlb.2MB.limit_in_bytes": f"{V1_UNLIMITED}\n",
            "hugetlb.2MB.rsvd.usage_in_bytes": "0\n",  # reservations: not usage
            "hugetlb.1GB.usage_in_bytes": "0\n",
            "hugetlb.1GB.max_usage_in_bytes": "0\n",
        },
    )
    write_tree(root / "unified" / REL, PSI if not zero else {})


def make_v2(root: Path) -> None:
    write_tree(root, {"cgroup.controllers": "cpuset cpu io memory hugetlb pids\n"})
    mem_stat = {
        "anon": 30 * MiB,
        "file": 15 * MiB,
        "kernel": 3 * MiB,
        "file_mapped": 4 * MiB,
        "inactive_file": 10 * MiB,
        "pgfault": 7000,
        "pgmajfault": 12,
    }
    write_tree(
        root / REL,
        {
            "cpu.stat": "usage_usec 5000000\nuser_usec 3000000\nsystem_usec 2000000\n"
            "nr_periods 50\nnr_throttled 20\nthrottled_usec 3500000\n"
            "nr_bursts 0\nburst_usec 0\n",
            "cpu.max": "20000 100000\n",
            "cpu.weight": "20\n",
            "memory.current": f"{50 * MiB}\n",
            "memory.max": "max\n",
            "memory.stat": "".join(f"{k} {v}\n" for k, v in mem_stat.items()),
            "memory.peak": f"{60 * MiB}\n",
            "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\noom_group_kill 0\n",
            "memory.min": "0\n",
            "memory.swap.max": f"{256 * MiB}\n",
            "memory.swap.current": "0\n",
            "pids.current": "5\n",
            "pids.max": "max\n",
            "io.stat": "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"
            "7:0 rbytes=0 wbytes=0 rios=0 wios=0 dbytes=0 dios=0\n",
            "hugetlb.2MB.current": f"{4 * MiB}\n",
            "hugetlb.2MB.max": "max\n",
            "hugetlb.2MB.rsvd.current": "0\n",
            **PSI,
        },
    )


def extra(root: Path, version: CgroupVersion) -> CgroupExtra:
    st = cgroups.read(CTR, str(root), version, extra=True)
    assert st is not None and st.extra is not None
    return st.extra


def test_v1_extra_figures(tmp_path: Path) -> None:
    make_v1(tmp_path)
    x = extra(tmp_path, CgroupVersion.V1)
    assert x == CgroupExtra(
        cpu_user_ns=3_000_000_000,
        cpu_system_ns=2_000_000_000,
        cfs_periods=50,
        cfs_throttled_periods=20,
        cfs_throttled_ns=3_500_000_000,
        cpu_period_us=100000,
        cpu_quota_us=20000,
        cpu_shares=512,
        memory_cache=15 * MiB,  # the hierarchical total_*, as the other v1 figures
        memory_mapped_file=4 * MiB,
        memory_kernel=3 * MiB,
        memory_max_usage=60 * MiB,
        memory_failcnt=4,
        oom_kills=2,
        memory_reservation=0,  # unlimited
        memory_swap_limit=256 * MiB,
        own_pgfault=70,
        own_pgmajfault=1,
        pids_max=0,  # unlimited
        io_bytes={
            (254, 0): {
                "Read": 4096,
                "Write": 8192,
                "Sync": 8192,
                "Async": 4096,
                "Discard": 0,
                "Total": 12288,
            }
        },
        io_ops={(254, 0): {"Read": 1, "Write": 2, "Sync": 2, "Async": 1, "Discard": 0, "Total": 3}},
        pressure=PSI_EXPECTED,  # from the hybrid host's unified mount
        hugetlb={"1GB": (0, 0), "2MB": (4 * MiB, 8 * MiB)},
    )
    # Without extra=True none of this is read (ListContainerStats doesn't pay for it).
    st = cgroups.read(CTR, str(tmp_path), CgroupVersion.V1)
    assert st is not None and st.extra is None


def test_v2_extra_figures(tmp_path: Path) -> None:
    make_v2(tmp_path)
    x = extra(tmp_path, CgroupVersion.V2)
    assert x == CgroupExtra(
        cpu_user_ns=3_000_000_000,
        cpu_system_ns=2_000_000_000,
        cfs_periods=50,
        cfs_throttled_periods=20,
        cfs_throttled_ns=3_500_000_000,
        cpu_period_us=100000,
        cpu_quota_us=20000,
        cpu_shares=cgroup_v2.weight_to_shares(20),
        memory_cache=15 * MiB,
        memory_mapped_file=4 * MiB,
        memory_kernel=3 * MiB,
        memory_max_usage=60 * MiB,
        memory_failcnt=4,  # memory.events max
        oom_kills=2,
        memory_reservation=0,
        memory_swap_limit=256 * MiB,
        own_pgfault=7000,
        own_pgmajfault=12,
        pids_max=0,
        io_bytes={
            (254, 0): {"Read": 4096, "Write": 8192, "Discard": 0},
            (7, 0): {"Read": 0, "Write": 0, "Discard": 0},
        },
        io_ops={
            (254, 0): {"Read": 1, "Write": 2, "Discard": 0},
            (7, 0): {"Read": 0, "Write": 0, "Discard": 0},
        },
        pressure=PSI_EXPECTED,
        hugetlb={"2MB": (4 * MiB, None)},  # v2 keeps no maximum
    )


def test_zero_figures_are_zero_not_missing(tmp_path: Path) -> None:
    make_v1(tmp_path, zero=True)
    x = extra(tmp_path, CgroupVersion.V1)
    assert (x.cfs_periods, x.cfs_throttled_periods, x.cfs_throttled_ns) == (0, 0, 0)
    assert (x.memory_failcnt, x.oom_kills, x.memory_kernel, x.cpu_user_ns) == (0, 0, 0, 0)
    assert x.cpu_quota_us is None  # -1: no quota, so no container_spec_cpu_quota
    assert x.io_bytes[(254, 0)]["Read"] == 0
    assert x.pressure == {}  # no unified dir for it
    assert x.hugetlb["2MB"] == (0, 0)


def test_missing_files_leave_fields_none(tmp_path: Path) -> None:
    # v2 with only the core files (no controllers enabled) and an old kernel's memory.stat
    write_tree(tmp_path, {"cgroup.controllers": ""})
    write_tree(tmp_path / REL, {"cpu.stat": "usage_usec 10\n", "memory.stat": "anon 1\n"})
    x = extra(tmp_path, CgroupVersion.V2)
    assert x == CgroupExtra()
    # v1 where only the memory controller has the cgroup, without kmem/memsw/oom_kill
    v1 = tmp_path / "v1"
    write_tree(v1 / "memory" / REL, {"memory.usage_in_bytes": "5\n"})
    assert extra(v1, CgroupVersion.V1) == CgroupExtra()
    # garbage in a file is no value either
    write_tree(tmp_path / REL, {"cpu.max": "what\n", "cpu.weight": "0\n", "io.stat": "x y\n"})
    x = extra(tmp_path, CgroupVersion.V2)
    assert (x.cpu_period_us, x.cpu_shares, x.io_bytes) == (None, None, {})


def test_parsers() -> None:
    assert cgroups.parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n") == (
        Pressure(42, None)  # cpu.pressure before 5.13: no full line
    )
    assert cgroups.parse_pressure("") is None
    assert cgroups.parse_pressure(None) is None
    assert cgroup_v1.parse_blkio("Total 0\n") == {}  # blk-throttle never started here
    assert cgroup_v1.parse_blkio("8:0 Read 1\n8:16 Write 2\nbad line here\nTotal 3\n") == {
        (8, 0): {"Read": 1},
        (8, 16): {"Write": 2},
    }
    assert cgroup_v2.parse_io_stat("") == ({}, {})
    assert cgroup_v2.weight_to_shares(1) == 2
    assert cgroup_v2.weight_to_shares(10000) == 262144
    assert cgroup_v2.weight_to_shares(100) == 2597  # v2's default weight


def test_procs_dir_per_version(tmp_path: Path) -> None:
    make_v1(tmp_path / "v1")
    make_v2(tmp_path / "v2")
    assert cgroups.procs_dir(CTR, str(tmp_path / "v1"), CgroupVersion.V1) == str(
        tmp_path / "v1" / "pids" / REL
    )
    assert cgroups.procs_dir(CTR, str(tmp_path / "v2"), CgroupVersion.V2) == str(
        tmp_path / "v2" / REL
    )
    assert cgroups.procs_dir("/gone", str(tmp_path / "v2"), CgroupVersion.V2) is None
    assert cgroups.procs_dir("", str(tmp_path / "v2"), CgroupVersion.V2) is None


# -- /proc ---------------------------------------------------------------------------------


def make_proc(proc: Path, pid: int, fds: dict[str, str], threads: int, limits: str) -> None:
    (proc / str(pid) / "fd").mkdir(parents=True)
    for fd, target in fds.items():
        os.symlink(target, proc / str(pid) / "fd" / fd)
    for t in range(threads):
        (proc / str(pid) / "task" / str(pid + t)).mkdir(parents=True)
    (proc / str(pid) / "limits").write_text(limits)


LIMITS = (
    "Limit                     Soft Limit           Hard Limit           Units     \n"
    "Max cpu time              unlimited            unlimited            seconds   \n"
    "Max open files            {soft}                1048576              files     \n"
)


def test_procs_count_threads_fds_and_sockets(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    make_proc(
        proc,
        10,
        {"0": "/dev/null", "1": "pipe:[99]", "2": "socket:[1234]", "3": "socket:[1235]"},
        threads=3,
        limits=LIMITS.format(soft=1024),
    )
    make_proc(proc, 11, {}, threads=1, limits=LIMITS.format(soft="unlimited"))
    # 12 is listed in cgroup.procs but exited before it was counted
    assert procs.count([10, 11, 12], str(proc)) == procs.ProcStats(
        processes=2, threads=4, fds=4, sockets=2
    )
    assert procs.count([], str(proc)) == procs.ProcStats(0, 0, 0, 0)
    assert procs.soft_nofile(10, str(proc)) == 1024
    assert procs.soft_nofile(11, str(proc)) is None  # unlimited: no uint64 for cAdvisor's -1
    assert procs.soft_nofile(12, str(proc)) is None


def test_cgroup_pids_walk_children(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "cgroup.procs": "",  # a pod's cgroup: its processes are in its children
            "a/cgroup.procs": "10\n11\n",
            "b/cgroup.procs": "12\n",
            "b/c/cgroup.procs": "13\n",
        },
    )
    assert sorted(procs.cgroup_pids(str(tmp_path))) == [10, 11, 12, 13]
    assert procs.cgroup_pids(str(tmp_path / "gone")) == []


# -- devices -------------------------------------------------------------------------------


def test_device_names(tmp_path: Path) -> None:
    write_tree(tmp_path, {"dev/block/254:0/uevent": "MAJOR=254\nMINOR=0\nDEVNAME=vda\n"})
    assert devices.block_device_name(254, 0, str(tmp_path)) == "/dev/vda"
    assert devices.block_device_name(8, 1, str(tmp_path)) == "8:1"  # no such device here
    st = os.stat(tmp_path)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        f"25 1 {os.major(st.st_dev)}:{os.minor(st.st_dev)} / / rw,relatime shared:1 - "
        "ext4 /dev/sda1 rw\n"
    )
    assert devices.mount_source(st.st_dev, str(mountinfo)) == "/dev/sda1"
    assert devices.mount_source(os.makedev(99, 99), str(mountinfo)) is None
    cap = devices.capacity(str(tmp_path), str(mountinfo))
    vfs = os.statvfs(tmp_path)
    assert cap is not None
    assert (cap.device, cap.size_bytes, cap.inodes) == (
        "/dev/sda1",
        vfs.f_blocks * vfs.f_frsize,
        vfs.f_files,
    )
    assert 0 <= cap.inodes_free <= cap.inodes
    assert devices.capacity(str(tmp_path / "gone"), str(mountinfo)) is None


# -- cAdvisor rows -------------------------------------------------------------------------


def sample_container() -> Container:
    cfg = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="web"), image=pb.ImageSpec(image="busybox:1")
    )
    return Container("c" * 64, "p" * 64, "web_0", "running", 1, cfg, "sha256:x", 2 * 10**9)


def test_rows_keep_zeros_leave_out_missing_and_match_the_label_keys(tmp_path: Path) -> None:
    make_v1(tmp_path, zero=True)
    st = cgroups.read(CTR, str(tmp_path), CgroupVersion.V1, extra=True)
    cs = ContainerSample(
        container=sample_container(),
        cgroup=st,
        nano_cores=None,
        fs_bytes=0,
        fs_inodes=1,
        fs_mountpoint="/x",
        processes=procs.ProcStats(0, 0, 0, 0),
        nofile=None,
        fs_capacity=devices.Capacity("/dev/vda", 100, 10, 5),
    )
    rows = cadvisor.container_rows(cs, "ns", "pod", now_s=1000)
    found = {(name, labels[6:]): value for name, labels, value in rows}
    for name, labels, _ in rows:
        assert labels[:6] == ("web", "c" * 64, "busybox:1", "web_0", "ns", "pod")
        assert len(labels) == len(cadvisor.BY_NAME[name].label_keys), name
    assert found[("container_cpu_cfs_throttled_periods_total", ())] == 0
    assert found[("container_oom_events_total", ())] == 0
    assert found[("container_sockets", ())] == 0
    assert found[("container_fs_usage_bytes", ("/dev/vda",))] == 0
    assert found[("container_fs_limit_bytes", ("/dev/vda",))] == 100
    assert found[("container_spec_memory_limit_bytes", ())] == 0  # unlimited
    assert found[("container_threads_max", ())] == 0  # unlimited
    assert found[("container_cpu_usage_seconds_total", ("total",))] == 0
    assert found[("container_start_time_seconds", ())] == 2
    assert found[("container_last_seen", ())] == 1000
    vda = devices.block_device_name(254, 0)
    assert found[("container_blkio_device_usage_total", (vda, "254", "0", "Read"))] == 0
    names = {name for name, _ in found}
    # no quota, no unlimited ulimit, no PSI without the unified dir, no network in a container
    assert "container_spec_cpu_quota" not in names
    assert "container_ulimits_soft" not in names
    assert not {n for n in names if "pressure" in n or "network" in n}
    # nothing at all from a container whose cgroup is gone
    gone = ContainerSample(sample_container(), None, None, None, None, "/x")
    assert {name for name, _, _ in cadvisor.container_rows(gone, "ns", "pod", 5)} == {
        "container_start_time_seconds",
        "container_last_seen",
    }


def test_pod_rows_have_the_network_and_empty_container_labels(tmp_path: Path) -> None:
    make_v2(tmp_path)
    st = cgroups.read(CTR, str(tmp_path), CgroupVersion.V2, extra=True)
    pod = Pod(
        "p" * 64,
        "pod_ns_uid_0",
        "ready",
        3 * 10**9,
        "",
        pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="pod", namespace="ns")),
    )
    eth0 = IfStats("eth0", 100, 1, 200, 2, rx_packets=3, rx_dropped=4, tx_packets=5, tx_dropped=6)
    rows = cadvisor.pod_rows(PodSample(pod, st, None, [eth0]), now_s=9)
    found = {(name, labels[6:]): value for name, labels, value in rows}
    for name, labels, _ in rows:
        assert labels[:6] == ("", "p" * 64, "", "", "ns", "pod")
        assert len(labels) == len(cadvisor.BY_NAME[name].label_keys), name
    net = {n: v for (n, extra_), v in found.items() if extra_ == ("eth0",)}
    assert net == {
        "container_network_receive_bytes_total": 100,
        "container_network_receive_errors_total": 1,
        "container_network_transmit_bytes_total": 200,
        "container_network_transmit_errors_total": 2,
        "container_network_receive_packets_total": 3,
        "container_network_receive_packets_dropped_total": 4,
        "container_network_transmit_packets_total": 5,
        "container_network_transmit_packets_dropped_total": 6,
    }
    assert found[("container_pressure_io_waiting_seconds_total", ())] == 7  # whole seconds
    assert found[("container_pressure_cpu_stalled_seconds_total", ())] == 1
    assert found[("container_cpu_cfs_throttled_seconds_total", ())] == 3
    vda = devices.block_device_name(254, 0)  # "/dev/vda" where this host has it
    assert found[("container_fs_reads_bytes_total", (vda,))] == 4096
    assert found[("container_hugetlb_usage_bytes", ("2MB",))] == 4 * MiB
    assert ("container_hugetlb_max_usage_bytes", ("2MB",)) not in found
    assert found[("container_start_time_seconds", ())] == 3


@pytest.mark.parametrize("family", cadvisor.FAMILIES, ids=lambda f: f.name)
def test_families_are_well_formed(family: cadvisor.Family) -> None:
    assert family.name.startswith("container_") and family.help
    assert len(set(family.label_keys)) == len(family.label_keys)
