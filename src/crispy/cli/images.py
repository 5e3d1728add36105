"""Image commands, as crictl has them: pull, images, inspecti, rmi, imagefsinfo.

Everything here is plain CRI, so it works against any runtime. The one crispy-only
extra, live pull progress, comes from `crispy.v1.Images/PullProgress` and is simply
left out when the runtime does not have it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from crispy.api import pb
from crispy.cli import output
from crispy.cli.client import CriClient, describe_error, unreachable

PULL_PROGRESS_METHOD = "/crispy.v1.Images/PullProgress"
TRUNCATED_ID = 13  # crictl's truncatedIDLen
NONE = "<none>"
DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def register(sub: Any) -> None:
    p = sub.add_parser("pull", help="pull an image from a registry")
    p.add_argument("ref", metavar="REF", help="image reference, e.g. docker.io/library/busybox")
    p.add_argument("--creds", metavar="USER[:PASS]", help="registry credentials")
    p.add_argument("--auth", metavar="BASE64", help="base64 of USER:PASS, as in a docker config")
    p.add_argument("-u", "--username", help="registry user (asks for the password)")
    p.add_argument("-p", "--password", help="registry password, with --username")
    p.add_argument(
        "--pull-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="give up on the pull after this long (default 0: no limit)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="show no progress bars")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("images", help="list images")
    _add_images_args(p)
    p.set_defaults(func=cmd_images, ref=None)
    _mount_archive(p)

    p = sub.add_parser("inspecti", help="show the status of one or more images")
    p.add_argument("refs", nargs="+", metavar="REF", help="image ID, tag or digest")
    p.add_argument("-o", "--output", choices=output.FORMATS, default="json")
    p.set_defaults(func=cmd_inspecti)

    p = sub.add_parser("rmi", help="remove one or more images")
    p.add_argument("refs", nargs="*", metavar="REF", help="image ID, tag or digest")
    p.add_argument("-a", "--all", action="store_true", help="remove every image")
    p.add_argument("-q", "--prune", action="store_true", help="remove the images no container uses")
    p.set_defaults(func=cmd_rmi)

    p = sub.add_parser("imagefsinfo", help="show the image filesystem's usage")
    p.add_argument("-o", "--output", choices=output.FORMATS, default="json")
    p.set_defaults(func=cmd_imagefsinfo)


def _add_images_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="print only image IDs")
    p.add_argument("-o", "--output", choices=output.FORMATS, default="table")
    p.add_argument("--digests", action="store_true", help="show a DIGEST column")
    p.add_argument("--no-trunc", action="store_true", help="show whole IDs and digests")


# -- `images import` / `images export` -----------------------------------------------------


class _RefOrSubcommand(argparse.Action):
    """`images [REF]` beside `images import|export`.

    argparse's subcommands reject any word that is not one of their names, so this
    takes the first word itself: a subcommand's name runs that subcommand's parser on
    the rest; any other word is REF, and the words after it are `images` options.
    """

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        commands: dict[str, argparse.ArgumentParser],
        **kwargs: Any,
    ) -> None:
        kwargs["required"] = False  # plain `crispy images` lists everything
        super().__init__(option_strings, dest, nargs=argparse.PARSER, **kwargs)
        self.commands = commands

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        words = [values] if isinstance(values, str) else [str(v) for v in values or []]
        command = self.commands.get(words[0])
        if command is not None:
            sub_args, extra = command.parse_known_args(words[1:])
            vars(namespace).update(vars(sub_args))
            if extra:
                command.error(f"unrecognized arguments: {' '.join(extra)}")
            return
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"unrecognized arguments: {' '.join(words)}")
        setattr(namespace, self.dest, words[0])
        _, extra = parser.parse_known_args(words[1:], namespace)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")


def _mount_archive(p: argparse.ArgumentParser, archive: Any = None) -> None:
    """`images import|export` from cli/archive.py, those of its commands that exist."""
    if archive is None:
        # Imported here, not at the top: cli/archive.py may import this module.
        from crispy.cli import archive

    commands: dict[str, argparse.ArgumentParser] = {}
    for name, help_text in (
        ("import", "import images from a tar file (OCI image layout or docker save)"),
        ("export", "export images to an OCI image layout tar file"),
    ):
        add_args = getattr(archive, f"add_{name}_args", None)
        func = getattr(archive, f"cmd_{name}", None)
        if add_args is None or func is None:
            continue
        sp = argparse.ArgumentParser(prog=f"{p.prog} {name}", description=help_text)
        add_args(sp)
        sp.set_defaults(func=func)
        commands[name] = sp
    if not commands:
        p.add_argument("ref", nargs="?", metavar="REF", help="only images matching REF")
        return
    names = " | ".join(commands)
    helps = " and ".join(f"`{p.prog} {name} -h`" for name in commands)
    p.add_argument(
        "ref",
        action=_RefOrSubcommand,
        commands=commands,
        metavar=f"[REF | {names}]",
        help=f"only images matching REF; {helps} explain the subcommands",
    )


# -- formatting ------------------------------------------------------------------------------


def human_size(size: float) -> str:
    """Decimal units with 3 significant digits, as crictl's units.HumanSizeWithPrecision."""
    i = 0
    while size >= 1000 and i < len(DECIMAL_UNITS) - 1:
        size /= 1000
        i += 1
    return f"{size:.3g}{DECIMAL_UNITS[i]}"


def truncate_id(value: str) -> str:
    if value == NONE:
        return value
    return value.removeprefix("sha256:")[:TRUNCATED_ID]


def split_repo_tag(repo_tag: str) -> tuple[str, str]:
    """`host:5000/repo:tag` -> (`host:5000/repo`, `tag`): only a colon after the last slash."""
    name, colon, tag = repo_tag.rpartition(":")
    if not colon or "/" in tag:
        return repo_tag, NONE
    return name, tag


def image_rows(images: Iterable[pb.Image], digests: bool, no_trunc: bool) -> list[list[str]]:
    """One row per tag (an untagged image gets one `<none>` row), as crictl prints them."""
    rows = []
    for img in images:
        name, digest = NONE, NONE
        if img.repo_digests:
            name, _, digest = img.repo_digests[0].partition("@")
        image_id = img.id if no_trunc else truncate_id(img.id)
        if not no_trunc:
            digest = truncate_id(digest)
        pairs = [split_repo_tag(t) for t in img.repo_tags] or [(name, NONE)]
        size = human_size(img.size)
        for repo, tag in pairs:
            rows.append(
                [repo, tag, digest, image_id, size] if digests else [repo, tag, image_id, size]
            )
    return rows


def _sort_key(img: pb.Image) -> str:
    return (list(img.repo_tags) or list(img.repo_digests) or [img.id])[0]


def status_document(resp: pb.ImageStatusResponse) -> dict[str, Any]:
    """crictl inspecti's shape: the image, then each info entry decoded from JSON."""
    return {"status": output.to_dict(resp.image), **output.decode_info(resp.info)}


# -- pull ------------------------------------------------------------------------------------


class UsageError(Exception):
    """A bad combination of options: printed without a traceback, exit 2."""


def auth_config(args: argparse.Namespace) -> pb.AuthConfig | None:
    """crictl's rules: --creds or --auth (not both), or --username with a password."""
    if args.creds and args.auth:
        raise UsageError("use either --creds or --auth, not both")
    if args.auth:
        return pb.AuthConfig(auth=args.auth)
    username, password = args.username, args.password
    if args.creds:
        username, colon, creds_password = args.creds.partition(":")
        if not username:
            raise UsageError("--creds: the username can't be empty")
        password = creds_password if colon else password
    elif password is not None and not username:
        raise UsageError("--password needs --username")
    if not username:
        return None
    if password is None:
        if not sys.stdin.isatty():
            raise UsageError(f"no password for {username}: use --creds USER:PASS or a terminal")
        password = getpass.getpass(f"Password for {username}: ")
    return pb.AuthConfig(username=username, password=password)


class LayerBars:
    """One rich progress bar per layer, fed with PullProgress snapshots."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def update(self, snapshot: dict[str, Any]) -> None:
        for layer in snapshot.get("layers", []):
            digest = str(layer.get("digest", ""))
            size = int(layer.get("size") or 0)
            state = str(layer.get("state", ""))
            # Past downloading the bytes are all here, whatever the counter last said.
            done = size if state in ("unpacking", "exists", "done") else int(layer.get("done", 0))
            task = self.tasks.get(digest)
            if task is None:
                short = digest.removeprefix("sha256:")[:12]
                task = self.progress.add_task(short, total=size or None, state=state)
                self.tasks[digest] = task
            self.progress.update(task, total=size or None, completed=done, state=state)

    def finish(self) -> None:
        """The pull succeeded: the last snapshot may predate its final bytes."""
        for task in self.progress.tasks:
            state = task.fields.get("state")
            self.progress.update(
                task.id,
                completed=task.total or 0,
                state=state if state == "exists" else "done",
            )


def progress_bars(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[state]}"),
        console=console,
    )


def render_progress(
    snapshots: Iterable[dict[str, Any]],
    console: Console,
    succeeded: Callable[[], bool] = lambda: False,
) -> None:
    """Draw per-layer bars until the stream of snapshots ends or fails.

    Nothing is drawn before a snapshot names a layer, so a runtime or pull with nothing
    to show leaves the terminal alone. `succeeded` says, once the stream stops, whether
    to fill every bar.
    """
    it = iter(snapshots)
    for first in it:
        if first.get("layers"):
            break
    else:
        return
    with progress_bars(console) as progress:
        bars = LayerBars(progress)
        bars.update(first)
        try:
            for snap in it:
                bars.update(snap)
        finally:
            if succeeded():
                bars.finish()


def _progress_stream(client: CriClient, ref: str) -> Any:
    # The progress must come from the daemon doing the pull: the image service's socket.
    call = client._image_channel.unary_stream(
        PULL_PROGRESS_METHOD,
        request_serializer=lambda doc: json.dumps(doc).encode(),
        response_deserializer=json.loads,
    )
    return call({"reference": ref})


def _succeeded(call: grpc.Future) -> bool:
    return call.done() and not call.cancelled() and call.exception() is None


def _show_progress(client: CriClient, ref: str, pull: grpc.Future, console: Console) -> None:
    stream = _progress_stream(client, ref)
    # The stream outlives a pull that was already done; stop it as soon as PullImage answers.
    pull.add_done_callback(lambda _: stream.cancel())
    try:
        render_progress(stream, console, lambda: _succeeded(pull))
    except grpc.RpcError:
        # UNIMPLEMENTED (containerd, CRI-O), CANCELLED by the callback above, or anything
        # else: the bars are a nicety, and the pull's own answer is what counts.
        pass
    finally:
        stream.cancel()


def cmd_pull(client: CriClient, args: argparse.Namespace) -> int:
    try:
        auth = auth_config(args)
    except UsageError as e:
        print(f"crispy pull: {e}", file=sys.stderr)
        return 2
    req = pb.PullImageRequest(image=pb.ImageSpec(image=args.ref))
    if auth is not None:
        req.auth.CopyFrom(auth)
    # A future rather than a blocking call: Ctrl-C can cancel it, and bars can draw meanwhile.
    pull = client.image.PullImage.future(req, timeout=args.pull_timeout or None)
    try:
        if not args.quiet and sys.stdout.isatty():
            _show_progress(client, args.ref, pull, Console())
        resp = pull.result()
    except KeyboardInterrupt:
        pull.cancel()
        print(f"crispy: pull of {args.ref} cancelled", file=sys.stderr)
        raise
    except grpc.RpcError as e:
        # UNAVAILABLE may be the registry; only a dead socket is the runtime's to report.
        if unreachable(e):
            raise
        print(f"crispy: pulling {args.ref}: {describe_error(e)}", file=sys.stderr)
        return 1
    print(f"Image is up to date for {resp.image_ref}")
    return 0


class PullError(Exception):
    """The image is missing and pulling it failed: printed, exit 1."""


def pull_if_missing(
    client: CriClient,
    ref: str,
    sandbox_config: pb.PodSandboxConfig | None = None,
    progress: bool = False,
) -> None:
    """ImageStatus, then PullImage if the runtime does not have `ref` (for create and run).

    `progress` draws crispy's pull bars on stderr when it is a terminal (stdout stays the
    command's own output).
    """
    if image_status(client, ref).HasField("image"):
        return
    req = pb.PullImageRequest(image=pb.ImageSpec(image=ref), sandbox_config=sandbox_config)
    pull = client.image.PullImage.future(req)
    try:
        if progress and sys.stderr.isatty():
            _show_progress(client, ref, pull, Console(stderr=True))
        pull.result()
    except KeyboardInterrupt:
        pull.cancel()
        raise
    except grpc.RpcError as e:
        if unreachable(e):
            raise
        raise PullError(f"pulling {ref}: {describe_error(e)}") from None


# -- images, inspecti, rmi, imagefsinfo -----------------------------------------------------


def list_images(client: CriClient, ref: str | None = None) -> list[pb.Image]:
    req = pb.ListImagesRequest()
    if ref:
        req.filter.image.image = ref
    return list(client.image.ListImages(req, timeout=client.timeout).images)


def image_status(client: CriClient, ref: str, verbose: bool = False) -> pb.ImageStatusResponse:
    req = pb.ImageStatusRequest(image=pb.ImageSpec(image=ref), verbose=verbose)
    resp: pb.ImageStatusResponse = client.image.ImageStatus(req, timeout=client.timeout)
    return resp


def cmd_images(client: CriClient, args: argparse.Namespace) -> int:
    images = sorted(list_images(client, args.ref), key=_sort_key)
    if args.quiet:
        seen: set[str] = set()
        for img in images:
            if img.id not in seen:
                seen.add(img.id)
                print(img.id)
        return 0
    if args.output != "table":
        output.print_data({"images": [output.to_dict(i) for i in images]}, args.output)
        return 0
    columns = ["IMAGE", "TAG", *(["DIGEST"] if args.digests else []), "IMAGE ID", "SIZE"]
    output.print_table(columns, image_rows(images, args.digests, args.no_trunc))
    return 0


def cmd_inspecti(client: CriClient, args: argparse.Namespace) -> int:
    found: list[pb.ImageStatusResponse] = []
    missing = False
    for ref in args.refs:
        resp = image_status(client, ref, verbose=True)
        if resp.HasField("image"):
            found.append(resp)
        else:
            print(f"crispy: no such image {ref}", file=sys.stderr)
            missing = True
    if args.output == "table":
        for i, resp in enumerate(found):
            if i:
                print()
            img = resp.image
            output.print_pairs(
                [
                    ("ID", img.id),
                    ("Tags", ", ".join(img.repo_tags) or NONE),
                    ("Digests", ", ".join(img.repo_digests) or NONE),
                    ("Size", human_size(img.size)),
                    ("User", str(img.uid.value) if img.HasField("uid") else img.username),
                    ("Pinned", str(img.pinned).lower()),
                ]
            )
    elif found:
        docs = [status_document(r) for r in found]
        output.print_data(docs[0] if len(args.refs) == 1 else docs, args.output)
    return 1 if missing else 0


def _used_images(client: CriClient) -> set[str]:
    """Every image name or ID a container refers to; none if the runtime can't list them."""
    try:
        resp = client.runtime.ListContainers(pb.ListContainersRequest(), timeout=client.timeout)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            return set()
        raise
    used: set[str] = set()
    for c in resp.containers:
        used.update(v for v in (c.image.image, c.image_ref, c.image_id) if v)
    return used


def cmd_rmi(client: CriClient, args: argparse.Namespace) -> int:
    targets = list(dict.fromkeys(args.refs))
    if args.all or args.prune:
        used = _used_images(client) if args.prune else set()
        for img in list_images(client):
            if used.intersection([img.id, *img.repo_tags, *img.repo_digests]):
                continue
            if img.id not in targets:
                targets.append(img.id)
    if not targets:
        if args.all or args.prune:
            return 0
        print("crispy rmi: name an image, or use --all or --prune", file=sys.stderr)
        return 2
    failed = False
    for ref in targets:
        before = image_status(client, ref)
        if not before.HasField("image"):
            print(f"crispy: no such image {ref}", file=sys.stderr)
            failed = True
            continue
        req = pb.RemoveImageRequest(image=pb.ImageSpec(image=ref))
        client.image.RemoveImage(req, timeout=client.timeout)
        # Runtimes differ (crispy untags when other tags remain; containerd drops them
        # all), so report what actually went away.
        after = image_status(client, before.image.id)
        gone = [t for t in before.image.repo_tags if t not in after.image.repo_tags]
        if not after.HasField("image") and not gone:
            gone = [before.image.id]
        for name in gone:
            print(f"Deleted: {name}")
    return 1 if failed else 0


def cmd_imagefsinfo(client: CriClient, args: argparse.Namespace) -> int:
    resp = client.image.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=client.timeout)
    if args.output != "table":
        output.print_data({"status": output.to_dict(resp)}, args.output)
        return 0
    rows = []
    seen: set[str] = set()
    for kind, usages in (
        ("image", resp.image_filesystems),
        ("container", resp.container_filesystems),
    ):
        for u in usages:
            # Most runtimes keep both on one filesystem and report it twice.
            if u.fs_id.mountpoint in seen:
                continue
            seen.add(u.fs_id.mountpoint)
            rows.append(
                [kind, u.fs_id.mountpoint, human_size(u.used_bytes.value), str(u.inodes_used.value)]
            )
    output.print_table(["FILESYSTEM", "MOUNTPOINT", "USED", "INODES"], rows)
    return 0
