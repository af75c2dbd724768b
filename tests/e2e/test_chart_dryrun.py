"""Every mode and option set of the chart, rendered and applied server-side with --dry-run=server to the real
kube-apiserver: its schemas (core objects, the SipSocket CRD with its CEL rules, admission) accept them."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from devenv.cluster_client import ClusterClient
from tests.e2e.chart_support import apply_objects, chart_crds
from tests.unit.chart.rendering import OPTION_SETS, render

__all__ = ["chart_crds"]  # fixtures


@pytest.mark.parametrize("option_set", sorted(OPTION_SETS))
def test_server_side_dry_run_accepts_every_option_set(
    control_plane: ClusterClient, chart_crds: None, namespace: str, option_set: str
) -> None:
    manifests = render(OPTION_SETS[option_set], namespace=namespace)
    # Pod Security Standards: every pod template meets "restricted", except the hostNetwork DaemonSet, which
    # cannot (the API server warns about workloads whose pods the namespace's level would refuse).
    control_plane.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/warn=restricted", "--overwrite"
    )
    # `helm test`'s hooks are created by `helm test`, once the release's objects exist: its Pod is checked
    # below, after its ServiceAccount is created for real (a Pod's ServiceAccount must exist, dry run or not).
    tests = [m for m in manifests if (m["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    manifests = [m for m in manifests if m not in tests]
    out = dry_run(control_plane, manifests)
    assert out.returncode == 0, out.stderr
    violations = [line for line in out.stderr.splitlines() if "would violate PodSecurity" in line]
    if option_set == "hostNetwork":
        assert violations == [
            'Warning: would violate PodSecurity "restricted:latest": host namespaces (hostNetwork=true)'
        ], out.stderr
    else:
        assert violations == [], out.stderr
    applied = [line for line in out.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len(manifests), out.stdout
    # A dry run persists nothing.
    assert control_plane.kubectl("get", "deployments", "-n", namespace, "-o", "name").stdout.strip() == ""

    if option_set == "everythingOff":
        assert tests == []
        return
    assert [t["kind"] for t in tests] == ["Pod"]
    accounts = [m for m in manifests if m["kind"] == "ServiceAccount"]
    apply_objects(control_plane, [a for a in accounts if a["metadata"]["name"].endswith("-test")])
    out = dry_run(control_plane, tests)
    assert out.returncode == 0, out.stderr
    assert "would violate PodSecurity" not in out.stderr, out.stderr


def dry_run(cp: ClusterClient, manifests: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    return cp.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=chart-e2e",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
        check=False,
    )


def test_server_side_dry_run_refuses_what_the_schema_refuses(
    control_plane: ClusterClient, chart_crds: None, namespace: str
) -> None:
    """The check above can fail: the same path refuses a rendered Deployment broken by hand."""
    manifests = render({}, namespace=namespace)
    proxy = next(
        m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"].endswith("-proxy")
    )
    container = proxy["spec"]["template"]["spec"]["containers"][0]
    container["ports"][0]["containerPort"] = 70000
    container["securityContext"]["runAsUser"] = -1
    out = control_plane.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=chart-e2e",
        "-f",
        "-",
        input=json.dumps(proxy),
        check=False,
    )
    assert out.returncode != 0
    assert "containerPort" in out.stderr
    assert "runAsUser" in out.stderr
