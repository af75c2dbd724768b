"""The ValidatingAdmissionPolicy that refuses SipSockets nobody serves: only CREATE, per release, read from a
marker grant that opens nothing (the API server's behaviour: tests/e2e/test_chart_admission_policy.py)."""

from __future__ import annotations

from tests.unit.chart.rendering import RELEASE, rendered


def test_the_policy_checks_only_creation_and_names_the_release_namespace() -> None:
    r = rendered()
    policy = r.one("ValidatingAdmissionPolicy")
    binding = r.one("ValidatingAdmissionPolicyBinding")
    assert policy["metadata"]["name"] == binding["spec"]["policyName"] == f"voip-{RELEASE}-proxy-fleet"
    assert binding["spec"]["validationActions"] == ["Deny"]
    [rule] = policy["spec"]["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["resources"], rule["operations"]) == (
        ["sipsockets.io"],
        ["sipsockets"],
        ["CREATE"],
    )
    [validation] = policy["spec"]["validations"]
    expression = validation["expression"]
    assert "authorizer.serviceAccount(request.namespace, 'sipsockets-proxy-fleet')" in expression
    assert "serves namespace voip" in validation["messageExpression"]
    assert "kubectl apply -n voip" in validation["messageExpression"]


def test_the_marker_grants_a_verb_on_an_api_that_does_not_exist_to_a_name_only() -> None:
    r = rendered()
    role = r.one("Role", "-proxy-fleet")
    marker = {"apiGroups": ["sipsockets.io"], "resources": ["proxyfleets"], "verbs": ["serve"]}
    assert role["rules"] == [marker]
    binding = r.one("RoleBinding", "-proxy-fleet")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "sipsockets-proxy-fleet", "namespace": "voip"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    # No ServiceAccount of that name is created: the grant is a marker, no pod can hold it.
    assert not [s for s in r.of_kind("ServiceAccount") if s["metadata"]["name"] == "sipsockets-proxy-fleet"]


def test_the_policy_can_be_left_out() -> None:
    r = rendered({"admissionPolicy": {"enabled": False}})
    assert not r.of_kind("ValidatingAdmissionPolicy")
    assert not r.of_kind("ValidatingAdmissionPolicyBinding")
    assert not [m for m in r.manifests if m["metadata"]["name"].endswith("-proxy-fleet")]
