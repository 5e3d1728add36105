"""Pulls from registries that want credentials: HTTP Basic and Bearer tokens."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from crispy import errors
from crispy.api import pb
from crispy.cli.client import CriClient
from crispy.images.registry import Credentials
from crispy.images.service import ImageService
from support.auth_fixtures import BasicAuthRegistry, TokenAuthRegistry
from support.faultproxy import FaultProxy
from support.imagesvc import run
from support.registry_fixtures import TestImages


def _nothing_left(svc: ImageService) -> None:
    assert svc.store.list_images() == []
    assert list(svc.content.list()) == []
    assert [s for s in svc.store.list_snapshots()] == []


def test_basic_auth(tmp_path: Path, basic_auth_registry: BasicAuthRegistry) -> None:
    reg = basic_auth_registry
    img = reg.images.busybox

    async def body(svc: ImageService) -> None:
        with pytest.raises(errors.Unauthenticated):
            await svc.pull(img.reference)
        with pytest.raises(errors.Unauthenticated) as e:
            await svc.pull(img.reference, Credentials(reg.username, "wrong"))
        assert reg.host in str(e.value)
        _nothing_left(svc)
        pulled = await svc.pull(img.reference, Credentials(reg.username, reg.password))
        assert pulled.id == img.config_digest

    run(tmp_path, body)


def test_basic_auth_over_cri(cri: CriClient, basic_auth_registry: BasicAuthRegistry) -> None:
    reg = basic_auth_registry
    ref = reg.images.config.reference
    req = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
    req.auth.username, req.auth.password = reg.username, "nope"
    with pytest.raises(grpc.RpcError) as e:
        cri.image.PullImage(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    import base64

    req.auth.Clear()
    req.auth.auth = base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()
    assert cri.image.PullImage(req, timeout=60).image_ref == reg.images.config.config_digest


def test_bearer_tokens_cached_per_scope(
    tmp_path: Path, token_auth_registry: TokenAuthRegistry
) -> None:
    reg = token_auth_registry
    server = reg.token_server
    server.reset()
    creds = Credentials(reg.username, reg.password)

    async def body(svc: ImageService) -> None:
        with pytest.raises(errors.Unauthenticated) as e:
            await svc.pull(reg.images.busybox.reference, Credentials(reg.username, "bad"))
        assert "token server" in str(e.value)
        _nothing_left(svc)
        before = dict(server.requests)
        await svc.pull(reg.images.busybox.reference, creds)
        await svc.pull(reg.images.busybox_tag2.reference, creds)
        scope = f"repository:{reg.images.busybox.repo}:pull"
        # one token for the repository, reused by every request of both pulls
        assert server.requests[scope] - before.get(scope, 0) == 1

    run(tmp_path, body)


def test_identity_and_registry_tokens(
    tmp_path: Path, token_auth_registry: TokenAuthRegistry
) -> None:
    reg = token_auth_registry
    server = reg.token_server
    refresh = server.mint_refresh_token()

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(reg.images.config.reference, Credentials(identity_token=refresh))
        assert pulled.id == reg.images.config.config_digest
        assert any(r.grant_type == "refresh_token" for r in server.log)
        token = server.issue_token(
            reg.username,
            [{"type": "repository", "name": reg.images.docker.repo, "actions": ["pull"]}],
        )
        pulled = await svc.pull(reg.images.docker.reference, Credentials(registry_token=token))
        assert pulled.id == reg.images.docker.config_digest

    run(tmp_path, body)


def test_credentials_not_sent_to_other_hosts(
    tmp_path: Path,
    basic_auth_registry: BasicAuthRegistry,
    test_images: TestImages,
    fault_proxy: FaultProxy,
) -> None:
    """Credentials given for one registry never reach another one (here: a plain one)."""
    reg = basic_auth_registry
    img = fault_proxy.reference(test_images.busybox.repo, "latest")

    async def body(svc: ImageService) -> None:
        creds = Credentials(reg.username, reg.password, server_address=reg.host)
        await svc.pull(img, creds)

    run(tmp_path, body)
    for entry in fault_proxy.log:
        assert "authorization" not in {k.lower() for k in entry.headers}
