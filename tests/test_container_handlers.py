"""The same container under each RuntimeClass handler: runc, crun and runsc (gVisor)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from support import exec_client
from support.containers import container_config, exec_sync, log_text, run, wait_exit, wait_state
from support.pods import pod_config, pod_status, run_pod
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

HANDLERS = [h for h in ("runc", "crun", "runsc") if shutil.which(h)]


@pytest.mark.parametrize("handler", HANDLERS)
def test_same_container_under_each_handler(
    pods: CriClient, pod_images: TestImages, tmp_path: Path, handler: str
) -> None:
    pod_cfg = pod_config(log_directory=str(tmp_path / "logs"))
    pod_id = run_pod(pods, pod_cfg, handler=handler)
    assert pod_status(pods, pod_id)[0].runtime_handler == handler
    img = pod_images.busybox.reference
    script = "echo out; echo err >&2; dmesg | head -n 3; exit 9"
    cid = run(pods, pod_id, pod_cfg, container_config(img, command=["sh", "-c", script]))
    st = wait_exit(pods, cid, timeout=60)
    assert st.exit_code == 9 and st.reason == "Error"
    log = Path(st.log_path)
    assert log_text(log, "stderr").startswith("err\n")
    out = log_text(log, "stdout")
    assert out.startswith("out\n")
    if handler == "runsc":
        assert "gVisor" in out, out  # gVisor's own kernel log, not the host's
    else:
        assert "gVisor" not in out

    # a long-running one answers exec the same way
    cid = run(pods, pod_id, pod_cfg, container_config(img, command=["sleep", "1000"]))
    wait_state(pods, cid, pb.CONTAINER_RUNNING, timeout=60)
    r = exec_sync(pods, cid, ["sh", "-c", "echo exec; exit 4"], timeout=30)
    assert (r.exit_code, r.stdout) == (4, b"exec\n")

    # and streams: stdin through cat, a terminal with its size
    async def stream() -> None:
        req = pb.ExecRequest(container_id=cid, cmd=["cat"], stdin=True, stdout=True)
        out = await exec_client.run(str(pods.runtime.Exec(req).url), stdin=b"hi\n", stderr=False)
        assert out.stdout == b"hi\n" and out.status()["status"] == "Success"
        cmd = ["sh", "-c", "read x; stty size; exit 6"]
        req = pb.ExecRequest(container_id=cid, cmd=cmd, stdin=True, stdout=True, tty=True)
        s = await exec_client.ExecStreams.open(
            str(pods.runtime.Exec(req).url), stdin=True, stderr=False, tty=True
        )
        await s.resize(90, 30)
        await asyncio.sleep(0.3)
        await s.write_stdin(b"\n")
        out = await s.collect()
        assert b"30 90" in out.stdout, out.stdout
        assert out.status()["details"] == {"causes": [{"reason": "ExitCode", "message": "6"}]}

    asyncio.run(stream())
    pods.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    # nothing of the pod is left in any cgroup hierarchy, whatever the runtime made there
    assert not [d for d in Path("/sys/fs/cgroup").glob(f"*/crispy/{pod_id}")]
