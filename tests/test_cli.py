"""The `crispy` command line against a real crispyd."""

from __future__ import annotations

import json
import os
import subprocess

import yaml

from support.daemon import Crispyd, crispy_bin


def crispy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [crispy_bin("crispy"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_version_table(crispyd: Crispyd) -> None:
    r = crispy("-r", crispyd.endpoint, "version")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(":  ", 1) for line in r.stdout.splitlines())
    assert lines["RuntimeName"] == "crispy"
    assert lines["RuntimeApiVersion"] == "v1"


def test_version_json_and_yaml(crispyd: Crispyd) -> None:
    r = crispy("-r", crispyd.endpoint, "version", "-o", "json")
    assert json.loads(r.stdout)["runtimeName"] == "crispy"
    r = crispy("-r", crispyd.endpoint, "version", "-o", "yaml")
    assert yaml.safe_load(r.stdout)["runtimeApiVersion"] == "v1"


def test_endpoint_from_environment(crispyd: Crispyd) -> None:
    r = crispy("version", env={"CONTAINER_RUNTIME_ENDPOINT": crispyd.endpoint})
    assert r.returncode == 0, r.stderr
    assert "RuntimeName:  crispy" in r.stdout
    # a bare path is taken as a unix socket, as crictl does
    r = crispy("-r", str(crispyd.socket), "version")
    assert "RuntimeName:  crispy" in r.stdout


def test_info(crispyd: Crispyd) -> None:
    r = crispy("-r", crispyd.endpoint, "info")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    types = {c["type"] for c in doc["status"]["conditions"]}
    assert types == {"RuntimeReady", "NetworkReady"}
    assert doc["config"]["root"] == str(crispyd.root)
    r = crispy("-r", crispyd.endpoint, "info", "-o", "table")
    assert "RuntimeReady" in r.stdout and "runc" in r.stdout


def test_unreachable_runtime_is_a_clear_error(tmp_path: os.PathLike[str]) -> None:
    r = crispy("-r", f"unix://{tmp_path}/none.sock", "--timeout", "2", "version")
    assert r.returncode == 1
    assert "cannot reach the runtime" in r.stderr and "none.sock" in r.stderr
