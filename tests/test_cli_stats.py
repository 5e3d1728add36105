"""`crispy stats` and `crispy statsp`: the real binary against a crispyd with CNI, with a
busybox container burning CPU and one sleeping."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from crispy.api import pb
from crispy.cli import stats as cli_stats
from crispy.cli.client import CriClient
from support.containers import container_config, create, new_pod, run, wait_state
from support.daemon import Crispyd, crispy_bin
from support.daemon import crispy_cli as crispy
from support.daemon import crispy_ok as ok
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

HEADER = ["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"]
POD_HEADER = ["POD", "NAME", "CPU %", "MEM", "NET RX", "NET TX"]
BURN = ["sh", "-c", "while :; do :; done"]
SLEEP = ["sleep", "1000"]
SIZE = re.compile(r"\d+(\.\d+)?(B|kB|MB|GB)")


def table(out: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.strip()]


def by_name(out: str, header: list[str] = HEADER) -> dict[str, list[str]]:
    rows = table(out)
    assert rows and rows[0] == header, out
    return {r[1]: r for r in rows[1:]}


def size_bytes(cell: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(B|kB|MB|GB)", cell)
    assert m, cell
    return float(m.group(1)) * 1000 ** ["B", "kB", "MB", "GB"].index(m.group(2))


@dataclass
class Workload:
    pod_id: str
    pod_name: str
    pod_config: pb.PodSandboxConfig
    burner: str
    sleeper: str


@pytest.fixture
def workload(pods: CriClient, pod_images: TestImages, tmp_path: Path) -> Workload:
    pod_id, cfg = new_pod(pods, tmp_path / "logs")
    img = pod_images.busybox.reference
    burner = run(pods, pod_id, cfg, container_config(img, name="burner", command=BURN))
    sleeper = run(
        pods, pod_id, cfg, container_config(img, name="idle", command=SLEEP, labels={"app": "s"})
    )
    wait_state(pods, burner, pb.CONTAINER_RUNNING)
    wait_state(pods, sleeper, pb.CONTAINER_RUNNING)
    return Workload(pod_id, cfg.metadata.name, cfg, burner, sleeper)


def fails(endpoint: str, *args: str) -> str:
    r = crispy(endpoint, *args)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout == "" and "Traceback" not in r.stderr, r.stderr
    return r.stderr


# -- stats -----------------------------------------------------------------------------------


def test_stats_shows_running_containers_with_cpu_memory_and_disk(
    pod_crispyd: Crispyd, pods: CriClient, workload: Workload, pod_images: TestImages
) -> None:
    ep = pod_crispyd.endpoint
    w = workload
    created = create(
        pods,
        w.pod_id,
        w.pod_config,
        container_config(pod_images.busybox.reference, name="later", command=SLEEP),
    )
    rows = by_name(ok(ep, "stats"))
    assert set(rows) == {"burner", "idle"}  # running only: not the created one
    burner, idle = rows["burner"], rows["idle"]
    assert burner[0] == w.burner[:13] and idle[0] == w.sleeper[:13]
    assert float(burner[2]) > 10, burner
    assert float(idle[2]) < 10, idle
    for row in (burner, idle):
        assert SIZE.fullmatch(row[3]) and size_bytes(row[3]) > 0, row  # MEM
        assert SIZE.fullmatch(row[4]), row  # DISK
        assert row[5].isdigit(), row  # INODES

    # again: the runtime now has a sample to rate against, so no second one is taken
    rows = by_name(ok(ep, "stats"))
    assert float(rows["burner"][2]) > 10, rows

    rows = by_name(ok(ep, "stats", "-a"))
    assert {"burner", "idle"} <= set(rows)
    if "later" in rows:  # a runtime may leave out a container that never ran
        assert rows["later"][0] == created[:13]

    assert set(by_name(ok(ep, "stats", "--id", w.burner[:8]))) == {"burner"}
    assert set(by_name(ok(ep, "stats", "--label", "app=s"))) == {"idle"}
    assert set(by_name(ok(ep, "stats", "--label", "app=nope"))) == set()
    assert set(by_name(ok(ep, "stats", "-p", w.pod_id[:10]))) == {"burner", "idle"}


def test_stats_json_and_yaml_are_the_cri_messages(pod_crispyd: Crispyd, workload: Workload) -> None:
    ep = pod_crispyd.endpoint
    doc = json.loads(ok(ep, "stats", "-o", "json"))
    items = {s["attributes"]["id"]: s for s in doc["stats"]}
    assert set(items) == {workload.burner, workload.sleeper}
    burner = items[workload.burner]
    assert burner["attributes"]["metadata"] == {"name": "burner", "attempt": 0}
    assert int(burner["cpu"]["usageCoreNanoSeconds"]["value"]) > 0
    assert int(burner["memory"]["workingSetBytes"]["value"]) > 0
    assert "usedBytes" in burner["writableLayer"]

    ydoc = yaml.safe_load(ok(ep, "stats", "-o", "yaml", "--id", workload.sleeper[:12]))
    assert [s["attributes"]["id"] for s in ydoc["stats"]] == [workload.sleeper]


# -- statsp ----------------------------------------------------------------------------------


def test_statsp_shows_the_pod(pod_crispyd: Crispyd, workload: Workload) -> None:
    ep = pod_crispyd.endpoint
    rows = by_name(ok(ep, "statsp"), POD_HEADER)
    assert list(rows) == [workload.pod_name]
    row = rows[workload.pod_name]
    assert row[0] == workload.pod_id[:13]
    assert float(row[2]) > 10, row  # the burner is in it
    assert size_bytes(row[3]) > 0, row
    assert SIZE.fullmatch(row[4]) and SIZE.fullmatch(row[5]), row  # NET RX, TX

    rows = by_name(ok(ep, "statsp", "--id", workload.pod_id[:9]), POD_HEADER)
    assert list(rows) == [workload.pod_name]
    doc = json.loads(ok(ep, "statsp", "-o", "json"))
    (pod,) = doc["stats"]
    assert pod["attributes"]["id"] == workload.pod_id
    assert int(pod["linux"]["cpu"]["usageCoreNanoSeconds"]["value"]) > 0
    assert {c["attributes"]["id"] for c in pod["linux"]["containers"]} == {
        workload.burner,
        workload.sleeper,
    }


# -- errors and watch ------------------------------------------------------------------------


def test_unknown_ids_exit_1(pod_crispyd: Crispyd, pods: CriClient) -> None:
    ep = pod_crispyd.endpoint
    assert "container nosuchid not found" in fails(ep, "stats", "--id", "nosuchid")
    assert "pod sandbox nosuchpod not found" in fails(ep, "stats", "--pod", "nosuchpod")
    assert "pod sandbox nosuchpod not found" in fails(ep, "statsp", "--id", "nosuchpod")
    r = crispy(ep, "stats", "--seconds", "0")
    assert r.returncode == 2 and "--seconds" in r.stderr, r.stderr


def test_watch_redraws_until_ctrl_c(pod_crispyd: Crispyd, workload: Workload) -> None:
    proc = subprocess.Popen(
        [crispy_bin("crispy"), "-r", pod_crispyd.endpoint, "stats", "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: lines.extend(stdout), daemon=True)
    reader.start()
    try:
        # the first table comes after one --seconds sample (crispy has no rate for a fresh
        # container), then one a second: two within about 2.5 s of starting to draw
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not lines:
            time.sleep(0.02)
        first = time.monotonic()
        while time.monotonic() < first + 2.5 and sum(x.startswith("CONTAINER") for x in lines) < 2:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(10)
    reader.join(5)
    err = proc.stderr.read()
    assert rc == 0 and "Traceback" not in err, err
    headers = [x for x in lines if x.startswith("CONTAINER")]
    assert len(headers) >= 2, lines
    assert sum(workload.burner[:13] in x for x in lines) >= 2, lines


# -- formatting ------------------------------------------------------------------------------


def test_human_size_is_crictls() -> None:
    assert cli_stats.human_size(0) == "0B"
    assert cli_stats.human_size(999) == "999B"
    assert cli_stats.human_size(12_345_678) == "12.35MB"
    assert cli_stats.human_size(1_000_000) == "1MB"
    assert cli_stats.human_size(1536) == "1.536kB"


def test_cpu_percent_from_nano_cores_or_two_samples() -> None:
    def cpu(ts: int, total: int | None, nano: int | None = None) -> pb.CpuUsage:
        msg = pb.CpuUsage(timestamp=ts)
        if total is not None:
            msg.usage_core_nano_seconds.value = total
        if nano is not None:
            msg.usage_nano_cores.value = nano
        return msg

    assert cli_stats.cpu_percent(cpu(1, 5, nano=250_000_000), None, 0) == 25.0
    # half a core over one second of timestamps
    assert cli_stats.cpu_percent(cpu(2_000_000_000, 1_500_000_000), cpu(10**9, 10**9), 0) == 50.0
    # no timestamps: the local clock's gap
    assert cli_stats.cpu_percent(cpu(0, 3 * 10**8), cpu(0, 10**8), 10**9) == pytest.approx(20.0)
    assert cli_stats.cpu_percent(cpu(2, 10), None, 0) is None
    assert cli_stats.cpu_percent(cpu(2, None), cpu(1, 5), 0) is None
    assert cli_stats.cpu_percent(cpu(2, 1), cpu(1, 5), 0) is None  # restarted: counter went back
    assert cli_stats.needs_rate(cpu(1, 5))
    assert cli_stats.needs_rate(cpu(1, 5, nano=0))  # containerd's first sample
    assert not cli_stats.needs_rate(cpu(1, 5, nano=7))
    assert not cli_stats.needs_rate(cpu(1, None))
