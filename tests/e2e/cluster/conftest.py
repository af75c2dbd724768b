"""Fixtures of the `local` provider's tests: images built in this run (cached by their inputs) and a real
single-node cluster per test module, stopped and cleaned when the module ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devenv import images
from devenv.localcluster import LocalCluster, node_environment_problems
from devenv.podfleet import PodNode


@pytest.fixture(scope="module", autouse=True)
def one_node_per_machine(pod_node: PodNode) -> None:
    """The modules here start nodes of their own: the operator tests' node, if up, makes way first (it
    starts again when a `pods` test needs it; tests/e2e/conftest.py runs those last anyway)."""
    pod_node.stop()


@pytest.fixture(scope="session")
def built_images() -> images.Images:
    problems = node_environment_problems()
    assert not problems, f"this machine cannot run the local node: {problems}"
    return images.build_all()


@pytest.fixture(scope="module")
def local_cluster(
    tmp_path_factory: pytest.TempPathFactory, built_images: images.Images
) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("localcluster"))
    cluster.start(images_to_import=[r for r in built_images.all() if r != built_images.pause])
    try:
        yield cluster
    finally:
        cluster.stop()
