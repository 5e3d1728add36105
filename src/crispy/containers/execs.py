"""Processes in running containers: ExecSync, and the ends of Exec and Attach streams.

Separate from the lifecycle (containers/manager.py): these only need a running container,
its OCI spec (an exec'd process inherits the container's user, env, capabilities and
profiles) and its pod's shim, which runs `<runtime> exec` and holds the stdio.
"""

from __future__ import annotations

import json
import os
from typing import Any

from crispy import errors
from crispy.containers.manager import ContainerManager
from crispy.containers.record import Container
from crispy.containers.stdio import Attachment, ExecProcess
from crispy.oci import spec as specmod

EXEC_OUTPUT_CAP = 16 << 20  # of each of ExecSync's stdout and stderr


class ContainerExecs:
    def __init__(self, containers: ContainerManager) -> None:
        self.containers = containers

    def check_streamable(self, cid: str) -> Container:
        """The container, if it runs (Exec, Attach and their streams need it to)."""
        return self.containers.running(cid)

    def _process(self, c: Container, cmd: list[str], tty: bool = False) -> dict[str, Any]:
        """The OCI process of `cmd`, as the container's own process runs (InvalidArgument
        for an empty one)."""
        with open(os.path.join(c.bundle, "config.json")) as f:
            spec = json.load(f)
        return specmod.exec_process(spec, cmd, tty=tty)

    async def exec_sync(self, cid: str, cmd: list[str], timeout: int) -> tuple[int, bytes, bytes]:
        c = self.containers.running(cid)
        process = self._process(c, list(cmd))
        code, out, err, timed_out = await self.containers.shim_of(c).exec_sync(
            c.id, process, timeout=timeout, max_output=EXEC_OUTPUT_CAP
        )
        if timed_out:
            raise errors.DeadlineExceeded(
                f"command {cmd!r} in container {c.id} timed out after {timeout}s"
            )
        return code, out, err

    async def exec_stream(
        self, cid: str, cmd: list[str], *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> ExecProcess:
        """Start `cmd` in the container through its shim, with pipes (or a terminal) here."""
        c = self.containers.running(cid)
        process = self._process(c, list(cmd), tty=tty)
        if tty and not any(e.startswith("TERM=") for e in process.get("env", [])):
            process.setdefault("env", []).append("TERM=xterm")  # as containerd does
        return await ExecProcess.start(
            self.containers.shim_of(c), c.id, process, stdin=stdin, stdout=stdout, stderr=stderr
        )

    async def attach(self, cid: str, *, stdin: bool, stdout: bool, stderr: bool) -> Attachment:
        """Pipes to the container's stdio; stdin only if it was created with one (a terminal
        has no stderr: Attachment leaves it out)."""
        c = self.containers.running(cid)
        return await Attachment.open(
            self.containers.shim_of(c),
            c.id,
            tty=c.config.tty,
            stdin=stdin and c.config.stdin,
            stdout=stdout,
            stderr=stderr,
        )
