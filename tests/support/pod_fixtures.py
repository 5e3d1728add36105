"""Session fixtures for pod tests: one crispyd with a CNI network and the test pause image."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crispy.cli.client import CriClient
from support.daemon import Crispyd
from support.pods import TestNetwork, remove_all_pods, start_pod_daemon
from support.registry_fixtures import TestImages


@pytest.fixture(scope="session")
def pod_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestNetwork]:
    # Per-session bridge and subnet, so two test sessions on one host never share one.
    net = TestNetwork.random("t", 250, tmp_path_factory.mktemp("ipam"))
    yield net
    net.remove_bridge()


@pytest.fixture(scope="session")
def pod_crispyd(
    tmp_path_factory: pytest.TempPathFactory, pod_net: TestNetwork, test_images: TestImages
) -> Iterator[Crispyd]:
    d = start_pod_daemon(tmp_path_factory.mktemp("podd"), pod_net, test_images.pause.reference)
    yield d
    with d.client() as c:
        remove_all_pods(c)
    d.stop()


@pytest.fixture
def pods(pod_crispyd: Crispyd) -> Iterator[CriClient]:
    """A CRI client on the pod daemon; every pod a test leaves is removed after it."""
    with pod_crispyd.client(timeout=60) as client:
        yield client
        remove_all_pods(client)


@pytest.fixture(scope="session")
def pod_images(pod_crispyd: Crispyd, test_images: TestImages) -> TestImages:
    """The test images, pulled on the pod daemon."""
    from crispy.api import pb

    with pod_crispyd.client(timeout=120) as c:
        for img in (test_images.busybox, test_images.config):
            c.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=img.reference)))
    return test_images
