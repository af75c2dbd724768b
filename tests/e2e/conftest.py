"""Fixtures of the e2e tier: a real etcd and kube-apiserver for the session, a fresh namespace per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.cluster_client import ClusterClient
from devenv.controlplane import ControlPlane
from devenv.kind import KindCluster

_namespaces = itertools.count(1)


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


@pytest.fixture
def namespace(control_plane: ClusterClient, request: pytest.FixtureRequest) -> Iterator[str]:
    # Names stay unique within the session: without a controller-manager a deleted namespace never finishes
    # terminating, so a name is never reused.
    base = request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = f"{base}-{next(_namespaces)}"
    control_plane.ensure_namespace(name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
