"""The OCI runtime driver: how crispyd invokes each RuntimeClass handler's runtime.

An `OciRuntime` per handler knows its binary, root and options, whether it runs inside
the pod's network namespace (gVisor) and whether its pods need a sandbox container, all
from typed config (`runtimes.<name>` in config.py). Every argv it runs, and every one the
shim runs for it, comes from `crispy.shim.runtime_argv` (standard library only, so the
shim shares it); this module adds the prefix and the two ways of running one: through the
pod's shim (the shim is the parent of everything the runtime starts) or, for kill and
delete only, from crispyd itself when no shim may be left.

A handler's features come from `<runtime> features` (runc >= 1.1; the OCI
runtime-spec features document), probed once at startup. A runtime without that
subcommand (crun 1.8, runsc) is assumed to have none of the optional features.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from crispy.config import Config
from crispy.oci.shim_client import ShimClient
from crispy.shim.runtime_argv import RuntimeArgv, log_file

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0
RUNTIME_TIMEOUT = 60.0  # a kill or delete the runtime has not done by then is hung
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"


@dataclass
class HandlerFeatures:
    # Mounts can be made read-only recursively (mount_setattr, "rro" option).
    recursive_read_only_mounts: bool = False
    # Pods can run in a user namespace (the runtime maps IDs on mounts).
    user_namespaces: bool = False


@dataclass
class OciRuntime:
    name: str
    binary: str  # absolute path
    root: str
    features: HandlerFeatures = field(default_factory=HandlerFeatures)
    version: str = ""
    # Pods of this handler get a sandbox container their containers join (VMs); the shim
    # learns their exits from `<runtime> wait`.
    sandbox_container: bool = False
    # The runtime runs inside the pod's network namespace (gVisor: its control socket is
    # an abstract one there, and --network=host uses the namespace it starts in).
    in_pod_netns: bool = False
    options: list[str] = field(default_factory=list)

    def prefix(self, netns: str = "") -> list[str]:
        """The runtime's command line up to its subcommand. A sandbox runtime (gVisor) builds
        its network from, and keeps its control socket in, the namespace it runs in: it is
        run inside the pod's network namespace."""
        argv = [self.binary, "--root", self.root, *self.options]
        if self.in_pod_netns and netns:
            return [NSENTER, f"--net={netns}", *argv]
        return argv

    def argv(self, netns: str = "", bundle: str = "") -> RuntimeArgv:
        """The subcommands' argv; with `bundle`, logging to the bundle's runtime.log (whose
        last error `RuntimeArgv.last_error` reads)."""
        return RuntimeArgv(self.prefix(netns), log_file(bundle) if bundle else "")

    async def run_in_shim(
        self,
        shim: ShimClient,
        cmd: RuntimeArgv,
        argv: list[str],
        *,
        stdin: str | None = None,
        stdio: str = "pipe",
        timeout: float = RUNTIME_TIMEOUT,
    ) -> tuple[int, str]:
        """Run `argv` (from `cmd`) as the pod shim's child; (exit code, error text: stderr,
        else stdout, else the last error of `cmd`'s log). ShimError if the shim can't."""
        rc, out, err = await shim.run(argv, timeout=timeout, stdin=stdin, stdio=stdio)
        return rc, (err or out or cmd.last_error()).strip()

    async def run_direct(
        self, argv: list[str], timeout: float = RUNTIME_TIMEOUT
    ) -> tuple[int, str]:
        """Run `argv` from crispyd itself, not through a pod's shim; (exit code, stderr).
        For kill and delete only, which must work when the shim is gone: a process the
        runtime starts must be the shim's child."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except (OSError, ValueError) as e:  # ValueError: a NUL in a recorded path
            return -1, str(e)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return -1, f"{self.binary} timed out after {timeout:g}s"
        return int(proc.returncode or 0), err.decode(errors="replace").strip()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "binary": self.binary,
            "root": self.root,
            "version": self.version,
            "sandbox_container": self.sandbox_container,
            "in_pod_netns": self.in_pod_netns,
            "options": self.options,
            "features": {
                "recursive_read_only_mounts": self.features.recursive_read_only_mounts,
                "user_namespaces": self.features.user_namespaces,
            },
        }


def _kernel_has_mount_setattr() -> bool:
    # mount_setattr(2) with AT_RECURSIVE arrived in Linux 5.12.
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 12)


def features_from_document(doc: dict[str, Any]) -> HandlerFeatures:
    """Map an OCI runtime `features` document to the CRI handler features."""
    mount_options = doc.get("mountOptions") or []
    linux = doc.get("linux") or {}
    idmap = ((linux.get("mountExtensions") or {}).get("idmap") or {}).get("enabled", False)
    return HandlerFeatures(
        recursive_read_only_mounts="rro" in mount_options and _kernel_has_mount_setattr(),
        user_namespaces="user" in (linux.get("namespaces") or []) and bool(idmap),
    )


def _run(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("probing %s failed: %s", " ".join(argv), e)
        return None


def probe(name: str, binary: str, root: str) -> OciRuntime:
    handler = OciRuntime(name=name, binary=binary, root=root)
    cmd = RuntimeArgv([binary])
    out = _run(cmd.version())
    if out is not None and out.returncode == 0 and out.stdout:
        handler.version = out.stdout.splitlines()[0].strip()
    out = _run(cmd.features())
    if out is not None and out.returncode == 0:
        try:
            handler.features = features_from_document(json.loads(out.stdout))
        except (ValueError, AttributeError) as e:
            log.warning("%s features printed no usable JSON: %s", binary, e)
    return handler


def discover(cfg: Config) -> dict[str, OciRuntime]:
    """Resolve every configured handler's binary and probe its features."""
    handlers = {}
    for name, hc in sorted(cfg.runtimes.items()):
        binary = shutil.which(hc.path)
        if binary is None:  # config validation already checked; the binary went away
            log.warning("runtime handler %s: binary %s not found; skipped", name, hc.path)
            continue
        handlers[name] = probe(name, os.path.abspath(binary), cfg.runtime_root(name))
        handlers[name].sandbox_container = hc.sandbox_container
        handlers[name].in_pod_netns = hc.in_pod_netns
        handlers[name].options = list(hc.options)
        log.info("runtime handler %s: %s (%s)", name, handlers[name].binary, handlers[name].version)
    return handlers
