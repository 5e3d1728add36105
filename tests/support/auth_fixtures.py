"""Pytest fixtures for pulls that need credentials or hit faults.

Loaded from tests/conftest.py via ``pytest_plugins`` next to support.registry_fixtures,
whose session ``registry`` fixture the fault proxies front.

- ``basic_auth_registry`` (session): a registry behind htpasswd Basic auth.
- ``token_auth_registry`` (session): a registry behind bearer tokens from a TokenServer.
- ``fault_proxy`` (function): a FaultProxy in front of the plain ``registry``.
- ``fault_proxy_factory`` (function): FaultProxy in front of any Registry, e.g. an auth one.

Both auth registries hold the full set of test images, pushed with their credentials.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from .auth import TokenServer, htpasswd_auth, write_htpasswd
from .faultproxy import FaultProxy
from .registry import Registry, basic_authorization
from .registry_fixtures import TestImages, build_test_images

AUTH_USERNAME = "crispy-tester"


@dataclass(frozen=True, eq=False)
class BasicAuthRegistry:
    """A registry that takes ``username``/``password`` by HTTP Basic auth."""

    registry: Registry
    username: str
    password: str
    images: TestImages

    @property
    def host(self) -> str:
        return self.registry.host

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value for the credentials."""
        return basic_authorization(self.username, self.password)


@dataclass(frozen=True, eq=False)
class TokenAuthRegistry:
    """A registry that takes bearer tokens issued by ``token_server``."""

    registry: Registry
    token_server: TokenServer
    images: TestImages

    @property
    def host(self) -> str:
        return self.registry.host

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def username(self) -> str:
        return self.token_server.username

    @property
    def password(self) -> str:
        return self.token_server.password

    @property
    def service(self) -> str:
        return self.token_server.service


@pytest.fixture(scope="session")
def basic_auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BasicAuthRegistry]:
    workdir = tmp_path_factory.mktemp("basic-auth-registry")
    password = secrets.token_urlsafe(12)
    htpasswd = write_htpasswd(workdir / "htpasswd", {AUTH_USERNAME: password})
    reg = Registry(
        workdir, auth=htpasswd_auth(htpasswd), credentials=(AUTH_USERNAME, password)
    ).start()
    try:
        yield BasicAuthRegistry(reg, AUTH_USERNAME, password, build_test_images(reg))
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def token_auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenAuthRegistry]:
    workdir = tmp_path_factory.mktemp("token-auth-registry")
    with TokenServer(AUTH_USERNAME, secrets.token_urlsafe(12)) as server:
        reg = Registry(
            workdir,
            auth=server.auth_config(workdir / "token-cert.pem"),
            credentials=(server.username, server.password),
        ).start()
        try:
            images = build_test_images(reg)
            server.reset()  # tests count token requests from zero
            yield TokenAuthRegistry(reg, server, images)
        finally:
            reg.stop()


@pytest.fixture
def token_server(token_auth_registry: TokenAuthRegistry) -> Iterator[TokenServer]:
    """The session token server, with counters and switches reset around each test."""
    server = token_auth_registry.token_server
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def fault_proxy_factory() -> Iterator[Callable[[Registry], FaultProxy]]:
    """Start FaultProxies in front of given registries; all are stopped after the test."""
    proxies: list[FaultProxy] = []

    def start(upstream: Registry) -> FaultProxy:
        proxy = FaultProxy(upstream).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def fault_proxy(
    registry: Registry, fault_proxy_factory: Callable[[Registry], FaultProxy]
) -> FaultProxy:
    """A fresh FaultProxy in front of the session ``registry`` (no faults armed)."""
    return fault_proxy_factory(registry)
