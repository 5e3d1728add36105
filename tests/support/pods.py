"""Pod test helpers: a crispyd with a CNI network and a pause image, pod configs, netns tools."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crispy.api import pb
from crispy.cli.client import CriClient
from support.daemon import Crispyd

CNI_BIN = "/usr/lib/cni"


@dataclass(frozen=True)
class TestNetwork:
    """One CNI network for one test daemon: its own bridge, subnet and IPAM data dir."""

    __test__ = False

    bridge: str
    subnet: str  # e.g. 10.250.0.0/24
    ipam_dir: Path

    @classmethod
    def random(cls, tag: str, octet: int, ipam_dir: Path) -> TestNetwork:
        """Bridge `crispy<tag><xx>` on 10.<octet>.<x>.0/24, x random: test sessions and
        daemons that run at once on one host get networks of their own."""
        x = random.randrange(256)
        return cls(f"crispy{tag}{x:02x}", f"10.{octet}.{x}.0/24", ipam_dir)

    @property
    def prefix(self) -> str:
        return self.subnet.rsplit(".", 1)[0] + "."

    def conflist(self, plugins_before: list[dict] | None = None) -> str:
        return json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": f"crispy-test-{self.bridge}",
                "plugins": [
                    *(plugins_before or []),
                    {
                        "type": "bridge",
                        "bridge": self.bridge,
                        "isGateway": True,
                        "ipMasq": True,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": self.subnet}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": str(self.ipam_dir),
                        },
                    },
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                    {"type": "bandwidth", "capabilities": {"bandwidth": True}},
                    {"type": "loopback"},
                ],
            },
            indent=1,
        )

    def allocated(self) -> set[str]:
        """IPs host-local holds for pods right now."""
        d = self.ipam_dir / f"crispy-test-{self.bridge}"
        if not d.is_dir():
            return set()
        return {n for n in os.listdir(d) if n[0].isdigit() and n.count(".") == 3}

    def remove_bridge(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


def pod_daemon_config(base: Path, net: TestNetwork, sandbox_image: str, extra: str = "") -> str:
    return (
        'log_level = "debug"\n'
        f'sandbox_image = "{sandbox_image}"\n'
        f"{extra}"
        "[cni]\n"
        f'conf_dir = "{base / "net.d"}"\n'
        f'bin_dirs = ["{CNI_BIN}"]\n'
        "[registry]\n"
        f'hosts_dir = "{base / "certs.d"}"\n'
    )


def start_pod_daemon(base: Path, net: TestNetwork, sandbox_image: str, extra: str = "") -> Crispyd:
    d = Crispyd(base, config=pod_daemon_config(base, net, sandbox_image, extra))
    (base / "net.d" / "10-test.conflist").write_text(net.conflist())
    return d.start()


def pod_config(
    name: str | None = None,
    *,
    namespace: str = "crispy-test",
    attempt: int = 0,
    hostname: str = "",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    network: pb.NamespaceMode.ValueType = pb.POD,
    pid: pb.NamespaceMode.ValueType = pb.CONTAINER,
    ipc: pb.NamespaceMode.ValueType = pb.POD,
    dns: pb.DNSConfig | None = None,
    ports: list[pb.PortMapping] | None = None,
    sysctls: dict[str, str] | None = None,
    cgroup_parent: str = "",
    log_directory: str = "",
) -> pb.PodSandboxConfig:
    name = name or f"pod-{uuid.uuid4().hex[:8]}"
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=name, namespace=namespace, uid=uuid.uuid4().hex, attempt=attempt
        ),
        hostname=hostname,
        log_directory=log_directory,
        dns_config=dns,
        port_mappings=ports or [],
        labels=labels or {},
        annotations=annotations or {},
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            sysctls=sysctls or {},
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=network, pid=pid, ipc=ipc)
            ),
        ),
    )


def run_pod(cri: CriClient, config: pb.PodSandboxConfig, handler: str = "") -> str:
    resp = cri.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=60
    )
    return str(resp.pod_sandbox_id)


def pod_status(cri: CriClient, pod_id: str) -> tuple[pb.PodSandboxStatus, dict]:
    resp = cri.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
    )
    return resp.status, json.loads(resp.info["info"])


def stop_pod(cri: CriClient, pod_id: str) -> None:
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


def remove_pod(cri: CriClient, pod_id: str) -> None:
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


def remove_all_pods(cri: CriClient) -> None:
    for p in cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
        remove_pod(cri, p.id)


def in_netns(netns: str, *argv: str, **kw: object) -> subprocess.Popen[bytes]:
    """Start a command inside a pod's network namespace (the test made the pod)."""
    return subprocess.Popen(["nsenter", f"--net={netns}", *argv], **kw)  # type: ignore[call-overload]


def run_in_netns(netns: str, *argv: str, timeout: float = 20) -> str:
    return subprocess.run(
        ["nsenter", f"--net={netns}", *argv],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    ).stdout


def host_state(base: Path | None = None, net: TestNetwork | None = None) -> dict[str, set[str]]:
    """What pods can leak on the host: links, mounts (under `base`), iptables rules (naming
    `net`'s subnet or bridge), so other test sessions' pods on the same host don't count."""
    links = set(
        line.split(":")[1].strip().split("@")[0]
        for line in subprocess.run(
            ["ip", "-o", "link"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    )
    mounts = set(Path("/proc/self/mountinfo").read_text().splitlines())
    rules = set(
        subprocess.run(
            ["iptables-save"], capture_output=True, text=True, check=False
        ).stdout.splitlines()
    )
    rules = {r for r in rules if not r.startswith(("#", ":")) and r not in ("COMMIT",)}
    rules = {r for r in rules if not r.startswith("*")}
    if base is not None:
        mounts = {m for m in mounts if str(base) in m}
    if net is not None:
        rules = {r for r in rules if net.prefix in r or net.bridge in r}
    return {"links": links, "mounts": mounts, "rules": rules}


def listener_script(port: int, reply: str) -> list[str]:
    """A one-shot TCP server: prints READY, answers one connection with `reply`."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('0.0.0.0', {port})); s.listen(4)\n"
        "print('READY', flush=True)\n"
        "s.settimeout(30)\n"
        "c,_=s.accept()\n"
        f"c.sendall({reply!r}.encode()); c.close()\n"
    )
    return ["python3", "-c", code]


def start_listener(netns: str, port: int, reply: str) -> subprocess.Popen[bytes]:
    proc = in_netns(netns, *listener_script(port, reply), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == b"READY", line
    return proc


def connect_script(host: str, port: int) -> list[str]:
    code = (
        "import socket\n"
        f"c=socket.create_connection(({host!r}, {port}), timeout=10)\n"
        "print(c.recv(100).decode())\n"
    )
    return ["python3", "-c", code]


def iter_lines(text: str) -> Iterator[str]:
    yield from (line for line in text.splitlines() if line.strip())


def wait_shim(cri: CriClient, pod_id: str, timeout: float = 10) -> dict:
    """The pod's verbose info once its shim runs (it starts just after RunPodSandbox)."""
    deadline = time.monotonic() + timeout
    while True:
        _, info = pod_status(cri, pod_id)
        if info["shimPid"] or time.monotonic() > deadline:
            return info
        time.sleep(0.01)
