"""`helm test`'s Pod: a hook running the proxy image's probe, locked down like every other container, with a
ServiceAccount that may only list the SipSockets of its namespace (the probe itself: tests/integration/
test_probe.py; on a real node: tests/e2e/cluster/test_chart.py)."""

from __future__ import annotations

from tests.unit.chart.rendering import OPTION_SETS, RELEASE, rendered


def test_the_test_pod_is_a_helm_test_hook_running_the_probe_locked_down() -> None:
    r = rendered()
    [pod] = r.of_kind("Pod")
    assert pod["metadata"]["name"] == f"{RELEASE}-test"
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [c] = spec["containers"]
    assert c["image"] == r.one("Deployment", "-proxy")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert c["command"][:3] == ["python", "-m", "sipproxy.probe"]
    assert c["command"][c["command"].index("--namespace") + 1] == "voip"
    sc = c["securityContext"]
    assert (sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"], sc["runAsNonRoot"]) == (
        True,
        False,
        True,
    )
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= c["resources"]["limits"].keys()


def test_its_service_account_may_only_list_sipsockets_in_the_namespace() -> None:
    r = rendered()
    [pod] = r.of_kind("Pod")
    sa = r.one("ServiceAccount", "-test")
    assert pod["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    role = r.one("Role", "-test")
    assert role["metadata"]["namespace"] == "voip"
    assert role["rules"] == [{"apiGroups": ["sipsockets.io"], "resources": ["sipsockets"], "verbs": ["list"]}]
    binding = r.one("RoleBinding", "-test")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "voip"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_wildcard_sockets_go_through_the_proxy_service_in_service_mode_only() -> None:
    [pod] = rendered().of_kind("Pod")
    command = pod["spec"]["containers"][0]["command"]
    assert command[command.index("--fallback-host") + 1] == f"{RELEASE}-proxy.voip.svc"
    for mode in ("hostNetwork", "multus"):
        [pod] = rendered(OPTION_SETS[mode]).of_kind("Pod")
        assert "--fallback-host" not in pod["spec"]["containers"][0]["command"]


def test_the_test_can_be_left_out() -> None:
    r = rendered({"tests": {"enabled": False}})
    assert not r.of_kind("Pod")
    assert not [m for m in r.manifests if m["metadata"]["name"].endswith("-test")]
