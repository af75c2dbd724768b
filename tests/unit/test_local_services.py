"""The local node's Service proxy: LoadBalancer Services get an address of the node's pool and that address
is translated like the cluster address (what a cloud controller and kube-proxy do in a real cluster)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from devenv.localcluster import layout
from devenv.localcluster.services import load_balancer_assignments, nft_ruleset, snapshot

POOL = ("10.244.0.2", "10.244.0.3")


def service(name: str, kind: str = "LoadBalancer", ingress: str | None = None) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "metadata": {"namespace": "voip", "name": name},
        "spec": {
            "type": kind,
            "clusterIP": "10.96.0.20",
            "ports": [{"name": "sip-udp", "port": 5060, "protocol": "UDP"}],
        },
    }
    if ingress:
        svc["status"] = {"loadBalancer": {"ingress": [{"ip": ingress}]}}
    return svc


def endpoint_slice(name: str, ip: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "voip", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "sip-udp", "port": 5060, "protocol": "UDP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
    }


def test_the_pool_lies_between_the_node_address_and_the_pods_addresses() -> None:
    assert layout.NODE_IP not in layout.LOAD_BALANCER_POOL
    assert all(
        ip.startswith("10.244.0.") and int(ip.rsplit(".", 1)[1]) < 10 for ip in layout.LOAD_BALANCER_POOL
    )


def test_a_load_balancer_without_ingress_gets_a_free_pool_address() -> None:
    services = [service("taken", ingress="10.244.0.2"), service("new"), service("plain", kind="ClusterIP")]
    assert load_balancer_assignments(services, POOL) == {("voip", "new"): "10.244.0.3"}


def test_an_exhausted_pool_leaves_the_service_waiting() -> None:
    services = [service("a", ingress="10.244.0.2"), service("b", ingress="10.244.0.3"), service("c")]
    assert load_balancer_assignments(services, POOL) == {}


def test_the_ingress_address_is_translated_like_the_cluster_address() -> None:
    snap = snapshot([service("proxy", ingress="10.244.0.2")], [endpoint_slice("proxy", "10.244.0.11")], 6443)
    assert sorted(p.cluster_ip for p in snap.ports) == ["10.244.0.2", "10.96.0.20"]
    rules = nft_ruleset(snap.ports)
    assert "ip daddr 10.244.0.2 udp dport 5060 dnat to 10.244.0.11:5060" in rules
    assert "ip daddr 10.96.0.20 udp dport 5060 dnat to 10.244.0.11:5060" in rules


def test_several_endpoints_are_chosen_among_in_chains_nft_accepts() -> None:
    slice_ = endpoint_slice("proxy", "10.244.0.11")
    slice_["endpoints"].append({"addresses": ["10.244.0.12"], "conditions": {"ready": True}})
    rules = nft_ruleset(snapshot([service("proxy", kind="ClusterIP")], [slice_], 6443).ports)
    assert "numgen random mod 2" in rules
    # A port mapping without a transport match is a syntax error that makes nft refuse the whole table.
    assert "meta l4proto udp dnat to 10.244.0.11:5060" in rules
    assert "meta l4proto udp dnat to 10.244.0.12:5060" in rules
    if shutil.which("nft") and os.geteuid() == 0:
        check = subprocess.run(
            ["nft", "-c", "-f", "-"], check=False, input=rules, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr
