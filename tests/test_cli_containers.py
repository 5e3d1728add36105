"""`crispy create/start/stop/rm/ps/inspect/logs/exec/update/events/run`: the real binary
against a crispyd with CNI, with the test busybox image."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.json_format import MessageToDict

from crispy.api import pb
from crispy.cli import containers as cli_containers
from crispy.cli import logs as cli_logs
from crispy.cli.client import CriClient
from crispy.cli.pods import ConfigError
from support.containers import container_config, create, new_pod, run, wait_exit, wait_state
from support.daemon import Crispyd, crispy_bin
from support.daemon import crispy_cli as crispy
from support.daemon import crispy_ok as ok
from support.pods import pod_config, run_pod
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

HEADER = ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD"]
AGO = re.compile(r"(Less than a second|1 second|\d+ seconds) ago")
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d)"
SLEEP = ["sleep", "1000"]


def fails(endpoint: str, *args: str) -> str:
    """Run a command that must exit 1 with nothing on stdout; its stderr."""
    r = crispy(endpoint, *args)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout == "" and "Traceback" not in r.stderr, r.stderr
    return r.stderr


def table(out: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.strip()]


def ps(endpoint: str, *args: str) -> list[str]:
    return ok(endpoint, "ps", "-q", *args).split()


@dataclass
class Pod:
    id: str
    config: pb.PodSandboxConfig
    config_file: Path
    log_dir: Path
    tmp: Path

    @property
    def name(self) -> str:
        return self.config.metadata.name


def make_pod(cri: CriClient, tmp: Path, **kw: Any) -> Pod:
    tmp.mkdir(parents=True, exist_ok=True)
    log_dir = tmp / "logs"
    pod_id, cfg = new_pod(cri, log_dir, **kw)
    path = tmp / "pod.json"
    path.write_text(json.dumps(MessageToDict(cfg)))
    return Pod(pod_id, cfg, path, log_dir, tmp)


@pytest.fixture
def pod(pods: CriClient, tmp_path: Path) -> Pod:
    return make_pod(pods, tmp_path / "pod")


def cli_create(endpoint: str, pod: Pod, cfg: pb.ContainerConfig, *extra: str) -> str:
    """`crispy create` from a JSON file (camelCase keys, as `crictl inspect` prints them)."""
    path = pod.tmp / f"{cfg.metadata.name}.json"
    path.write_text(json.dumps(MessageToDict(cfg)))
    out = ok(endpoint, "create", *extra, pod.id[:12], str(path), str(pod.config_file))
    assert re.fullmatch(r"[0-9a-f]{64}\n", out), out
    return out.strip()


def inspect(endpoint: str, cid: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ok(endpoint, "inspect", cid))
    return doc


# -- create, start, ps, inspect, stop, rm ----------------------------------------------------


def test_create_from_json_and_yaml_then_start_ps_inspect_stop_rm(
    pod_crispyd: Crispyd, pods: CriClient, pod: Pod, pod_images: TestImages
) -> None:
    ep = pod_crispyd.endpoint
    img = pod_images.busybox.reference
    first = cli_create(
        ep, pod, container_config(img, name="json-ctr", command=SLEEP, labels={"app": "json"})
    )
    yaml_file = pod.tmp / "ctr.yaml"
    yaml_file.write_text(
        "metadata:\n"
        "  name: yaml-ctr\n"
        "  attempt: 2\n"
        f"image:\n  image: {img}\n"
        "command: [sleep, '1000']\n"
        "labels: {app: yaml}\n"
        "log_path: yaml-ctr.log\n"
    )
    out = ok(ep, "create", pod.id, str(yaml_file), str(pod.config_file))
    second = out.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", second), out

    # created, not running: plain ps (running only, as crictl) shows neither
    assert ps(ep) == []
    assert ps(ep, "-a") == [second, first]  # newest first
    rows = table(ok(ep, "ps", "-a"))
    assert rows[0] == HEADER
    assert [r[3] for r in rows[1:]] == ["Created", "Created"]

    assert ok(ep, "start", first[:10], second) == f"{first}\n{second}\n"
    assert ps(ep) == [second, first]
    rows = table(ok(ep, "ps"))
    assert rows[0] == HEADER
    newest, older = rows[1], rows[2]
    assert AGO.fullmatch(newest[2]) and AGO.fullmatch(older[2])
    assert [newest[0], newest[1], *newest[3:]] == [
        second[:13],
        img,
        "Running",
        "yaml-ctr",
        "2",
        pod.id[:13],
        pod.name,
    ]
    assert [older[0], older[4], older[5]] == [first[:13], "json-ctr", "0"]
    assert [r[0] for r in table(ok(ep, "ps", "--no-trunc"))[1:]] == [second, first]

    doc = inspect(ep, first)
    st = doc["status"]
    assert st["id"] == first
    assert st["state"] == "CONTAINER_RUNNING"
    assert st["metadata"] == {"name": "json-ctr", "attempt": 0}
    assert st["labels"] == {"app": "json"}
    assert st["image"]["image"] == img
    assert st["logPath"] == str(pod.log_dir / "json-ctr.log")
    assert int(st["startedAt"]) > int(st["createdAt"]) > 0
    # the verbose info, decoded from JSON
    assert isinstance(doc["info"], dict) and doc["info"]["sandboxID"] == pod.id
    docs = json.loads(ok(ep, "inspect", second, first))
    assert [d["status"]["id"] for d in docs] == [second, first]
    assert docs[0]["status"]["metadata"] == {"name": "yaml-ctr", "attempt": 2}
    ydoc = yaml.safe_load(ok(ep, "inspect", "-o", "yaml", second[:8]))
    assert ydoc["status"]["id"] == second
    out = ok(ep, "inspect", "-o", "table", first)
    assert f"ID:  {first}\n" in out and "Name:  json-ctr\n" in out
    assert "State:  CONTAINER_RUNNING\n" in out and "Labels:  app=json\n" in out

    # crictl's rule: a running container is removed only with -f
    err = fails(ep, "rm", first)
    assert f"container {first} is running" in err
    assert ps(ep) == [second, first]

    assert ok(ep, "stop", "-t", "0", first) == f"{first}\n"
    st = inspect(ep, first)["status"]
    assert st["state"] == "CONTAINER_EXITED" and st["exitCode"] == 137
    assert ps(ep) == [second]
    assert ps(ep, "--state", "exited") == [first]
    assert ok(ep, "rm", first[:12]) == f"{first}\n"
    assert ok(ep, "rm", "-f", second) == f"{second}\n"
    assert ps(ep, "-a") == []


def test_rm_all_and_usage(
    pod_crispyd: Crispyd, pods: CriClient, pod: Pod, pod_images: TestImages
) -> None:
    ep = pod_crispyd.endpoint
    img = pod_images.busybox.reference
    done = run(pods, pod.id, pod.config, container_config(img, command=["true"]))
    wait_exit(pods, done)
    made = create(pods, pod.id, pod.config, container_config(img, command=SLEEP))
    r = crispy(ep, "rm", "--all")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted([done, made])
    assert ps(ep, "-a") == []
    r = crispy(ep, "rm")
    assert r.returncode == 2 and "--all" in r.stderr


def test_ps_filters(
    pod_crispyd: Crispyd, pods: CriClient, pod: Pod, pod_images: TestImages, tmp_path: Path
) -> None:
    ep = pod_crispyd.endpoint
    img = pod_images.busybox.reference
    exited = run(
        pods,
        pod.id,
        pod.config,
        container_config(img, name="done", command=["true"], labels={"app": "b"}),
    )
    running = run(
        pods,
        pod.id,
        pod.config,
        container_config(img, name="web", command=SLEEP, labels={"app": "a", "tier": "x"}),
    )
    created = create(pods, pod.id, pod.config, container_config(img, name="later", command=SLEEP))
    other = make_pod(pods, tmp_path / "other")
    elsewhere = run(pods, other.id, other.config, container_config(img, name="web2", command=SLEEP))
    wait_exit(pods, exited)
    wait_state(pods, running, pb.CONTAINER_RUNNING)
    wait_state(pods, elsewhere, pb.CONTAINER_RUNNING)

    assert ps(ep) == [elsewhere, running]
    assert ps(ep, "-a") == [elsewhere, created, running, exited]
    assert ps(ep, "--state", "exited") == [exited]
    assert ps(ep, "--state", "CREATED") == [created]
    assert ps(ep, "-a", "--state", "running") == [elsewhere, running]
    assert ps(ep, "-a", "--pod", pod.id[:10]) == [created, running, exited]
    assert ps(ep, "-p", other.id) == [elsewhere]
    assert ps(ep, "-a", "--label", "app=b") == [exited]
    assert ps(ep, "-a", "--label", "app=a", "--label", "tier=x") == [running]
    assert ps(ep, "-a", "--label", "app=a", "--label", "tier=y") == []
    assert ps(ep, "-a", "--name", "^web") == [elsewhere, running]
    assert ps(ep, "-a", "--id", running[:9]) == [running]
    assert ps(ep, "-a", "--image", img) == [elsewhere, created, running, exited]
    assert ps(ep, "-a", "--image", "example.com/no/such:image") == []
    assert ps(ep, "-a", "-l") == [elsewhere]
    assert ps(ep, "-a", "--last", "2") == [elsewhere, created]

    rows = table(ok(ep, "ps", "-a", "--pod", other.id))
    assert rows[1][-2:] == [other.id[:13], other.name]

    doc = json.loads(ok(ep, "ps", "-a", "-o", "json", "--pod", pod.id))
    items = {c["id"]: c for c in doc["containers"]}
    assert list(items) == [created, running, exited]
    # zero values are printed, as crictl does: CONTAINER_CREATED, attempt 0
    assert items[created]["state"] == "CONTAINER_CREATED"
    assert items[created]["metadata"] == {"name": "later", "attempt": 0}
    assert items[running]["state"] == "CONTAINER_RUNNING"
    assert items[running]["podSandboxId"] == pod.id
    assert items[running]["labels"] == {"app": "a", "tier": "x"}
    assert items[exited]["state"] == "CONTAINER_EXITED"
    ydoc = yaml.safe_load(ok(ep, "ps", "-o", "yaml", "--label", "app=a"))
    assert [c["id"] for c in ydoc["containers"]] == [running]

    err = fails(ep, "ps", "--pod", "0" * 64 if not pod.id.startswith("0") else "f" * 64)
    assert "not found" in err
    r = crispy(ep, "ps", "--state", "sleeping")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = crispy(ep, "ps", "--label", "novalue")
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr


# -- logs ------------------------------------------------------------------------------------


def test_logs_streams_tail_timestamps_since(
    pod_crispyd: Crispyd, pods: CriClient, pod: Pod, pod_images: TestImages
) -> None:
    ep = pod_crispyd.endpoint
    # stderr first, then a pause: the order of the two pipes' records in the file is known
    script = "echo err1 >&2; sleep 0.3; echo out1; echo out2"
    cid = run(
        pods,
        pod.id,
        pod.config,
        container_config(pod_images.busybox.reference, command=["sh", "-c", script]),
    )
    wait_exit(pods, cid)

    r = crispy(ep, "logs", cid[:12])
    assert r.returncode == 0, r.stderr
    assert (r.stdout, r.stderr) == ("out1\nout2\n", "err1\n")
    r = crispy(ep, "logs", "--tail", "2", cid)
    assert (r.returncode, r.stdout, r.stderr) == (0, "out1\nout2\n", "")
    r = crispy(ep, "logs", "--tail", "3", cid)
    assert (r.stdout, r.stderr) == ("out1\nout2\n", "err1\n")
    r = crispy(ep, "logs", "--tail", "0", cid)
    assert (r.stdout, r.stderr) == ("", "")

    r = crispy(ep, "logs", "-t", cid)
    out = r.stdout.splitlines()
    assert len(out) == 2 and all(re.fullmatch(rf"{TS} out\d", line) for line in out), out
    assert re.fullmatch(rf"{TS} err1\n", r.stderr), r.stderr

    r = crispy(ep, "logs", "--since", "1h", cid)
    assert (r.stdout, r.stderr) == ("out1\nout2\n", "err1\n")
    r = crispy(ep, "logs", "--since", "2099-01-01T00:00:00Z", cid)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    # since the time of out1's record: out1 and out2, not err1 before them
    out1_time = out[0].split(" ", 1)[0]
    r = crispy(ep, "logs", "--since", out1_time, cid)
    assert (r.stdout, r.stderr) == ("out1\nout2\n", "")
    r = crispy(ep, "logs", "--since", "yesterday", cid)
    assert r.returncode == 2 and "RFC 3339" in r.stderr


def test_logs_follow_ends_when_the_container_exits(
    pod_crispyd: Crispyd, pods: CriClient, pod: Pod, pod_images: TestImages
) -> None:
    ep = pod_crispyd.endpoint
    script = "echo start; echo oops >&2; sleep 1.5; echo end"
    cid = run(
        pods,
        pod.id,
        pod.config,
        container_config(pod_images.busybox.reference, command=["sh", "-c", script]),
    )
    t = time.monotonic()
    r = crispy(ep, "logs", "-f", cid, timeout=30)
    took = time.monotonic() - t
    assert r.returncode == 0, r.stderr
    assert (r.stdout, r.stderr) == ("start\nend\n", "oops\n")
    assert took > 0.8  # it waited for "end" rather than stopping at the end of the file
    assert wait_exit(pods, cid, timeout=1).exit_code == 0


# -- exec, update ----------------------------------------------------------------------------


def test_exec_sync_output_and_exit_code(
    pod_crispyd: Crispyd, pods: CriClient, pod: Pod, pod_images: TestImages
) -> None:
    ep = pod_crispyd.endpoint
    cid = run(
        pods, pod.id, pod.config, container_config(pod_images.busybox.reference, command=SLEEP)
    )
    wait_state(pods, cid, pb.CONTAINER_RUNNING)
    r = crispy(ep, "exec", "--sync", cid[:10], "sh", "-c", "echo hi; echo oops >&2; exit 5")
    assert (r.returncode, r.stdout, r.stderr) == (5, "hi\n", "oops\n")
    r = crispy(ep, "exec", "-s", cid, "--", "cat", "/proc/1/cmdline")
    assert (r.returncode, r.stdout) == (0, "sleep\x001000\x00")

    r = crispy(ep, "exec", "--sync", "--timeout", "1", cid, "sleep", "100")
    assert r.returncode == 1 and "still running after 1s" in r.stderr, r.stderr

    r = crispy(ep, "exec", cid, "sh", "-c", "exit 4")  # streamed: the command's exit code
    assert r.returncode == 4, r.stderr
    r = crispy(ep, "exec", "--sync", cid)
    assert r.returncode == 2 and "command" in r.stderr


def test_update_memory_is_reflected_in_inspect(
    pod_crispyd: Crispyd, pods: CriClient, pod: Pod, pod_images: TestImages
) -> None:
    ep = pod_crispyd.endpoint
    resources = pb.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=256 << 20)
    cid = run(
        pods,
        pod.id,
        pod.config,
        container_config(pod_images.busybox.reference, command=SLEEP, resources=resources),
    )
    wait_state(pods, cid, pb.CONTAINER_RUNNING)
    assert ok(ep, "update", "--memory", "100m", cid[:10]) == f"{cid}\n"
    linux = inspect(ep, cid)["status"]["resources"]["linux"]
    assert int(linux["memoryLimitInBytes"]) == 100 << 20
    assert int(linux["cpuShares"]) == 512  # kept: the flags merge into what the container has

    assert ok(ep, "update", "--cpu-shares", "256", "--cpu-quota", "50000", cid) == f"{cid}\n"
    linux = inspect(ep, cid)["status"]["resources"]["linux"]
    assert int(linux["cpuShares"]) == 256 and int(linux["cpuQuota"]) == 50000
    assert int(linux["memoryLimitInBytes"]) == 100 << 20

    r = crispy(ep, "update", cid)
    assert r.returncode == 2 and "--memory" in r.stderr
    r = crispy(ep, "update", "--memory", "lots", cid)
    assert r.returncode == 2 and "size" in r.stderr


# -- events ----------------------------------------------------------------------------------


def test_events_prints_a_containers_lifecycle(
    pod_crispyd: Crispyd, pods: CriClient, pod: Pod, pod_images: TestImages
) -> None:
    proc = subprocess.Popen(
        [crispy_bin("crispy"), "-r", pod_crispyd.endpoint, "events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: lines.extend(stdout), daemon=True)
    reader.start()
    try:
        time.sleep(1.0)  # started and subscribed
        cid = run(
            pods,
            pod.id,
            pod.config,
            container_config(pod_images.busybox.reference, command=["true"]),
        )
        wait_exit(pods, cid)
        pods.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
        other = run_pod(pods, pod_config())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len([x for x in lines if other[:13] in x]) < 2:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(10)
    reader.join(5)
    mine = [line.split() for line in lines if cid[:13] in line]
    assert [m[2] for m in mine] == ["created", "started", "stopped", "deleted"], lines
    assert not [x for x in lines if pod.id[:13] in x.split()[1]]  # the pod did not change
    theirs = [line.split() for line in lines if other[:13] in line]
    assert [m[2] for m in theirs] == ["pod-created", "pod-started"], lines
    assert all(m[1] == m[3] == other[:13] for m in theirs)
    for m in mine:
        assert re.fullmatch(TS, m[0]) and m[1] == cid[:13] and m[3] == pod.id[:13], m
    # Ctrl-C ends it cleanly
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert rc == 0 and "Traceback" not in err, err


# -- run -------------------------------------------------------------------------------------


def pod_names(cri: CriClient) -> list[str]:
    return [p.metadata.name for p in cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items]


def test_run_rm_prints_the_output_exits_with_the_code_and_leaves_no_pod(
    pod_crispyd: Crispyd, pods: CriClient, pod_images: TestImages
) -> None:
    ep = pod_crispyd.endpoint
    name = f"run-{uuid.uuid4().hex[:6]}"
    r = crispy(
        ep,
        "run",
        "--rm",
        "--name",
        name,
        pod_images.busybox.reference,
        "sh",
        "-c",
        "echo hi; exit 3",
    )
    assert (r.returncode, r.stdout, r.stderr) == (3, "hi\n", "")
    assert name not in pod_names(pods)
    assert ps(ep, "-a") == []


def test_run_keeps_the_pod_without_rm_and_pulls_a_missing_image(
    pod_crispyd: Crispyd, pods: CriClient, pod_images: TestImages, tmp_path: Path
) -> None:
    ep = pod_crispyd.endpoint
    ref = pod_images.busybox_tag2.reference  # not pulled on this daemon yet
    name = f"run-{uuid.uuid4().hex[:6]}"
    missing = pods.image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)))
    assert not missing.HasField("image")
    try:
        r = crispy(
            ep,
            "run",
            "--name",
            name,
            "--log-dir",
            str(tmp_path / "runlogs"),
            "-e",
            "GREETING=hello there",
            ref,
            "sh",
            "-c",
            'echo "$GREETING"; echo err >&2',
        )
        assert (r.returncode, r.stdout, r.stderr) == (0, "hello there\n", "err\n")
        assert name in pod_names(pods)
        (cid,) = ps(ep, "-a", "--name", f"^{name}$")
        assert inspect(ep, cid)["status"]["state"] == "CONTAINER_EXITED"
        assert (tmp_path / "runlogs" / f"{name}.log").exists()
        r = crispy(ep, "logs", cid)
        assert (r.stdout, r.stderr) == ("hello there\n", "err\n")
    finally:
        pods.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))


def test_run_ctrl_c_stops_the_container_and_rm_removes_it(
    pod_crispyd: Crispyd, pods: CriClient, pod_images: TestImages
) -> None:
    name = f"run-{uuid.uuid4().hex[:6]}"
    script = "trap 'echo bye; exit 7' TERM; echo ready; while :; do sleep 0.1; done"
    argv = ["run", "--rm", "--name", name, pod_images.busybox.reference, "sh", "-c", script]
    proc = subprocess.Popen(
        [crispy_bin("crispy"), "-r", pod_crispyd.endpoint, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        assert name in pod_names(pods)
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    err = proc.stderr.read()
    assert rc == 130 and "Traceback" not in err, err
    assert name not in pod_names(pods)


# -- errors ----------------------------------------------------------------------------------


def test_bad_files_and_unknown_ids_exit_1(
    pod_crispyd: Crispyd, pods: CriClient, pod: Pod, pod_images: TestImages
) -> None:
    ep = pod_crispyd.endpoint
    good = pod.tmp / "good.json"
    good.write_text(json.dumps(MessageToDict(container_config(pod_images.busybox.reference))))
    for name, content, problem in [
        ("broken.json", '{"metadata": {"name": "x"', "not valid JSON"),
        ("typo.yaml", "metadta: {name: x}\n", 'no field named "metadta"'),
    ]:
        path = pod.tmp / name
        path.write_text(content)
        err = fails(ep, "create", pod.id, str(path), str(pod.config_file))
        assert err.startswith(f"crispy create: {path}: ") and problem in err, err
        err = fails(ep, "create", pod.id, str(good), str(path))
        assert err.startswith(f"crispy create: {path}: ") and problem in err, err
    missing = pod.tmp / "nope.json"
    err = fails(ep, "create", pod.id, str(missing), str(pod.config_file))
    assert str(missing) in err and "No such file" in err

    unknown = "0" * 64 if not pod.id.startswith("0") else "f" * 64
    err = fails(ep, "create", unknown, str(good), str(pod.config_file))
    assert f"pod sandbox {unknown} not found" in err
    assert ps(ep, "-a") == []

    for args in (
        ["start", unknown],
        ["stop", unknown],
        ["rm", unknown],
        ["inspect", unknown],
        ["logs", unknown],
        ["exec", "--sync", unknown, "true"],
        ["update", "--memory", "1g", unknown],
    ):
        err = fails(ep, *args)
        assert f"container {unknown} not found" in err, (args, err)


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("list.yaml", "- metadata: {}\n", "expected a ContainerConfig object, got a list"),
        ("empty.yaml", "", "got an empty file"),
        ("image.json", '{"image": "busybox"}', "not a ContainerConfig"),
    ],
)
def test_bad_container_config_files(tmp_path: Path, name: str, content: str, problem: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError) as e:
        cli_containers.load_config(str(path), pb.ContainerConfig)
    assert str(e.value).startswith(f"{path}: ") and problem in str(e.value)
    assert "\n" not in str(e.value)


# -- pure helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1 << 20), ("100m", 100 << 20), ("1g", 1 << 30), ("512MiB", 512 << 20)],
)
def test_memory_bytes(text: str, size: int) -> None:
    assert cli_containers.memory_bytes(text) == size


def test_durations_and_timestamps() -> None:
    assert cli_logs.duration_ns("1h30m") == 5400 * 10**9
    assert cli_logs.duration_ns("1.5s") == 1_500_000_000
    assert cli_logs.duration_ns("300ms") == 300_000_000
    for bad in ("", "5", "1x", "m5"):
        with pytest.raises(ValueError):
            cli_logs.duration_ns(bad)
    assert cli_logs.timestamp_ns("1970-01-01T00:00:01.000000002Z") == 1_000_000_002
    assert cli_logs.timestamp_ns("1970-01-01T01:00:01.5+01:00") == 1_500_000_000
    assert cli_logs.timestamp_ns("nope") is None


def test_joiner_joins_partial_records_per_stream() -> None:
    j = cli_logs.Joiner()
    got = [
        j.feed(b"T1 stdout P hel"),
        j.feed(b"T2 stderr F err"),
        j.feed(b"T3 stdout F lo"),
        j.feed(b"T4 stdout F "),
        j.feed(b"garbage"),
        j.feed(b"T5 stderr P open"),
    ]
    assert got == [
        None,
        cli_logs.Line(b"T2", b"stderr", b"err\n"),
        cli_logs.Line(b"T1", b"stdout", b"hello\n"),
        cli_logs.Line(b"T4", b"stdout", b"\n"),
        None,
        None,
    ]
    assert j.flush() == [cli_logs.Line(b"T5", b"stderr", b"open")]


def _record(stream: str, text: str) -> bytes:
    return f"2024-01-01T00:00:00.000000000Z {stream} F {text}\n".encode()


def test_follow_reopens_a_rotated_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_logs, "STATUS_EVERY", 0.05)
    path = tmp_path / "c.log"
    path.write_bytes(_record("stdout", "one"))
    out, err = io.BytesIO(), io.BytesIO()
    printer = cli_logs.Printer(stdout=out, stderr=err)
    running = threading.Event()
    running.set()
    follower = threading.Thread(
        target=cli_logs.print_log, args=(str(path), printer, None, running.is_set)
    )
    follower.start()
    try:
        time.sleep(0.3)
        with open(path, "ab") as f:
            f.write(_record("stderr", "two"))
        time.sleep(0.3)
        # rotation as the kubelet does it: rename, then the runtime reopens the path
        os.rename(path, tmp_path / "c.log.1")
        with open(tmp_path / "c.log.1", "ab") as f:
            f.write(_record("stdout", "three"))  # still written to the old file
        time.sleep(0.3)
        path.write_bytes(_record("stdout", "four"))
        time.sleep(0.3)
        with open(path, "ab") as f:
            f.write(_record("stdout", "five"))
    finally:
        running.clear()
    follower.join(5)
    assert not follower.is_alive()
    assert out.getvalue() == b"one\nthree\nfour\nfive\n"
    assert err.getvalue() == b"two\n"
