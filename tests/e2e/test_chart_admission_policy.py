"""A SipSocket nobody serves says so at apply time: the chart's ValidatingAdmissionPolicy refuses SipSockets
in a namespace that no release serves, naming the release's namespace, while two releases never refuse each
other's SipSockets; helm uninstall takes the refusal away."""

from __future__ import annotations

import json
import time
from pathlib import Path

from devenv.cluster_client import ClusterClient
from tests.e2e.chart_support import chart_crds, helm_install, helm_uninstall

__all__ = ["chart_crds"]  # fixtures

# No operator runs in this test: its webhook (failurePolicy Fail) would refuse everything in the release's own
# namespace, and what is checked here is the policy alone.
VALUES = {"operator": {"webhook": {"enabled": False}}}


def sipsocket(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "sipsockets.io/v1alpha1",
            "kind": "SipSocket",
            "metadata": {"name": name},
            "spec": {"protocol": "udp", "address": "127.0.0.1", "port": 5070},
        }
    )


def create(cp: ClusterClient, namespace: str, name: str, *flags: str) -> tuple[bool, str]:
    r = cp.kubectl("create", "-n", namespace, "-f", "-", *flags, input=sipsocket(name), check=False)
    return r.returncode == 0, r.stderr


def admitted(cp: ClusterClient, namespace: str, name: str, expected: bool) -> str:
    """Whether creating SipSocket `name` in `namespace` gets through admission (a server-side dry run: nothing
    is stored), asked until it is `expected`: a policy, its binding and RBAC reach the API server's admission
    through informers, so a change made a moment ago may take that moment to apply. Its error text."""
    deadline = time.monotonic() + 30
    while True:
        ok, err = create(cp, namespace, name, "--dry-run=server")
        if ok == expected or time.monotonic() > deadline:
            assert ok == expected, f"create in {namespace}: admitted={ok}, {err}"
            return err
        time.sleep(0.5)


def test_a_sipsocket_in_a_namespace_without_a_fleet_is_refused_naming_where_one_runs(
    control_plane: ClusterClient, chart_crds: None, namespace: str, tmp_path: Path
) -> None:
    cp = control_plane
    elsewhere, second = f"{namespace}-x", f"{namespace}-y"
    for ns in (elsewhere, second):
        cp.ensure_namespace(ns)
    try:
        helm_install(cp, namespace, VALUES, tmp_path)
        # `kubectl apply -f examples/carrier-a.yaml` without `-n voip`: refused, and the message says where.
        err = admitted(cp, elsewhere, "carrier-a", expected=False)
        assert f"no sipsockets proxy fleet serves namespace {elsewhere}" in err
        assert f"the release sipsockets serves namespace {namespace}" in err
        assert f"kubectl apply -n {namespace}" in err
        assert not create(cp, elsewhere, "carrier-a")[0]
        # In the release's own namespace the policy lets it through.
        assert create(cp, namespace, "carrier-a") == (True, "")

        # A second release in another namespace: each serves its own, neither refuses the other's.
        helm_install(cp, second, VALUES, tmp_path, "other")
        admitted(cp, second, "carrier-b", expected=True)
        assert create(cp, second, "carrier-b") == (True, "")
        assert create(cp, namespace, "carrier-c") == (True, "")
        assert not create(cp, elsewhere, "carrier-d")[0]

        # Its release gone, that namespace is served no more; but an existing SipSocket there stays editable
        # (only CREATE is checked), so that its finalizer can still be removed by hand.
        helm_uninstall(cp, second, "other")
        admitted(cp, second, "carrier-e", expected=False)
        labelled = cp.kubectl("label", "sipsocket", "carrier-b", "-n", second, "edited=yes", check=False)
        assert labelled.returncode == 0, labelled.stderr
    finally:
        helm_uninstall(cp, namespace)
        helm_uninstall(cp, second, "other")
    # Uninstalled: nothing refuses SipSockets any more (the e2e tests after this one create them freely).
    admitted(cp, elsewhere, "carrier-f", expected=True)
    for ns in (namespace, second):
        cp.kubectl("delete", "sipsockets", "--all", "-n", ns, "--wait=false", check=False)
    for ns in (elsewhere, second):
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
