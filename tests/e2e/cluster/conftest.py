"""Fixtures of the `local` provider's tests: images built in this run (cached by their inputs) and a real
single-node cluster per test module, stopped and cleaned when the module ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devenv import images
from devenv.localcluster import LocalCluster, node_environment_problems


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
