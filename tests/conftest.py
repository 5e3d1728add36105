"""Shared fixtures: a local registry with test images, and a crispyd on a temp socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crispy.cli.client import CriClient
from support.daemon import Crispyd

pytest_plugins = [
    "support.registry_fixtures",
    "support.auth_fixtures",
    "support.pod_fixtures",
]


@pytest.fixture(scope="session")
def crispyd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crispyd]:
    """One daemon for the whole session; tests that stop or break a daemon start their own."""
    d = Crispyd(tmp_path_factory.mktemp("crispyd"))
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def cri(crispyd: Crispyd) -> Iterator[CriClient]:
    """A CRI client (RuntimeService + ImageService stubs) on the session daemon's socket."""
    with crispyd.client() as client:
        yield client


@pytest.fixture
def daemon_dir(tmp_path: Path) -> Path:
    """A short base dir for a test's own crispyd (unix socket paths are capped at 107 bytes)."""
    return tmp_path
