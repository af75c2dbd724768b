"""The operator's RBAC is exactly what it calls: no wildcards, Secrets read-only, one Lease by name."""

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


# kopf lists and watches; the operator's own client patches (finalizer, status) and posts Events; it never
# GETs one SipSocket. Secrets: the operator's own client GETs those that tls/wss SipSockets name, kopf watches
# them for renewals. Services: the same for the one spec.advertised.fromService names.
NAMESPACED = {
    ("", "secrets", "get"),
    ("", "secrets", "list"),
    ("", "secrets", "watch"),
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
LEASES = {("coordination.k8s.io", "leases", v) for v in ("get", "update", "create")}


def lease_rules(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in role["rules"] if "leases" in r["resources"]]


def test_operator_role_is_least_privilege() -> None:
    r = rendered()
    role = r.one("Role", "-operator")
    assert role["metadata"]["namespace"] == "voip"
    assert rules_of(role) == NAMESPACED | LEASES
    # Resource scanning is off in the operator: no cluster-wide grant at all.
    assert not r.of_kind("ClusterRole")
    assert not r.of_kind("ClusterRoleBinding")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        if rule not in lease_rules(role):
            assert "resourceNames" not in rule
    # Secrets are never written: not created, patched, updated or deleted.
    assert {verb for group, resource, verb in rules_of(role) if resource == "secrets"} == {
        "get",
        "list",
        "watch",
    }


def test_the_lease_is_read_and_renewed_by_name_only() -> None:
    """get and update on the one Lease the operator's settings name; create cannot carry a name."""
    for values, lease in (({}, f"{RELEASE}-operator"), (OPTION_SETS["replicas"], "voip-sbc")):
        r = rendered(values)
        by_verbs = {tuple(sorted(rule["verbs"])): rule for rule in lease_rules(r.one("Role", "-operator"))}
        assert by_verbs[("get", "update")]["resourceNames"] == [lease]
        assert "resourceNames" not in by_verbs[("create",)]
        op = r.one("Deployment", "-operator")
        env = {e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["SIPSOCKETS_LEASE_NAME"] == lease


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
