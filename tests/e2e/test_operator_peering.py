"""Several operator replicas with kopf peering: one works, the other stands by and takes over."""

from __future__ import annotations

import json

from tests.e2e.operator_support import Env, apply, crd, env, sipsocket, wait_condition, wait_for

__all__ = ["crd", "env"]  # fixtures

KOPF_PEERING_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "kopfpeerings.kopf.dev"},
    "spec": {
        "group": "kopf.dev",
        "scope": "Namespaced",
        "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                        },
                    }
                },
            }
        ],
    },
}


def test_standby_replica_takes_over(env: Env) -> None:
    cp, ns = env.cp, env.namespace
    cp.kubectl("apply", "-f", "-", input=json.dumps(KOPF_PEERING_CRD))
    cp.kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=60s")
    cp.kubectl(
        "apply", "-n", ns, "-f", "-",
        input=json.dumps({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                          "metadata": {"name": "sipsockets"}}),
    )  # fmt: skip
    env.pod("sipproxy-0")
    active = env.operator(peering="sipsockets", priority="100")
    standby = env.operator(peering="sipsockets", priority="50")

    def peers() -> int:
        out = cp.kubectl("get", "kopfpeering", "sipsockets", "-n", ns, "-o", "json")
        return len(json.loads(out.stdout).get("status") or {})

    wait_for(lambda: peers() == 2, "both replicas in the KopfPeering")
    addr = env.addresses.next()
    apply(cp, ns, sipsocket("first", "udp", addr, 5070))
    wait_condition(cp, ns, "first", "Ready", "True")
    assert "first: Accepted=True" in active.tail(100000)
    assert "first: Accepted=True" not in standby.tail(100000)

    active.stop()  # a graceful exit withdraws its peering record: the standby resumes at once
    apply(cp, ns, sipsocket("second", "udp", addr, 5071))
    wait_condition(cp, ns, "second", "Ready", "True", timeout=120)
    assert "second: Accepted=True" in standby.tail(100000)
