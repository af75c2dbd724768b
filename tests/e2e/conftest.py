"""Fixtures of the e2e tier: a real etcd and kube-apiserver for the session, a fresh namespace per test, and
the local node the operator tests' `pods` fleet runs on (started when the first such test runs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.cluster_client import ClusterClient
from devenv.controlplane import ControlPlane
from devenv.kind import KindCluster
from devenv.podfleet import PodNode
from tests.e2e.operator_support import CRD, namespace_name


def _on_pod_node(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("env") == "pods"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `pods` fleet's tests run last, together: their node then starts once, after every module of
    tests/e2e/cluster (which start nodes of their own; a machine runs one node at a time), and no other test
    runs while it is up. A stable sort: the order is otherwise the collection order."""
    items.sort(key=_on_pod_node)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterClient]:
    """The cluster under test: a loopback etcd + kube-apiserver by default; a kind cluster with
    SIPSOCKETS_E2E_PROVIDER=kind on machines where Docker runs."""
    provider = os.environ.get("SIPSOCKETS_E2E_PROVIDER", "local")
    workdir = tmp_path_factory.mktemp("cluster")
    cp: ControlPlane | KindCluster
    if provider == "kind":
        cp = KindCluster(workdir)
    elif provider == "local":
        cp = ControlPlane(workdir)
    else:
        raise pytest.UsageError(f"SIPSOCKETS_E2E_PROVIDER={provider!r}: expected 'local' or 'kind'")
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def pod_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodNode]:
    """The single-node cluster of the operator tests' `pods` fleet; started on first use (building the
    images if needed), stopped at the end of the session or when tests/e2e/cluster needs the machine."""
    node = PodNode(tmp_path_factory.mktemp("podnode"), CRD)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def namespace(control_plane: ClusterClient, request: pytest.FixtureRequest) -> Iterator[str]:
    name = namespace_name(request.node.name)
    control_plane.ensure_namespace(name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
