"""Every container the chart runs: non-root, read-only root filesystem, no privilege escalation, every
capability dropped, and only the proxy keeps NET_BIND_SERVICE; resource requests and limits everywhere; no
secret on a command line."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any

import pytest

from tests.unit.chart.rendering import OPTION_SETS, Manifest, containers, pod_spec, render, rendered


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


def secret_values(manifests: Iterable[Manifest]) -> set[str]:
    """What the rendered Secrets hold (generated passwords, the database URL, the MI token, TLS keys)."""
    values: set[str] = set()
    for m in manifests:
        if m["kind"] == "Secret":
            values |= {base64.b64decode(v).decode() for v in (m.get("data") or {}).values()}
            values |= set((m.get("stringData") or {}).values())
    return {v for v in values if v}


def secrets_on_command_lines(manifests: list[Manifest]) -> list[str]:
    """Containers whose command or args carry a secret, which every process on the node can read in
    /proc/PID/cmdline: a value of a rendered Secret, or a $(VAR) that the kubelet expands from one (a
    Secret-sourced variable, or one defined from such a variable); empty when none does."""
    secrets = secret_values(manifests)
    found = []
    for w in manifests:
        if w["kind"] not in {"Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob"}:
            continue
        for c in containers(w):
            where = f"{w['kind']}/{w['metadata']['name']}/{c['name']}"
            from_secret = any("secretRef" in source for source in c.get("envFrom", []))
            tainted: set[str] = set()
            defined: set[str] = set()
            for e in c.get("env", []):
                refs = set(re.findall(r"\$\((\w+)\)", str(e.get("value", ""))))
                if "secretKeyRef" in e.get("valueFrom", {}) or refs & tainted:
                    tainted.add(e["name"])
                defined.add(e["name"])
            for word in [*c.get("command", []), *c.get("args", [])]:
                for var in re.findall(r"\$\((\w+)\)", word):
                    if var in tainted or (from_secret and var not in defined):
                        found.append(f"{where}: $({var}) from a Secret on its command line")
                found += [f"{where}: a Secret's value on its command line" for s in secrets if s in word]
    return found


EXTERNAL_SECRETS = {
    "database": {"external": {"existingSecret": "carrier-db", "secretKey": "url"}},
    "mi": {"token": {"enabled": True, "existingSecret": "carrier-mi-token"}},
}


@pytest.mark.parametrize("option_set", [*sorted(OPTION_SETS), "externalSecrets"])
def test_no_secret_is_on_a_command_line(option_set: str) -> None:
    """The bundled PostgreSQL's password and URL, the MI token, and the URL of an external database Secret
    reach the containers as files or variables, never as arguments."""
    values = EXTERNAL_SECRETS if option_set == "externalSecrets" else OPTION_SETS[option_set]
    manifests = render(values)
    if option_set == "defaults":
        assert len(secret_values(manifests)) >= 3  # the database password and URL, the MI TLS keys
    assert secrets_on_command_lines(manifests) == []


def test_the_secret_check_finds_a_secret_on_a_command_line() -> None:
    password = "s3cret-Pa55word-0123456789abcdef"
    secret = {
        "kind": "Secret",
        "metadata": {"name": "db"},
        "data": {"pw": base64.b64encode(password.encode())},
    }
    ref = {"secretKeyRef": {"name": "carrier-db", "key": "url"}}
    init = {
        "name": "db-init",
        "command": ["sipproxy", "db", "init", "--db-url", "$(SIPSOCKETS_DB_URL)"],
        "env": [{"name": "SIPSOCKETS_DB_URL", "valueFrom": ref}],
    }
    literal = {"name": "psql", "command": ["psql"], "args": [f"postgres://u:{password}@db/x"]}
    indirect = {
        "name": "tool",
        "command": ["tool", "--url=$(URL)"],
        "env": [{"name": "PW", "valueFrom": ref}, {"name": "URL", "value": "postgres://u:$(PW)@db/x"}],
    }
    bulk = {"name": "bulk", "args": ["$(TOKEN)"], "envFrom": [{"secretRef": {"name": "mi"}}]}
    pod = {"initContainers": [init], "containers": [literal, indirect, bulk]}
    workload = {"kind": "Deployment", "metadata": {"name": "x"}, "spec": {"template": {"spec": pod}}}
    assert secrets_on_command_lines([secret, workload]) == [
        "Deployment/x/db-init: $(SIPSOCKETS_DB_URL) from a Secret on its command line",
        "Deployment/x/psql: a Secret's value on its command line",
        "Deployment/x/tool: $(URL) from a Secret on its command line",
        "Deployment/x/bulk: $(TOKEN) from a Secret on its command line",
    ]
