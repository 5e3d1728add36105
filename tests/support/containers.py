"""Container test helpers: configs, lifecycle calls, waiting for states, reading CRI logs."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from crispy.api import pb
from crispy.cli.client import CriClient
from support.pods import pod_config, run_pod


def container_config(
    image: str,
    *,
    name: str | None = None,
    command: list[str] | None = None,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    working_dir: str = "",
    labels: dict[str, str] | None = None,
    attempt: int = 0,
    tty: bool = False,
    stdin: bool = False,
    stdin_once: bool = False,
    log_path: str = "",
    mounts: list[pb.Mount] | None = None,
    security: pb.LinuxContainerSecurityContext | None = None,
    resources: pb.LinuxContainerResources | None = None,
) -> pb.ContainerConfig:
    name = name or f"ctr-{uuid.uuid4().hex[:8]}"
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=attempt),
        image=pb.ImageSpec(image=image),
        command=command or [],
        args=args or [],
        working_dir=working_dir,
        envs=[pb.KeyValue(key=k, value=v) for k, v in (env or {}).items()],
        labels=labels or {},
        tty=tty,
        stdin=stdin,
        stdin_once=stdin_once,
        log_path=log_path or f"{name}.log",
        mounts=mounts or [],
        linux=pb.LinuxContainerConfig(
            security_context=security or pb.LinuxContainerSecurityContext(),
            resources=resources or pb.LinuxContainerResources(),
        ),
    )


def new_pod(cri: CriClient, log_dir: Path, **kw: object) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(log_directory=str(log_dir), **kw)  # type: ignore[arg-type]
    return run_pod(cri, cfg), cfg


def create(
    cri: CriClient, pod_id: str, pod_cfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig
) -> str:
    resp = cri.runtime.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod_cfg),
        timeout=60,
    )
    return str(resp.container_id)


def start(cri: CriClient, cid: str) -> None:
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)


def run(cri: CriClient, pod_id: str, pod_cfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig) -> str:
    cid = create(cri, pod_id, pod_cfg, cfg)
    start(cri, cid)
    return cid


def status(cri: CriClient, cid: str) -> pb.ContainerStatus:
    return cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status


def wait_state(cri: CriClient, cid: str, state: int, timeout: float = 20) -> pb.ContainerStatus:
    deadline = time.monotonic() + timeout
    while True:
        st = status(cri, cid)
        if st.state == state:
            return st
        if time.monotonic() > deadline:
            raise TimeoutError(f"container {cid} is {st.state}, not {state}")
        time.sleep(0.02)


def wait_exit(cri: CriClient, cid: str, timeout: float = 20) -> pb.ContainerStatus:
    return wait_state(cri, cid, pb.CONTAINER_EXITED, timeout)


def log_records(path: Path) -> list[tuple[str, str, str, str]]:
    """(timestamp, stream, tag, content) of each CRI log line."""
    out = []
    for line in path.read_text().splitlines():
        ts, stream, tag, content = [*line.split(" ", 3), ""][:4]
        out.append((ts, stream, tag, content))
    return out


def log_text(path: Path, stream: str | None = None) -> str:
    """The log's content joined back as the container wrote it."""
    text = ""
    for _, s, tag, content in log_records(path):
        if stream is None or s == stream:
            text += content + ("\n" if tag == "F" else "")
    return text


def stop(cri: CriClient, cid: str, timeout: int = 0) -> None:
    cri.runtime.StopContainer(
        pb.StopContainerRequest(container_id=cid, timeout=timeout), timeout=60
    )


def remove(cri: CriClient, cid: str) -> None:
    cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)


def exec_sync(cri: CriClient, cid: str, cmd: list[str], timeout: int = 0) -> pb.ExecSyncResponse:
    return cri.runtime.ExecSync(
        pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout), timeout=60
    )
