"""The e2e harness itself: a real API server that serves CRDs, enforces RBAC and leaves nothing behind."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from devenv.controlplane import ControlPlane
from devenv.fakepods import ProxyPod
from devenv.processes import alive

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.harness.test"},
    "spec": {
        "group": "harness.test",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_api_server_answers_with_its_version(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("version", "-o", "json").stdout
    server = json.loads(out)["serverVersion"]
    assert server["gitVersion"].startswith("v1.35.")
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_crd_is_applied_and_served_with_its_schema(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(WIDGET_CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "crd/widgets.harness.test", "--timeout=60s")
    good = {
        "apiVersion": "harness.test/v1",
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"size": 3},
    }
    deadline = time.monotonic() + 30
    while True:  # discovery of a new CRD takes a moment to reach every API handler
        created = control_plane.kubectl(
            "apply", "-n", namespace, "-f", "-", input=json.dumps(good), check=False
        )
        if created.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert created.returncode == 0, created.stderr
    got = json.loads(control_plane.kubectl("get", "widget", "w1", "-n", namespace, "-o", "json").stdout)
    assert got["spec"]["size"] == 3
    bad = dict(good, metadata={"name": "w2"}, spec={"size": 0})
    refused = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode != 0
    assert "spec.size" in refused.stderr


def test_rbac_denies_an_unprivileged_service_account(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    control_plane.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = control_plane.kubectl("create", "token", "nobody", "-n", namespace).stdout.strip()
    kubeconfig = control_plane.kubeconfig_for_token(token, tmp_path / "nobody.kubeconfig")
    who = control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig)
    assert (
        json.loads(who.stdout)["status"]["userInfo"]["username"]
        == f"system:serviceaccount:{namespace}:nobody"
    )
    denied = control_plane.kubectl("get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    # The same call succeeds once a Role grants it: the refusal came from RBAC, not from a broken token.
    control_plane.kubectl("create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace)
    control_plane.kubectl(
        "create", "rolebinding", "nobody-reads", "--role=pod-reader",
        f"--serviceaccount={namespace}:nobody", "-n", namespace,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while control_plane.kubectl(
        "get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False
    ).returncode:
        assert time.monotonic() < deadline, "RoleBinding never took effect"
        time.sleep(0.3)


def test_teardown_leaves_no_process_behind(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path / "cp")
    cp.start()
    pids = cp.procs.load()
    assert set(pids) == {"etcd", "kube-apiserver"}
    assert all(alive(pid) for pid in pids.values())
    assert cp.running()
    cp.stop()
    assert not any(alive(pid) for pid in pids.values())
    assert cp.procs.load() == {}
    assert not cp.running()


def test_a_proxy_pod_refuses_an_mi_address_already_taken(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """A process left on the address (an interrupted run) must not pass for the new pod's proxy."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.59", 8888))
        squatter.listen()
        pod = ProxyPod(control_plane, namespace, "p", "127.0.0.59", {"sockets": []}, tmp_path)
        with pytest.raises(RuntimeError, match=r"already listens on its MI address 127\.0\.0\.59:8888"):
            pod.start()
    assert pod.pid is None
