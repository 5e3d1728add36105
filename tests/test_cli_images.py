"""`crispy pull/images/inspecti/rmi/imagefsinfo`: the real binary against a real crispyd.

The session daemon is shared with other tests that pull and remove the same images, so
each test pulls what it needs first, and removals use only the config image.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pty
import re
import select
import signal
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from rich.console import Console

from crispy.api import pb
from crispy.cli import images, main
from crispy.cli.client import CriClient
from support.daemon import Crispyd, crispy_bin
from support.daemon import crispy_cli as crispy
from support.daemon import crispy_ok as ok
from support.faultproxy import FaultProxy
from support.images import tag_image
from support.registry import Registry
from support.registry_fixtures import TestImages

BAR = "━"  # rich's bar glyph: its absence means no progress was drawn


def pull(endpoint: str, ref: str) -> str:
    out = ok(endpoint, "pull", ref)
    m = re.fullmatch(r"Image is up to date for (sha256:[0-9a-f]{64})\n", out)
    assert m, out
    return m.group(1)


def rows(table: str) -> list[list[str]]:
    """A table's data rows, split on the 2+ spaces between columns."""
    return [re.split(r"\s{2,}", line.strip()) for line in table.splitlines()[1:]]


# -- against the session daemon -------------------------------------------------------------


def test_pull_without_a_tty_prints_only_the_image_id(
    crispyd: Crispyd, test_images: TestImages
) -> None:
    img = test_images.config
    r = crispy(crispyd.endpoint, "pull", img.reference)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"Image is up to date for {img.config_digest}\n"
    assert BAR not in r.stdout + r.stderr


def test_images_table_quiet_and_json(crispyd: Crispyd, test_images: TestImages) -> None:
    bb, cfg = test_images.busybox, test_images.config
    pull(crispyd.endpoint, bb.reference)
    pull(crispyd.endpoint, cfg.reference)

    out = ok(crispyd.endpoint, "images")
    assert re.split(r"\s{2,}", out.splitlines()[0].strip()) == ["IMAGE", "TAG", "IMAGE ID", "SIZE"]
    size = images.human_size(cfg.size)
    row = [cfg.registry + "/" + cfg.repo, "latest", cfg.config_digest[7:20], size]
    assert row in rows(out)

    ids = ok(crispyd.endpoint, "images", "-q").split()
    assert {bb.config_digest, cfg.config_digest} <= set(ids)
    assert len(ids) == len(set(ids))

    doc = json.loads(ok(crispyd.endpoint, "images", "-o", "json"))
    by_id = {i["id"]: i for i in doc["images"]}
    assert by_id[cfg.config_digest]["repoTags"] == [cfg.reference]
    assert by_id[cfg.config_digest]["repoDigests"] == [cfg.digest_reference]
    assert by_id[cfg.config_digest]["size"] == str(cfg.size)  # uint64: a JSON string


def test_images_filtered_by_reference(crispyd: Crispyd, test_images: TestImages) -> None:
    cfg = test_images.config
    pull(crispyd.endpoint, test_images.busybox.reference)
    pull(crispyd.endpoint, cfg.reference)
    assert ok(crispyd.endpoint, "images", "-q", cfg.reference).split() == [cfg.config_digest]
    # REF before the options, --digests and --no-trunc: whole IDs and digests
    out = ok(crispyd.endpoint, "images", cfg.reference, "--digests", "--no-trunc")
    assert rows(out) == [
        [cfg.registry + "/" + cfg.repo, "latest", cfg.digest, cfg.config_digest, "1.04MB"]
    ]
    assert ok(crispyd.endpoint, "images", "-q", f"{cfg.registry}/crispy-test/none:1") == ""


def test_inspecti(crispyd: Crispyd, test_images: TestImages) -> None:
    cfg = test_images.config
    pull(crispyd.endpoint, cfg.reference)
    doc = json.loads(ok(crispyd.endpoint, "inspecti", cfg.reference))
    assert doc["status"]["id"] == cfg.config_digest
    assert doc["status"]["username"] == "crispy"
    assert doc["info"]["imageSpec"]["config"]["User"] == "crispy"
    assert doc["info"]["manifestDigest"] == cfg.digest

    r = crispy(crispyd.endpoint, "inspecti", cfg.config_digest, f"{cfg.registry}/none:1")
    assert r.returncode == 1
    assert f"no such image {cfg.registry}/none:1" in r.stderr
    assert [d["status"]["id"] for d in json.loads(r.stdout)] == [cfg.config_digest]

    table = ok(crispyd.endpoint, "inspecti", "-o", "table", cfg.reference)
    assert f"ID:  {cfg.config_digest}\n" in table and "User:  crispy\n" in table


def test_rmi_of_one_of_two_tags_untags_then_rmi_by_id_removes(
    crispyd: Crispyd, registry: Registry, test_images: TestImages
) -> None:
    cfg = test_images.config
    second = tag_image(registry, cfg, "cli-rmi")
    pull(crispyd.endpoint, cfg.reference)
    pull(crispyd.endpoint, second.reference)

    assert ok(crispyd.endpoint, "rmi", second.reference) == f"Deleted: {second.reference}\n"
    assert ok(crispyd.endpoint, "images", "-q", cfg.reference).split() == [cfg.config_digest]
    assert ok(crispyd.endpoint, "images", "-q", second.reference) == ""

    assert ok(crispyd.endpoint, "rmi", cfg.config_digest) == f"Deleted: {cfg.reference}\n"
    assert ok(crispyd.endpoint, "images", "-q", cfg.config_digest) == ""

    r = crispy(crispyd.endpoint, "rmi", cfg.reference)
    assert r.returncode == 1
    assert f"no such image {cfg.reference}" in r.stderr


def test_imagefsinfo(crispyd: Crispyd) -> None:
    doc = json.loads(ok(crispyd.endpoint, "imagefsinfo"))
    fs = doc["status"]["imageFilesystems"][0]
    assert fs["fsId"]["mountpoint"].startswith(str(crispyd.root))
    assert int(fs["usedBytes"]["value"]) > 0
    table = ok(crispyd.endpoint, "imagefsinfo", "-o", "table")
    assert rows(table)[0][:2] == ["image", fs["fsId"]["mountpoint"]]


def test_pull_of_a_bad_reference_fails(crispyd: Crispyd, test_images: TestImages) -> None:
    for ref in ("Not::A/Ref", f"{test_images.config.registry}/crispy-test/none:latest"):
        r = crispy(crispyd.endpoint, "pull", ref)
        assert r.returncode == 1, r.stdout
        assert ref in r.stderr
        assert "Traceback" not in r.stderr


def test_pull_options_misuse(crispyd: Crispyd, test_images: TestImages) -> None:
    ref = test_images.config.reference
    r = crispy(crispyd.endpoint, "pull", "--creds", "u:p", "--auth", "dTpw", ref)
    assert r.returncode == 2 and "--creds or --auth" in r.stderr
    # no password and no terminal to ask on: an error, not a hang
    r = crispy(crispyd.endpoint, "pull", "--username", "u", ref)
    assert r.returncode == 2 and "no password for u" in r.stderr


# -- with a daemon of their own --------------------------------------------------------------


def test_rmi_all_and_prune(daemon_dir: Path, test_images: TestImages) -> None:
    d = Crispyd(daemon_dir / "d").start()
    try:
        cfg, bb = test_images.config, test_images.busybox
        pull(d.endpoint, cfg.reference)
        pull(d.endpoint, bb.reference)
        # no container uses either image (or the runtime cannot list containers yet)
        out = ok(d.endpoint, "rmi", "--prune")
        assert set(out.splitlines()) == {f"Deleted: {cfg.reference}", f"Deleted: {bb.reference}"}
        assert ok(d.endpoint, "images", "-q") == ""
        pull(d.endpoint, cfg.reference)
        assert ok(d.endpoint, "rmi", "-a") == f"Deleted: {cfg.reference}\n"
        assert ok(d.endpoint, "rmi", "-a") == ""
    finally:
        d.stop()


def run_in_pty(argv: list[str], interrupt_after: float | None = None) -> tuple[int, str]:
    """Run a command on a pseudo-terminal, as a person would: (exit code, what it showed)."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.environ.update(COLUMNS="120", LINES="40", TERM="xterm")
        os.execv(argv[0], argv)
    out = b""
    start = time.monotonic()
    interrupted = False
    try:
        while time.monotonic() - start < 60:
            late = interrupt_after is not None and time.monotonic() - start > interrupt_after
            if late and not interrupted:
                os.kill(pid, signal.SIGINT)
                interrupted = True
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace"))
    return os.waitstatus_to_exitcode(status), text


def test_pull_on_a_terminal_draws_layer_bars_and_ctrl_c_cancels(
    daemon_dir: Path, registry: Registry, test_images: TestImages
) -> None:
    cfg = test_images.config
    d = Crispyd(daemon_dir / "d").start()
    try:
        with FaultProxy(registry) as proxy:
            ref = proxy.reference(cfg.repo, "latest")
            command = [crispy_bin("crispy"), "-r", d.endpoint, "pull", ref]
            # Slow enough for a few snapshots (every 0.2s) to arrive.
            proxy.slow("/blobs/", 1_000_000)
            code, screen = run_in_pty(command)
            assert code == 0, screen
            assert f"Image is up to date for {cfg.config_digest}" in screen
            for layer in cfg.layers:
                assert layer.digest[7:19] in screen
            assert BAR in screen and "done" in screen

            # -q: no bars even on a terminal
            ok(d.endpoint, "rmi", ref)
            code, screen = run_in_pty([*command, "-q"])
            assert code == 0, screen
            assert BAR not in screen

            ok(d.endpoint, "rmi", ref)
            proxy.clear_faults()
            proxy.slow("/blobs/", 0)  # stall: only Ctrl-C ends this pull
            code, screen = run_in_pty(command, interrupt_after=2)
            assert code == 130, screen
            assert f"pull of {ref} cancelled" in screen
            assert "Traceback" not in screen
    finally:
        d.stop()


# -- pieces, without a daemon ----------------------------------------------------------------


def snapshots() -> Iterator[dict[str, Any]]:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    yield {"reference": "r", "elapsed": 0.0, "layers": []}
    yield {
        "reference": "r",
        "elapsed": 0.2,
        "layers": [
            {"digest": a, "size": 2_000_000, "done": 500_000, "state": "downloading"},
            {"digest": b, "size": 300, "done": 0, "state": "exists"},
        ],
    }
    yield {
        "reference": "r",
        "elapsed": 0.4,
        "layers": [
            {"digest": a, "size": 2_000_000, "done": 1_900_000, "state": "downloading"},
            {"digest": b, "size": 300, "done": 0, "state": "exists"},
        ],
    }


def render(stream: Iterator[dict[str, Any]], succeeded: bool = False) -> str:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    images.render_progress(stream, console, lambda: succeeded)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())


def test_render_progress_draws_one_bar_per_layer() -> None:
    screen = render(snapshots())
    last = screen.rsplit("aaaaaaaaaaaa", 1)[1]  # the final frame, from the first layer's line
    assert "1.9/2.0 MB" in last and "downloading" in last
    assert "bbbbbbbbbbbb" in last and "300/300 bytes" in last and "exists" in last


def test_render_progress_fills_the_bars_when_the_pull_succeeded() -> None:
    class Cancelled(Exception):
        pass

    def cut_short() -> Iterator[dict[str, Any]]:
        yield from snapshots()
        raise Cancelled  # as the gRPC stream does when PullImage's answer cancels it

    buf = io.StringIO()
    with pytest.raises(Cancelled):
        images.render_progress(
            cut_short(), Console(file=buf, force_terminal=True, width=100), lambda: True
        )
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue()).rsplit("aaaaaaaaaaaa", 1)[1]
    assert "2.0/2.0 MB" in last and "done" in last and "exists" in last


def test_render_progress_draws_nothing_without_layers() -> None:
    assert render(iter([])) == ""
    assert render(iter([{"reference": "r", "elapsed": 0.1, "layers": []}])) == ""


def test_human_size_and_rows_like_crictl() -> None:
    assert [images.human_size(n) for n in (0, 999, 1000, 2_153_000, 4_500_000_000)] == [
        "0B",
        "999B",
        "1kB",
        "2.15MB",
        "4.5GB",
    ]
    digest = "sha256:" + "c" * 64
    two_tags = pb.Image(
        id="sha256:" + "d" * 64,
        repo_tags=["localhost:5000/a/b:1", "localhost:5000/a/b:2"],
        repo_digests=[f"localhost:5000/a/b@{digest}"],
        size=1_500_000,
    )
    untagged = pb.Image(id="sha256:" + "e" * 64, repo_digests=[f"x.io/c@{digest}"], size=10)
    assert images.image_rows([two_tags, untagged], digests=True, no_trunc=False) == [
        ["localhost:5000/a/b", "1", "c" * 13, "d" * 13, "1.5MB"],
        ["localhost:5000/a/b", "2", "c" * 13, "d" * 13, "1.5MB"],
        ["x.io/c", "<none>", "c" * 13, "e" * 13, "10B"],
    ]
    bare = pb.Image(id="sha256:" + "f" * 64, size=1)
    assert images.image_rows([bare], digests=False, no_trunc=True) == [
        ["<none>", "<none>", bare.id, "1B"]
    ]


def auth_args(**kw: str | None) -> argparse.Namespace:
    base: dict[str, str | None] = dict(creds=None, auth=None, username=None, password=None)
    return argparse.Namespace(**{**base, **kw})


def test_auth_config(monkeypatch: pytest.MonkeyPatch) -> None:
    assert images.auth_config(auth_args()) is None
    assert images.auth_config(auth_args(creds="u:p:q")) == pb.AuthConfig(
        username="u", password="p:q"
    )
    assert images.auth_config(auth_args(auth="dTpw")) == pb.AuthConfig(auth="dTpw")
    assert images.auth_config(auth_args(username="u", password="")) == pb.AuthConfig(username="u")
    with pytest.raises(images.UsageError):
        images.auth_config(auth_args(creds=":p"))
    with pytest.raises(images.UsageError):
        images.auth_config(auth_args(password="p"))
    # a terminal: the password is asked for
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(images.getpass, "getpass", lambda prompt: "secret")
    assert images.auth_config(auth_args(creds="u")) == pb.AuthConfig(
        username="u", password="secret"
    )


def images_parser(archive: Any) -> argparse.ArgumentParser:
    sub = argparse.ArgumentParser(prog="crispy").add_subparsers()
    p = sub.add_parser("images")
    images._add_images_args(p)
    p.set_defaults(func=images.cmd_images, ref=None)
    images._mount_archive(p, archive)
    return p


def test_images_ref_with_and_without_import_export_subcommands() -> None:
    def cmd_import(client: CriClient, args: argparse.Namespace) -> int:
        return 0

    def cmd_export(client: CriClient, args: argparse.Namespace) -> int:
        return 0

    def add_export_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("refs", nargs="+")
        p.add_argument("-o", "--output")

    without = SimpleNamespace()
    only_import = SimpleNamespace(
        add_import_args=lambda p: p.add_argument("file"), cmd_import=cmd_import
    )
    both = SimpleNamespace(
        **vars(only_import), add_export_args=add_export_args, cmd_export=cmd_export
    )
    for archive in (without, only_import, both):
        parser = images_parser(archive)
        for argv, ref in (([], None), (["-q", "bb"], "bb"), (["bb", "-q"], "bb"), (["-q"], None)):
            args = parser.parse_args(argv)
            assert (args.func, args.ref, args.quiet) == (images.cmd_images, ref, argv != [])
        args = parser.parse_args(["bb", "--digests", "-o", "json"])
        assert (args.ref, args.digests, args.output) == ("bb", True, "json")
        with pytest.raises(SystemExit):
            parser.parse_args(["a", "b"])
        with pytest.raises(SystemExit):
            parser.parse_args(["a", "--bogus"])

    args = images_parser(only_import).parse_args(["import", "x.tar"])
    assert (args.func, args.file) == (cmd_import, "x.tar")
    with pytest.raises(SystemExit):
        images_parser(only_import).parse_args(["import"])
    # without export, `export` is just a REF
    assert images_parser(only_import).parse_args(["export"]).ref == "export"
    args = images_parser(both).parse_args(["export", "a", "b", "-o", "f.tar"])
    assert (args.func, args.refs, args.output) == (cmd_export, ["a", "b"], "f.tar")

    # and the real thing, whatever cli/archive.py has today
    args = main.build_parser().parse_args(["images", "busybox", "-q"])
    assert (args.func, args.ref, args.quiet) == (images.cmd_images, "busybox", True)


class _StdoutTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_pull_on_a_runtime_without_progress_shows_no_bars(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """containerd or CRI-O: PullProgress is UNIMPLEMENTED, so just the plain CRI pull."""

    def pull_image(req: pb.PullImageRequest, context: grpc.ServicerContext) -> Any:
        time.sleep(0.5)  # long enough for the progress call to have failed meanwhile
        return pb.PullImageResponse(image_ref="sha256:" + "1" * 64)

    handler = grpc.method_handlers_generic_handler(
        "runtime.v1.ImageService",
        {
            "PullImage": grpc.unary_unary_rpc_method_handler(
                pull_image,
                request_deserializer=pb.PullImageRequest.FromString,
                response_serializer=pb.PullImageResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stdout = _StdoutTTY()
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        with CriClient(f"127.0.0.1:{port}", timeout=5) as client:
            args = main.build_parser().parse_args(["pull", "example.com/x:1"])
            assert images.cmd_pull(client, args) == 0
    finally:
        server.stop(None)
    assert stdout.getvalue() == f"Image is up to date for sha256:{'1' * 64}\n"
