"""The operator's RBAC is exactly what it calls: nothing broader, no wildcards, no Secrets."""

from __future__ import annotations

from typing import Any

from tests.unit.chart.rendering import OPTION_SETS, RELEASE, rendered


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# kopf lists and watches, patches (finalizer, annotations, status) and posts Events; the operator GETs a
# Service (spec.advertised.fromService) and nothing else of its namespace.
NAMESPACED = {
    ("sipsockets.io", "sipsockets", "list"),
    ("sipsockets.io", "sipsockets", "watch"),
    ("sipsockets.io", "sipsockets", "patch"),
    ("sipsockets.io", "sipsockets/status", "patch"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    # spec.advertised.fromService: the Service is read at a pass and watched for a new load-balancer address.
    ("", "services", "get"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("", "events", "create"),
}
PEERING = {("kopf.dev", "kopfpeerings", v) for v in ("list", "watch", "patch")}


def test_operator_role_is_least_privilege() -> None:
    r = rendered()
    role = r.one("Role", "-operator")
    assert role["metadata"]["namespace"] == "voip"
    assert rules_of(role) == NAMESPACED
    # Resource scanning is off in the operator: no cluster-wide grant at all.
    assert not r.of_kind("ClusterRole")
    assert not r.of_kind("ClusterRoleBinding")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert "resourceNames" not in rule


def test_peering_adds_only_kopfpeerings() -> None:
    role = rendered(OPTION_SETS["peering"]).one("Role", "-operator")
    assert rules_of(role) == NAMESPACED | PEERING


def test_bindings_name_the_operator_service_account_only() -> None:
    r = rendered()
    sa = r.one("ServiceAccount", "-operator")
    binding = r.one("RoleBinding", "-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "voip"}
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": f"{RELEASE}-operator",
    }
