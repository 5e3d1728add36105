"""The CNI driver: fake plugins that record what they were given, then the real
plugins (bridge, portmap, bandwidth, loopback) in a network namespace the test owns."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shlex
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crispy.sandbox.cni import (
    CNI,
    MAX_BURST,
    CNIError,
    PodNetwork,
    PortMapping,
    bandwidth_args,
    parse_quantity,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFLIST = REPO / "scripts" / "cni" / "10-crispy.conflist"
SETUP_SCRIPT = REPO / "scripts" / "setup-system.sh"
REAL_BIN = "/usr/lib/cni"

# A plugin driven by its own config: records each call (command, CNI_* env, stdin) to
# conf["log"], fails or sleeps on the commands listed, and on ADD appends to the chain's
# result (an interface and addresses when asked, and its type to "trail").
FAKE_PLUGIN = """\
import json, os, sys, time
conf = json.load(sys.stdin)
cmd = os.environ["CNI_COMMAND"]
me = os.path.basename(sys.argv[0])
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
env["has_PATH"] = "PATH" in os.environ
with open(conf["log"], "a") as f:
    f.write(json.dumps({"type": me, "cmd": cmd, "pid": os.getpid(), "env": env, "conf": conf}))
    f.write("\\n")
if cmd in conf.get("sleepOn", []):
    time.sleep(30)
if cmd in conf.get("failOn", []):
    if conf.get("plainError"):
        sys.stderr.write("plain failure on stderr\\n")
    else:
        print(json.dumps({"cniVersion": conf["cniVersion"], "code": 7,
                          "msg": "boom from " + me, "details": "some details"}))
    sys.exit(1)
if cmd == "ADD":
    if conf.get("garbage"):
        print("not json")
        sys.exit(0)
    r = conf.get("prevResult") or {"cniVersion": conf["cniVersion"], "interfaces": [], "ips": []}
    r.setdefault("trail", []).append(me)
    if conf.get("addIPs"):
        r["interfaces"].append({"name": os.environ["CNI_IFNAME"], "sandbox": "x"})
        for a in conf["addIPs"]:
            r["ips"].append({"address": a, "interface": len(r["interfaces"]) - 1})
    print(json.dumps(r))
"""

POD_ID = "0123456789abcdef" * 4


@dataclass
class Fake:
    """A conf dir, a bin dir of fake plugins, a cache dir and the call log."""

    root: Path
    conf_dir: Path
    bin_dir: Path
    cache_dir: Path
    log: Path

    def write_conf(self, plugins: list[dict[str, Any]], name: str = "testnet", **kw: Any) -> Path:
        for p in plugins:
            p.setdefault("log", str(self.log))
        doc = {"cniVersion": kw.pop("version", "1.0.0"), "name": name, "plugins": plugins}
        path = self.conf_dir / kw.pop("filename", "10-test.conflist")
        path.write_text(json.dumps(doc))
        return path

    def cni(self, timeout: float = 10.0) -> CNI:
        return CNI(str(self.conf_dir), [str(self.bin_dir)], str(self.cache_dir), timeout=timeout)

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def clear(self) -> None:
        self.log.unlink(missing_ok=True)


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    f = Fake(tmp_path, tmp_path / "net.d", tmp_path / "bin", tmp_path / "cache", tmp_path / "log")
    f.conf_dir.mkdir()
    f.bin_dir.mkdir()
    src = tmp_path / "fakeplugin.py"
    src.write_text(f"#!{sys.executable} -S\n{FAKE_PLUGIN}")
    src.chmod(0o755)
    for name in ("fakea", "fakeb", "fakec"):
        (f.bin_dir / name).symlink_to(src)
    return f


def pod(netns: str = "", **kw: Any) -> PodNetwork:
    return PodNetwork(pod_id=POD_ID, netns=netns, name="web", namespace="default", uid="u-1", **kw)


def three(fake: Fake, **kw: Any) -> Path:
    """fakea adds addresses; fakeb takes port mappings; fakec takes the rest."""
    return fake.write_conf(
        [
            {"type": "fakea", "addIPs": ["fd00::5/64", "10.1.0.5/24"], **kw.pop("a", {})},
            {
                "type": "fakeb",
                "capabilities": {"portMappings": True, "bandwidth": False},
                **kw.pop("b", {}),
            },
            {
                "type": "fakec",
                "capabilities": {
                    "io.kubernetes.cri.pod-annotations": True,
                    "bandwidth": True,
                    "cgroupPath": True,
                },
                **kw.pop("c", {}),
            },
        ],
        **kw,
    )


def cache_files(fake: Fake) -> list[str]:
    return sorted(os.listdir(fake.cache_dir)) if fake.cache_dir.exists() else []


def test_add_chains_results_and_passes_only_declared_capabilities(fake: Fake) -> None:
    three(fake)
    net = pod(
        netns="/run/netns/somewhere",
        port_mappings=[
            PortMapping(8080, 80, "TCP", "127.0.0.1"),
            PortMapping(0, 81),  # no host port: no mapping
            PortMapping(5353, 53, "udp"),
        ],
        annotations={"kubernetes.io/ingress-bandwidth": "10M", "a": "b"},
        cgroup_parent="/kubepods/pod-u-1",
    )
    res = asyncio.run(fake.cni().setup(net))

    assert res.ips == ["10.1.0.5", "fd00::5"]  # IPv4 first, no prefix
    assert res.result["trail"] == ["fakea", "fakeb", "fakec"]
    a, b, c = fake.calls()
    assert [x["type"] for x in (a, b, c)] == ["fakea", "fakeb", "fakec"]
    assert all(x["cmd"] == "ADD" for x in (a, b, c))
    # Chaining: the first plugin gets no prevResult, each next one the previous result.
    assert "prevResult" not in a["conf"]
    assert b["conf"]["prevResult"]["trail"] == ["fakea"]
    assert c["conf"]["prevResult"]["trail"] == ["fakea", "fakeb"]
    for x in (a, b, c):
        assert x["conf"]["name"] == "testnet"
        assert x["conf"]["cniVersion"] == "1.0.0"
        assert x["env"] == {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": POD_ID,
            "CNI_NETNS": "/run/netns/somewhere",
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": (
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
                f"K8S_POD_INFRA_CONTAINER_ID={POD_ID};K8S_POD_UID=u-1"
            ),
            "CNI_PATH": str(fake.bin_dir),
            "has_PATH": True,
        }
    # runtimeConfig: only what each plugin declares (true), nothing for no capabilities.
    assert "runtimeConfig" not in a["conf"]
    assert b["conf"]["runtimeConfig"] == {
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
        ]
    }
    assert c["conf"]["runtimeConfig"] == {
        "io.kubernetes.cri.pod-annotations": {"kubernetes.io/ingress-bandwidth": "10M", "a": "b"},
        "bandwidth": {"ingressRate": 10_000_000, "ingressBurst": MAX_BURST},
        "cgroupPath": "/kubepods/pod-u-1",
    }


def test_result_cache_is_libcni_format_written_atomically(fake: Fake) -> None:
    conf = three(fake)
    cni = fake.cni()
    res = asyncio.run(cni.setup(pod(annotations={"x": "y"})))

    name = f"testnet-{POD_ID}-eth0"
    assert cache_files(fake) == [name]  # no temp file left behind
    path = fake.cache_dir / name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entry = json.loads(path.read_text())
    assert entry["kind"] == "cniCacheV1"
    assert entry["containerId"] == POD_ID
    assert entry["ifName"] == "eth0"
    assert entry["networkName"] == "testnet"
    assert base64.b64decode(entry["config"]) == conf.read_bytes()
    assert entry["cniArgs"] == [
        ["IgnoreUnknown", "1"],
        ["K8S_POD_NAMESPACE", "default"],
        ["K8S_POD_NAME", "web"],
        ["K8S_POD_INFRA_CONTAINER_ID", POD_ID],
        ["K8S_POD_UID", "u-1"],
    ]
    assert entry["capabilityArgs"] == {
        "portMappings": [],
        "io.kubernetes.cri.pod-annotations": {"x": "y"},
    }
    assert entry["result"] == res.result
    assert cni.cached(POD_ID) == entry
    assert cni.cached(POD_ID, "eth1") is None
    assert cni.cached("f" * 64) is None


def test_single_plugin_conf_file_is_cached_as_a_list(fake: Fake) -> None:
    doc = {"cniVersion": "0.4.0", "name": "single", "type": "fakea", "log": str(fake.log)}
    (fake.conf_dir / "05-single.conf").write_text(json.dumps(doc))
    cni = fake.cni()
    asyncio.run(cni.setup(pod()))
    entry = cni.cached(POD_ID)
    assert entry is not None
    cached = json.loads(base64.b64decode(entry["config"]))
    assert cached["name"] == "single"
    assert cached["plugins"][0]["type"] == "fakea"

    os.unlink(fake.conf_dir / "05-single.conf")
    fake.clear()
    asyncio.run(cni.teardown(pod()))
    assert [(c["type"], c["cmd"]) for c in fake.calls()] == [("fakea", "DEL")]


@pytest.mark.parametrize("change", ["replaced", "deleted"])
def test_teardown_uses_the_cached_network_after_the_conf_dir_changed(
    fake: Fake, change: str
) -> None:
    conf = three(fake)
    cni = fake.cni()
    net = pod(port_mappings=[PortMapping(8080, 80)])
    res = asyncio.run(cni.setup(net))
    conf.unlink()
    if change == "replaced":
        fake.write_conf([{"type": "fakea"}], name="other", filename="20-other.conflist")
    fake.clear()

    # A restarted crispyd knows the pod id and the netns, maybe not the metadata.
    asyncio.run(cni.teardown(PodNetwork(POD_ID, "", "", "", "")))
    calls = fake.calls()
    assert [(c["type"], c["cmd"]) for c in calls] == [
        ("fakec", "DEL"),
        ("fakeb", "DEL"),
        ("fakea", "DEL"),
    ]
    for c in calls:
        assert c["conf"]["name"] == "testnet"
        assert c["conf"]["prevResult"] == res.result
        assert c["env"]["CNI_NETNS"] == ""
        assert f"K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID={POD_ID};" in c["env"]["CNI_ARGS"]
    assert calls[1]["conf"]["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    }
    assert cache_files(fake) == []

    # Twice: no cache now, so DEL goes through the current network (if any) and succeeds.
    fake.clear()
    asyncio.run(cni.teardown(net))
    want = [("fakea", "DEL", "other")] if change == "replaced" else []
    assert [(c["type"], c["cmd"], c["conf"]["name"]) for c in fake.calls()] == want
    assert all("prevResult" not in c["conf"] for c in fake.calls())


def test_teardown_without_a_cache_uses_the_current_network(fake: Fake) -> None:
    three(fake)
    asyncio.run(fake.cni().teardown(pod(annotations={"k": "v"})))
    calls = fake.calls()
    assert [c["type"] for c in calls] == ["fakec", "fakeb", "fakea"]
    assert all("prevResult" not in c["conf"] for c in calls)
    assert calls[0]["conf"]["runtimeConfig"]["io.kubernetes.cri.pod-annotations"] == {"k": "v"}


def test_teardown_passes_no_netns_once_the_namespace_is_gone(fake: Fake, tmp_path: Path) -> None:
    three(fake)
    cni = fake.cni()
    # An unmounted pin leaves an empty file: that is no netns for a plugin either.
    stale = tmp_path / "net"
    stale.write_text("")
    for netns in (str(tmp_path / "missing"), str(stale)):
        asyncio.run(cni.setup(pod(netns=netns)))
        fake.clear()
        asyncio.run(cni.teardown(pod(netns=netns)))
        assert [c["env"]["CNI_NETNS"] for c in fake.calls()] == ["", "", ""]


def test_teardown_keeps_the_cache_when_del_fails(fake: Fake) -> None:
    three(fake, b={"failOn": ["DEL"]})
    cni = fake.cni()
    asyncio.run(cni.setup(pod()))
    fake.clear()
    with pytest.raises(CNIError, match="boom from fakeb"):
        asyncio.run(cni.teardown(pod()))
    # libcni stops at the first failed DEL: fakea (the IP owner) is not released yet.
    assert [c["type"] for c in fake.calls()] == ["fakec", "fakeb"]
    assert cni.cached(POD_ID) is not None


def test_add_failure_deletes_the_chain_and_the_cache(fake: Fake) -> None:
    three(fake, b={"failOn": ["ADD"]})
    cni = fake.cni()
    with pytest.raises(CNIError) as e:
        asyncio.run(cni.setup(pod(netns="/run/netns/x")))
    msg = str(e.value)
    assert 'plugin type="fakeb" name="testnet" failed (add)' in msg
    assert "boom from fakeb: some details" in msg
    calls = fake.calls()
    assert [(c["type"], c["cmd"]) for c in calls] == [
        ("fakea", "ADD"),
        ("fakeb", "ADD"),
        ("fakec", "DEL"),
        ("fakeb", "DEL"),
        ("fakea", "DEL"),
    ]
    for c in calls[2:]:
        assert c["conf"]["prevResult"]["trail"] == ["fakea"]  # how far the chain got
        assert c["env"]["CNI_NETNS"] == "/run/netns/x"
    assert cache_files(fake) == []


def test_add_failure_keeps_the_cache_when_the_undo_fails(fake: Fake) -> None:
    three(fake, b={"failOn": ["ADD"]}, a={"failOn": ["DEL"]})
    cni = fake.cni()
    with pytest.raises(CNIError, match="failed \\(add\\)"):
        asyncio.run(cni.setup(pod()))
    assert cni.cached(POD_ID) is not None  # so the pod's teardown retries with this config


def test_plugin_error_without_json_reports_stderr(fake: Fake) -> None:
    three(fake, a={"failOn": ["ADD"], "plainError": True})
    with pytest.raises(CNIError, match=r'type="fakea".*plain failure on stderr'):
        asyncio.run(fake.cni().setup(pod()))


def test_invalid_add_result_is_an_error(fake: Fake) -> None:
    three(fake, a={"garbage": True})
    with pytest.raises(CNIError, match="invalid result"):
        asyncio.run(fake.cni().setup(pod()))
    assert cache_files(fake) == []


def test_plugin_timeout_kills_it_and_undoes(fake: Fake) -> None:
    three(fake, b={"sleepOn": ["ADD"]})
    start = time.monotonic()
    with pytest.raises(CNIError, match=r'type="fakeb".*timed out after 0\.5s'):
        asyncio.run(fake.cni(timeout=0.5).setup(pod()))
    assert time.monotonic() - start < 5
    calls = fake.calls()
    with pytest.raises(ProcessLookupError):
        os.kill(calls[1]["pid"], 0)
    assert [(c["type"], c["cmd"]) for c in calls[2:]] == [
        ("fakec", "DEL"),
        ("fakeb", "DEL"),
        ("fakea", "DEL"),
    ]


def test_missing_plugin_binary_fails_before_any_add(fake: Fake) -> None:
    fake.write_conf([{"type": "fakea"}, {"type": "nosuch"}])
    with pytest.raises(CNIError) as e:
        asyncio.run(fake.cni().setup(pod()))
    assert 'plugin type="nosuch"' in str(e.value)
    assert str(fake.bin_dir) in str(e.value)
    assert fake.calls() == []
    assert cache_files(fake) == []


def test_no_network_config(fake: Fake) -> None:
    with pytest.raises(CNIError, match=f"no network config found in {fake.conf_dir}"):
        asyncio.run(fake.cni().setup(pod()))
    asyncio.run(fake.cni().teardown(pod()))  # nothing to detach from: not an error


def test_bad_bandwidth_annotation_fails_before_any_add(fake: Fake) -> None:
    three(fake)
    net = pod(annotations={"kubernetes.io/egress-bandwidth": "10 megs"})
    with pytest.raises(CNIError, match=r"kubernetes\.io/egress-bandwidth"):
        asyncio.run(fake.cni().setup(net))
    assert fake.calls() == []


@pytest.mark.parametrize("version, checks", [("1.0.0", True), ("0.4.0", True), ("0.3.1", False)])
def test_check_uses_the_cache_from_cni_0_4(fake: Fake, version: str, checks: bool) -> None:
    three(fake, version=version)
    cni = fake.cni()
    asyncio.run(cni.check(pod()))  # no cache: nothing to check
    assert fake.calls() == []
    res = asyncio.run(cni.setup(pod(netns="/run/netns/y")))
    fake.clear()
    asyncio.run(cni.check(pod(netns="/run/netns/y")))
    calls = fake.calls()
    if not checks:
        assert calls == []
        return
    assert [(c["type"], c["cmd"]) for c in calls] == [
        ("fakea", "CHECK"),
        ("fakeb", "CHECK"),
        ("fakec", "CHECK"),
    ]
    assert all(c["conf"]["prevResult"] == res.result for c in calls)
    assert all(c["env"]["CNI_NETNS"] == "/run/netns/y" for c in calls)


def test_del_before_cni_0_4_gets_no_prev_result(fake: Fake) -> None:
    three(fake, version="0.3.1")
    cni = fake.cni()
    asyncio.run(cni.setup(pod()))
    fake.clear()
    asyncio.run(cni.teardown(pod()))
    assert [c["cmd"] for c in fake.calls()] == ["DEL"] * 3
    assert all("prevResult" not in c["conf"] for c in fake.calls())


@pytest.mark.parametrize(
    "text, value",
    [
        ("10M", 10_000_000),
        ("1Gi", 1 << 30),
        ("500k", 500_000),
        ("1.5M", 1_500_000),
        ("1e6", 1_000_000),
        ("2E3", 2000),
        ("100", 100),
        ("1500m", 2),  # rounded up, as Quantity.Value() does
        (".5Ki", 512),
        ("1E", 10**18),
    ],
)
def test_parse_quantity(text: str, value: int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "M", "10 M", "10K", "10mb", "1e", "0x10", "1.2.3", "10Mi5"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_bandwidth_args() -> None:
    assert bandwidth_args({}) is None
    assert bandwidth_args({"kubernetes.io/egress-bandwidth": "1Mi"}) == {
        "egressRate": 1 << 20,
        "egressBurst": 2147483647,
    }
    for bad in ("100", "2P", "-1M", "fast"):  # kubelet's bounds are 1k..1P
        with pytest.raises(CNIError, match=r"kubernetes\.io/ingress-bandwidth"):
            bandwidth_args({"kubernetes.io/ingress-bandwidth": bad})


# --- the default conflist and its installer ------------------------------------------------


def install_snippet(conf_dir: Path) -> subprocess.CompletedProcess[str]:
    """Only the CNI part of setup-system.sh: it skips package installs when told to."""
    env = dict(os.environ, CRISPY_CNI_CONF_DIR=str(conf_dir), CRISPY_SETUP_ONLY="cni")
    return subprocess.run(
        ["sh", str(SETUP_SCRIPT)], env=env, capture_output=True, text=True, check=True
    )


def test_setup_installs_the_default_conflist_only_into_an_empty_conf_dir(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    install_snippet(conf_dir)
    installed = conf_dir / "10-crispy.conflist"
    assert installed.read_bytes() == DEFAULT_CONFLIST.read_bytes()
    before = installed.stat().st_mtime_ns
    install_snippet(conf_dir)  # idempotent
    assert installed.stat().st_mtime_ns == before
    assert os.listdir(conf_dir) == ["10-crispy.conflist"]

    for existing in ("05-x.conf", "05-x.json", "99-x.conflist"):
        other = tmp_path / existing
        other.mkdir()
        (other / existing).write_text("{}")
        install_snippet(other)
        assert os.listdir(other) == [existing]
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "README").write_text("")
    install_snippet(unrelated)
    assert sorted(os.listdir(unrelated)) == ["10-crispy.conflist", "README"]


def test_default_conflist_shape() -> None:
    doc = json.loads(DEFAULT_CONFLIST.read_text())
    assert doc["cniVersion"] == "1.0.0"
    assert doc["name"] == "crispy"
    assert [p["type"] for p in doc["plugins"]] == ["bridge", "portmap", "bandwidth", "loopback"]


# --- the real plugins ------------------------------------------------------------------------

root = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(f"{REAL_BIN}/bridge"),
    reason="needs root and containernetworking-plugins",
)


def sh(cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, check=check).stdout


def iptables_lines(*needles: str) -> list[str]:
    out = sh("iptables-save") + sh("ip6tables-save", check=False)
    return [line for line in out.splitlines() if any(n in line for n in needles)]


def remove_leftover_rules(pod_id: str) -> None:
    """Safety net: a failed test must not leave the machine's tables dirty."""
    for tool in ("iptables", "ip6tables"):
        out = subprocess.run([f"{tool}-save"], capture_output=True, text=True).stdout
        table, chains = "", set[tuple[str, str]]()
        for line in out.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A ") and pod_id in line:
                args = shlex.split(line)
                chains.update((table, a) for a in args if a.startswith("CNI-"))
                subprocess.run([tool, "-t", table, "-D", *args[1:]], capture_output=True)
        for table, chain in chains:
            if chain.startswith("CNI-HOSTPORT-"):
                continue  # portmap's shared chains stay; only per-pod ones go
            subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
            subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)


def ifbs() -> set[str]:
    return {line.split(":")[1].strip() for line in sh("ip -o link show type ifb").splitlines()}


@dataclass
class Real:
    cni: CNI
    net: PodNetwork
    netns: str
    bridge: str
    subnet_prefix: str
    data_dir: Path
    network: str

    def veths(self) -> list[str]:
        return sh(f"ip -o link show master {self.bridge}", check=False).splitlines()


@pytest.fixture
def real(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Real]:
    tag = secrets.token_hex(2)
    netns = f"crispytest-{tag}"
    bridge = f"crtest{tag}"
    network = f"crtest{tag}"
    x = 1 + secrets.randbelow(250)
    doc = json.loads(DEFAULT_CONFLIST.read_text())
    doc["name"] = network
    b = doc["plugins"][0]
    b["bridge"] = bridge
    b["ipam"]["ranges"] = [[{"subnet": f"10.251.{x}.0/24"}]]
    b["ipam"]["dataDir"] = str(tmp_path / "ipam")  # nothing under /var/lib/cni
    b["ipMasq"] = getattr(request, "param", {}).get("ipMasq", True)
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    (conf_dir / "10-test.conflist").write_text(json.dumps(doc))
    sh(f"ip netns add {netns}")
    cni = CNI(str(conf_dir), [REAL_BIN], str(tmp_path / "cache"), timeout=20)
    net = PodNetwork(secrets.token_hex(32), f"/run/netns/{netns}", "p", "ns", "uid")
    try:
        yield Real(cni, net, netns, bridge, f"10.251.{x}.", tmp_path / "ipam" / network, network)
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(cni.teardown(net))
        sh(f"ip netns del {netns}", check=False)
        sh(f"ip link del {bridge}", check=False)
        remove_leftover_rules(net.pod_id)


@pytest.mark.root
@root
def test_real_plugins_attach_and_detach(real: Real) -> None:
    port = 20000 + secrets.randbelow(20000)
    real.net.port_mappings = [PortMapping(port, 80, "tcp", "127.0.0.1")]
    real.net.annotations = {"kubernetes.io/egress-bandwidth": "10M"}
    ifbs_before = ifbs()
    res = asyncio.run(real.cni.setup(real.net))
    assert len(res.ips) == 1 and res.ips[0].startswith(real.subnet_prefix)
    ip = res.ips[0]
    eth0 = sh(f"ip -n {real.netns} -o addr show dev eth0")
    assert f"inet {ip}/24" in eth0
    assert "UP" in sh(f"ip -n {real.netns} -o link show dev lo").split("<")[1].split(">")[0]
    assert (real.data_dir / ip).exists()
    assert len(real.veths()) == 1
    assert iptables_lines(real.net.pod_id)  # portmap's DNAT and bridge's masquerade
    assert f"--dport {port}" in "\n".join(iptables_lines(f"{ip}:80"))
    # the egress limit is an ifb device on the host, named after the container
    assert len(ifbs()) == len(ifbs_before) + 1

    asyncio.run(real.cni.teardown(real.net))
    assert not (real.data_dir / ip).exists()
    assert real.veths() == []
    assert iptables_lines(real.net.pod_id, f"{ip}/", f"{ip}:") == []
    assert ifbs() == ifbs_before
    assert real.cni.cached(real.net.pod_id) is None
    asyncio.run(real.cni.teardown(real.net))  # twice is fine


# bridge 1.1.1 removes its ipMasq rules only from inside the netns: once the netns is
# gone they leak, so the pod's teardown must come before its netns is released.
@pytest.mark.root
@root
@pytest.mark.parametrize("real", [{"ipMasq": False}], indirect=True)
def test_real_teardown_after_the_netns_is_gone(real: Real) -> None:
    res = asyncio.run(real.cni.setup(real.net))
    ip = res.ips[0]
    sh(f"ip netns del {real.netns}")
    asyncio.run(real.cni.teardown(real.net))
    assert not (real.data_dir / ip).exists()
    # The veth dies with the netns, which the kernel destroys a moment after its last
    # reference goes (asynchronously, in a workqueue): wait for it, briefly.
    deadline = time.monotonic() + 5
    while real.veths() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert real.veths() == []
    assert iptables_lines(real.net.pod_id, f"{ip}/", f"{ip}:") == []
    asyncio.run(real.cni.teardown(real.net))
