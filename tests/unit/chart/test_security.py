"""Every container the chart runs: non-root, read-only root filesystem, no privilege escalation, every
capability dropped, and only the proxy keeps NET_BIND_SERVICE; resource requests and limits everywhere."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.chart.rendering import OPTION_SETS, containers, pod_spec, rendered


@pytest.mark.parametrize("option_set", sorted(OPTION_SETS))
def test_every_container_is_locked_down(option_set: str) -> None:
    r = rendered(OPTION_SETS[option_set])
    assert r.workloads()
    for w in r.workloads():
        spec = pod_spec(w)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in containers(w):
            where = f"{w['kind']}/{w['metadata']['name']}/{c['name']}"
            sc: dict[str, Any] = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["runAsUser"] > 0, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            added = sc["capabilities"].get("add", [])
            if w["metadata"]["name"].endswith("-proxy") and c["name"] == "proxy":
                assert added == ["NET_BIND_SERVICE"], where
            else:
                assert added == [], where
            assert "privileged" not in sc, where
            res = c["resources"]
            assert {"cpu", "memory"} <= res["requests"].keys(), where
            assert {"cpu", "memory"} <= res["limits"].keys(), where


def test_only_the_proxy_fleet_uses_host_networking() -> None:
    r = rendered(OPTION_SETS["hostNetwork"])
    for w in r.workloads():
        expected = w["kind"] == "DaemonSet"
        assert pod_spec(w).get("hostNetwork", False) is expected


def test_proxy_may_bind_low_ports_in_its_own_network_namespace() -> None:
    spec = pod_spec(rendered().one("Deployment", "-proxy"))
    assert spec["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}
    ]
    spec = pod_spec(rendered(OPTION_SETS["everythingOff"]).one("Deployment", "-proxy"))
    assert "sysctls" not in spec["securityContext"]


def test_only_the_operator_gets_a_service_account_token() -> None:
    r = rendered()
    for w in r.workloads():
        spec = pod_spec(w)
        if w["metadata"]["name"].endswith("-operator"):
            assert spec["serviceAccountName"].endswith("-operator")
        else:
            assert spec["automountServiceAccountToken"] is False
