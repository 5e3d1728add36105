"""`crispy runp/pods/inspectp/stopp/rmp`: the real binary against a crispyd with CNI."""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from crispy.cli import lookups
from crispy.cli import pods as cli_pods
from crispy.cli.client import CriClient
from support.daemon import Crispyd
from support.daemon import crispy_cli as crispy
from support.daemon import crispy_ok as ok
from support.pods import TestNetwork

pytestmark = pytest.mark.root

HEADER = ["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"]
AGO = re.compile(r"(Less than a second|1 second|\d+ seconds) ago")


def fails(endpoint: str, *args: str) -> str:
    """Run a command that must exit 1 with nothing on stdout; its stderr."""
    r = crispy(endpoint, *args)
    assert r.returncode == 1, (r.stdout, r.stderr)
    return r.stderr


def table(out: str) -> list[list[str]]:
    """Every line of a table, the header first, split on the 2+ spaces between columns."""
    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.strip()]


def ids(endpoint: str, *args: str) -> list[str]:
    return ok(endpoint, "pods", "-q", *args).split()


def json_config(name: str) -> dict[str, Any]:
    """camelCase keys and enum names, as `crictl inspectp` would print them back."""
    return {
        "metadata": {"name": name, "namespace": "cli-json", "uid": uuid.uuid4().hex, "attempt": 1},
        "hostname": "json-host",
        "labels": {"app": "json", "tier": "front"},
        "annotations": {"note": "from json"},
        "linux": {
            "securityContext": {
                "namespaceOptions": {"network": "POD", "pid": "CONTAINER", "ipc": "POD"}
            }
        },
    }


def yaml_config(name: str) -> str:
    """snake_case keys and namespace modes as numbers, as crictl's own examples have them."""
    return (
        "metadata:\n"
        f"  name: {name}\n"
        "  namespace: cli-yaml\n"
        f"  uid: {uuid.uuid4().hex}\n"
        "  attempt: 0\n"
        "hostname: yaml-host\n"
        "labels:\n"
        "  app: yaml\n"
        "linux:\n"
        "  security_context:\n"
        "    namespace_options:\n"
        "      network: 0\n"
        "      pid: 1\n"
        "      ipc: 0\n"
    )


def runp(endpoint: str, path: Path) -> str:
    out = ok(endpoint, "runp", str(path))
    assert re.fullmatch(r"[0-9a-f]{64}\n", out), out
    return out.strip()


class TwoPods:
    def __init__(self, endpoint: str, tmp: Path) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.json_name, self.yaml_name = f"cli-json-{suffix}", f"cli-yaml-{suffix}"
        jf = tmp / "pod.json"
        jf.write_text(json.dumps(json_config(self.json_name)))
        yf = tmp / "pod.yaml"
        yf.write_text(yaml_config(self.yaml_name))
        self.json_id = runp(endpoint, jf)
        self.yaml_id = runp(endpoint, yf)  # the newer of the two


@pytest.fixture
def two(pod_crispyd: Crispyd, pods: CriClient, tmp_path: Path) -> TwoPods:
    return TwoPods(pod_crispyd.endpoint, tmp_path)


def inspect(endpoint: str, pod_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ok(endpoint, "inspectp", pod_id))
    return doc


# -- runp and inspectp ---------------------------------------------------------------------


def test_runp_from_json_and_yaml_then_inspectp(
    pod_crispyd: Crispyd, pod_net: TestNetwork, two: TwoPods
) -> None:
    ep = pod_crispyd.endpoint
    subnet = ipaddress.ip_network(pod_net.subnet)

    doc = inspect(ep, two.json_id)
    st = doc["status"]
    assert st["id"] == two.json_id
    assert st["state"] == "SANDBOX_READY"
    assert st["metadata"]["name"] == two.json_name
    assert st["metadata"]["namespace"] == "cli-json"
    assert st["metadata"]["attempt"] == 1
    assert st["labels"] == {"app": "json", "tier": "front"}
    assert st["annotations"] == {"note": "from json"}
    assert ipaddress.ip_address(st["network"]["ip"]) in subnet
    assert st["linux"]["namespaces"]["options"]["pid"] == "CONTAINER"
    # info entries are decoded from JSON, not left as strings
    assert isinstance(doc["info"], dict) and doc["info"]

    st = inspect(ep, two.yaml_id)["status"]
    assert st["state"] == "SANDBOX_READY"
    assert st["metadata"]["name"] == two.yaml_name
    assert st["metadata"]["namespace"] == "cli-yaml"
    assert st["labels"] == {"app": "yaml"}
    assert ipaddress.ip_address(st["network"]["ip"]) in subnet
    assert st["linux"]["namespaces"]["options"]["pid"] == "CONTAINER"

    # several IDs: a list, in the order given; YAML too
    docs = json.loads(ok(ep, "inspectp", two.yaml_id, two.json_id))
    assert [d["status"]["id"] for d in docs] == [two.yaml_id, two.json_id]
    ydoc = yaml.safe_load(ok(ep, "inspectp", "-o", "yaml", two.json_id))
    assert ydoc["status"]["id"] == two.json_id

    st = inspect(ep, two.json_id)["status"]
    out = ok(ep, "inspectp", "-o", "table", two.json_id)
    assert f"ID:  {two.json_id}\n" in out
    assert f"Name:  {two.json_name}\n" in out
    assert "Namespace:  cli-json\n" in out
    assert "Attempt:  1\n" in out
    assert "Status:  SANDBOX_READY\n" in out
    assert f"IP Addresses:  {st['network']['ip']}\n" in out
    assert "Labels:  app=json, tier=front\n" in out
    assert "Annotations:  note=from json\n" in out
    handler = st.get("runtimeHandler") or "(default)"
    assert f"Runtime handler:  {handler}\n" in out
    assert re.search(r"^Created:  \S+ \((Less than a second|\d+ seconds?) ago\)$", out, re.M)


# -- pods ----------------------------------------------------------------------------------


def test_pods_table_json_and_yaml_newest_first(pod_crispyd: Crispyd, two: TwoPods) -> None:
    ep = pod_crispyd.endpoint
    handler = inspect(ep, two.json_id)["status"].get("runtimeHandler") or "(default)"
    lines = table(ok(ep, "pods"))
    assert lines[0] == HEADER
    assert len(lines) == 3
    newest, older = lines[1], lines[2]
    assert AGO.fullmatch(newest[1]) and AGO.fullmatch(older[1])
    assert [newest[0], *newest[2:]] == [
        two.yaml_id[:13],
        "Ready",
        two.yaml_name,
        "cli-yaml",
        "0",
        handler,
    ]
    assert [older[0], *older[2:]] == [
        two.json_id[:13],
        "Ready",
        two.json_name,
        "cli-json",
        "1",
        handler,
    ]
    lines = table(ok(ep, "pods", "--no-trunc"))
    assert [row[0] for row in lines[1:]] == [two.yaml_id, two.json_id]

    doc = json.loads(ok(ep, "pods", "-o", "json"))
    assert [p["id"] for p in doc["items"]] == [two.yaml_id, two.json_id]
    newest, older = doc["items"]
    assert older["metadata"] == {
        "name": two.json_name,
        "namespace": "cli-json",
        "uid": older["metadata"]["uid"],
        "attempt": 1,
    }
    # zero values are printed, as crictl does: a ready pod's state, attempt 0
    assert older["state"] == newest["state"] == "SANDBOX_READY"
    assert newest["metadata"]["attempt"] == 0
    assert older["labels"] == {"app": "json", "tier": "front"}
    assert older["annotations"] == {"note": "from json"}
    assert int(older["createdAt"]) > 0  # int64: a JSON string

    doc = yaml.safe_load(ok(ep, "pods", "-o", "yaml", "--label", "app=yaml"))
    assert [p["id"] for p in doc["items"]] == [two.yaml_id]


def test_pods_quiet_filters_and_limits(pod_crispyd: Crispyd, two: TwoPods) -> None:
    ep = pod_crispyd.endpoint
    assert ids(ep) == [two.yaml_id, two.json_id]
    assert ids(ep, "--label", "app=json") == [two.json_id]
    assert ids(ep, "--label", "app=json", "--label", "tier=front") == [two.json_id]
    assert ids(ep, "--label", "app=json", "--label", "tier=back") == []
    assert ids(ep, "--name", two.yaml_name) == [two.yaml_id]
    assert ids(ep, "--name", "^cli-") == [two.yaml_id, two.json_id]
    assert ids(ep, "--namespace", "cli-json") == [two.json_id]
    assert ids(ep, "--id", two.json_id[:8]) == [two.json_id]
    assert ids(ep, "--state", "NotReady") == []
    assert ids(ep, "-l") == [two.yaml_id]
    assert ids(ep, "--last", "1") == [two.yaml_id]
    assert ids(ep, "--last", "5") == [two.yaml_id, two.json_id]

    r = crispy(ep, "pods", "--label", "novalue")
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr
    r = crispy(ep, "pods", "--name", "[")
    assert r.returncode == 2 and "not a regular expression" in r.stderr


# -- stopp and rmp -------------------------------------------------------------------------


def test_stopp_then_notready_then_rmp_by_prefix(pod_crispyd: Crispyd, two: TwoPods) -> None:
    ep = pod_crispyd.endpoint
    assert ok(ep, "stopp", two.json_id[:12]) == f"Stopped sandbox {two.json_id}\n"
    # stopping again is fine: CRI's StopPodSandbox is idempotent
    assert ok(ep, "stopp", two.json_id) == f"Stopped sandbox {two.json_id}\n"

    assert ids(ep, "--state", "notready") == [two.json_id]
    assert ids(ep, "--state", "ready") == [two.yaml_id]
    rows = {row[3]: row for row in table(ok(ep, "pods"))[1:]}
    assert rows[two.json_name][2] == "NotReady"
    assert rows[two.yaml_name][2] == "Ready"
    assert inspect(ep, two.json_id)["status"]["state"] == "SANDBOX_NOTREADY"

    assert ok(ep, "rmp", two.json_id[:10]) == f"Removed sandbox {two.json_id}\n"
    assert ids(ep) == [two.yaml_id]

    # a ready pod, with -f as crictl wants it
    assert ok(ep, "rmp", "-f", two.yaml_id) == f"Removed sandbox {two.yaml_id}\n"
    assert ids(ep) == []


def test_rmp_all(pod_crispyd: Crispyd, two: TwoPods) -> None:
    ep = pod_crispyd.endpoint
    ok(ep, "stopp", two.yaml_id)
    out = ok(ep, "rmp", "--all")
    assert sorted(out.splitlines()) == sorted(
        [f"Removed sandbox {two.json_id}", f"Removed sandbox {two.yaml_id}"]
    )
    assert ids(ep) == []
    assert table(ok(ep, "pods")) == [HEADER]
    # nothing left: still fine
    r = crispy(ep, "rmp", "-a")
    assert r.returncode == 0 and r.stdout == ""

    r = crispy(ep, "rmp")
    assert r.returncode == 2 and "--all" in r.stderr


# -- errors ----------------------------------------------------------------------------------


BAD_FILES = [
    ("broken.json", '{"metadata": {"name": "x"', "not valid JSON"),
    ("broken.yaml", "metadata: [name: x\n", "not valid YAML"),
    ("typo.json", '{"metadta": {"name": "x"}}', 'no field named "metadta"'),
    ("list.yaml", "- metadata: {}\n", "expected a PodSandboxConfig object, got a list"),
    ("empty.yaml", "", "got an empty file"),
    (
        "mode.yaml",
        "metadata: {name: x}\nlinux: {security_context: {namespace_options: {network: HOST}}}\n",
        "Invalid enum value HOST",
    ),
    ("label.yaml", "metadata: {name: x}\nlabels: {on: true}\n", "labels"),
]


@pytest.mark.parametrize(("name", "content", "problem"), BAD_FILES)
def test_bad_pod_config_files_say_what_is_wrong(
    tmp_path: Path, name: str, content: str, problem: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(cli_pods.ConfigError) as e:
        cli_pods.load_pod_config(str(path))
    assert str(e.value).startswith(f"{path}: ") and problem in str(e.value)
    assert "\n" not in str(e.value)


def test_runp_bad_file_exits_1_and_runs_nothing(
    pod_crispyd: Crispyd, pods: CriClient, tmp_path: Path
) -> None:
    ep = pod_crispyd.endpoint
    for name, content, problem in BAD_FILES[:3]:
        path = tmp_path / name
        path.write_text(content)
        err = fails(ep, "runp", str(path))
        assert err.startswith(f"crispy runp: {path}: ") and problem in err, err
        assert "Traceback" not in err
    missing = tmp_path / "nope.json"
    err = fails(ep, "runp", str(missing))
    assert str(missing) in err and "No such file" in err
    assert ids(ep) == []


def test_runp_unknown_handler_prints_the_runtimes_error(
    pod_crispyd: Crispyd, pods: CriClient, tmp_path: Path
) -> None:
    ep = pod_crispyd.endpoint
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(json_config(f"cli-handler-{uuid.uuid4().hex[:6]}")))
    err = fails(ep, "runp", "--runtime", "no-such-handler", str(path))
    # the call, then the runtime's own gRPC status, as main.py prints every failed call
    assert err.startswith("crispy: RunPodSandbox: INVALID_ARGUMENT: "), err
    assert "no-such-handler" in err
    assert ids(ep) == []


def test_unknown_ids_exit_1(pod_crispyd: Crispyd, two: TwoPods) -> None:
    ep = pod_crispyd.endpoint
    unknown = "0" * 64 if not two.json_id.startswith("0") else "f" * 64
    for cmd in ("inspectp", "stopp", "rmp"):
        err = fails(ep, cmd, unknown)
        assert f"pod sandbox {unknown} not found" in err, err

    # the known pod is still handled; the exit code reports the unknown one
    r = crispy(ep, "inspectp", two.json_id, unknown)
    assert r.returncode == 1 and f"pod sandbox {unknown} not found" in r.stderr
    assert [d["status"]["id"] for d in json.loads(r.stdout)] == [two.json_id]
    r = crispy(ep, "stopp", unknown, two.json_id)
    assert r.returncode == 1 and r.stdout == f"Stopped sandbox {two.json_id}\n"
    assert ids(ep, "--state", "ready") == [two.yaml_id]


# -- pure helpers ----------------------------------------------------------------------------


def test_resolve_id() -> None:
    known = ["abc123", "abd456", "xyz789"]
    assert lookups.resolve_id("abc123", known) == "abc123"
    assert lookups.resolve_id("x", known) == "xyz789"
    with pytest.raises(lookups.IDLookupError, match="ambiguous: it matches abc123, abd456"):
        lookups.resolve_id("ab", known)
    with pytest.raises(lookups.IDLookupError, match="pod sandbox q not found"):
        lookups.resolve_id("q", known)
    with pytest.raises(lookups.IDLookupError, match="not found"):
        lookups.resolve_id("", known)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (120, "2 minutes"),
        (3599, "59 minutes"),
        (3600, "About an hour"),
        (2 * 3600, "2 hours"),
        (47 * 3600, "47 hours"),
        (48 * 3600, "2 days"),
        (15 * 86400, "2 weeks"),
        (61 * 86400, "2 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert cli_pods.human_duration(seconds) == text
