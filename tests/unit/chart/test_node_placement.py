"""What spec.nodeSelector needs from the chart: every proxy knows its node (NODE_NAME from the downward API),
and the operator may read Nodes only when asked to (operator.readNodes: `get` on `nodes`, nothing more)."""

from __future__ import annotations

from typing import Any

from tests.unit.chart.rendering import OPTION_SETS, RELEASE, env_of, rendered
from tests.unit.chart.test_rbac import rules_of


def proxy_container(values: dict[str, Any]) -> dict[str, Any]:
    [workload] = [w for w in rendered(values).workloads() if w["metadata"]["name"].endswith("-proxy")]
    [proxy] = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == "proxy"]
    return dict(proxy)


def test_every_proxy_knows_its_node() -> None:
    for name, values in OPTION_SETS.items():
        assert env_of(proxy_container(values))["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}, (
            name
        )


def test_extra_env_of_the_proxy_comes_after_node_name() -> None:
    proxy = proxy_container({"proxy": {"extraEnv": [{"name": "TZ", "value": "UTC"}]}})
    assert [e["name"] for e in proxy["env"]] == ["NODE_NAME", "TZ"]


def test_reading_nodes_is_a_get_of_nodes_only_and_off_by_default() -> None:
    assert not rendered().of_kind("ClusterRole")
    r = rendered({"operator": {"readNodes": True}})
    role = r.one("ClusterRole", "-nodes")
    assert rules_of(role) == {("", "nodes", "get")}
    binding = r.one("ClusterRoleBinding", "-nodes")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    sa = r.one("ServiceAccount", "-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "voip"}
    ]
    # Cluster-scoped names carry the namespace: two releases of one name in two namespaces do not clash.
    assert role["metadata"]["name"] == f"{RELEASE}-operator-voip-nodes"
