"""`crispy run`: one command in a new pod, like `docker run` over plain CRI calls.

The image is pulled if missing; a pod is run for the container alone, the container is
created and started, and its log is printed (stdout to stdout, stderr to stderr) until
it exits. The command exits with the container's exit code. With --rm the pod, and so
the container, is removed afterwards.

The pod is what kubelet sends for a pod without shareProcessNamespace: the container
has its own PID namespace (pid CONTAINER), so the runtime needs no infra container and
no sandbox ("pause") image. --share-pid asks for the shared one (pid POD) instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import uuid
from typing import Any

import grpc

from crispy.api import pb
from crispy.cli import pods
from crispy.cli.client import CriClient, cancellable
from crispy.cli.containers import stop_container
from crispy.cli.images import PullError, pull_if_missing
from crispy.cli.logs import LogError, Printer, container_alive, print_log
from crispy.cli.lookups import container_status

NAMESPACE = "default"
EXIT_INTERRUPTED = 130


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run a command in a new pod and print its output until it exits")
    p.add_argument("--rm", action="store_true", help="remove the pod and container afterwards")
    p.add_argument("--name", default="", help="pod and container name (default run-<random>)")
    p.add_argument(
        "-e",
        "--env",
        action="append",
        type=_env,
        default=[],
        metavar="KEY=VALUE",
        help="set an environment variable (KEY alone: its value here); repeatable",
    )
    p.add_argument(
        "-r", "--runtime", default="", metavar="HANDLER", help="runtime handler for the pod"
    )
    p.add_argument(
        "--net",
        "--network",
        choices=("pod", "host"),
        default="pod",
        help="host: share the host's network namespace (default: the pod's own, over CNI)",
    )
    p.add_argument(
        "--share-pid",
        action="store_true",
        help="one PID namespace for the pod, as shareProcessNamespace (the runtime then "
        "runs its sandbox image as the pod's PID 1)",
    )
    p.add_argument(
        "--entrypoint",
        default=None,
        metavar="CMD",
        help="run this instead of the image's entrypoint (CMD... become its arguments)",
    )
    p.add_argument(
        "--log-dir",
        default="",
        metavar="DIR",
        help="the pod's log directory (default: a new one under /tmp)",
    )
    p.add_argument(
        "--stop-timeout",
        type=int,
        default=10,
        metavar="SECONDS",
        help="on Ctrl-C, wait this long for the container to stop before it is killed",
    )
    p.add_argument("image", metavar="IMAGE", help="image reference")
    p.add_argument(
        "cmd",
        nargs=argparse.REMAINDER,
        metavar="CMD...",
        help="the command (default: the image's); it replaces the image's CMD, as in docker",
    )
    p.set_defaults(func=cmd_run)


def _env(value: str) -> tuple[str, str | None]:
    key, eq, val = value.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"{value!r}: an environment variable is KEY=VALUE")
    return key, val if eq else None


def pod_config(args: argparse.Namespace, name: str, log_dir: str) -> pb.PodSandboxConfig:
    network = pb.NODE if args.net == "host" else pb.POD
    # As kubelet: pid POD (the protobuf zero value) only for a shared PID namespace, which
    # needs an infra container from the sandbox image; a node may have no way to pull it.
    pid = pb.POD if args.share_pid else pb.CONTAINER
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace=NAMESPACE, uid=uuid.uuid4().hex),
        log_directory=log_dir,
        labels={"io.crispy.run": "true"},
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=network, pid=pid)
            )
        ),
    )


def container_config(args: argparse.Namespace, name: str) -> pb.ContainerConfig:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    envs = []
    for key, value in args.env:
        if value is None:
            value = os.environ.get(key)
            if value is None:
                continue  # as docker: KEY alone, and unset here, is left out
        envs.append(pb.KeyValue(key=key, value=value))
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=args.image),
        command=[args.entrypoint] if args.entrypoint else [],
        args=cmd,
        envs=envs,
        log_path=f"{name}.log",
    )


def _remove_pod(client: CriClient, pod_id: str) -> None:
    for call, req in (
        (client.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id)),
        (client.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id)),
    ):
        try:
            call(req, timeout=max(client.timeout, 30))
        except grpc.RpcError as e:
            pods._failed_call("removing", pod_id, e)
            return


def cmd_run(client: CriClient, args: argparse.Namespace) -> int:
    name = args.name or f"run-{secrets.token_hex(4)}"
    own_log_dir = not args.log_dir
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="crispy-run-", dir="/tmp")
    pod_cfg = pod_config(args, name, os.path.abspath(log_dir))
    pod_id = cid = ""
    try:
        pull_if_missing(client, args.image, pod_cfg, progress=True)
        pod_id = cancellable(
            client.runtime.RunPodSandbox,
            pb.RunPodSandboxRequest(config=pod_cfg, runtime_handler=args.runtime),
        ).pod_sandbox_id
        cid = cancellable(
            client.runtime.CreateContainer,
            pb.CreateContainerRequest(
                pod_sandbox_id=pod_id,
                config=container_config(args, name),
                sandbox_config=pod_cfg,
            ),
        ).container_id
        client.runtime.StartContainer(
            pb.StartContainerRequest(container_id=cid), timeout=max(client.timeout, 30)
        )
        log_path = container_status(client, cid).status.log_path
        print_log(log_path, Printer(), alive=lambda: container_alive(client, cid))
        return int(container_status(client, cid).status.exit_code)
    except KeyboardInterrupt:
        if cid:
            with contextlib.suppress(grpc.RpcError):
                stop_container(client, cid, args.stop_timeout)
        return EXIT_INTERRUPTED
    except (PullError, LogError) as e:
        print(f"crispy run: {e}", file=sys.stderr)
        return 1
    finally:
        # A pod whose container never came to be is of no use to anyone: it goes too.
        if pod_id and (args.rm or not cid):
            _remove_pod(client, pod_id)
        if own_log_dir and (args.rm or not cid):
            shutil.rmtree(log_dir, ignore_errors=True)
