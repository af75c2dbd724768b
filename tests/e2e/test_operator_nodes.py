"""Sockets that live on some nodes, seen by the operator: two proxy pods in network namespaces of their own
(devenv.netns; one node holding the carrier's address, one not), registered as Pods bound to two Nodes,
against a real API server and the real operator. Processes fleet only: hostNetwork pods on the one local node
share that node's addresses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devenv.cluster_client import ClusterClient
from devenv.fakepods import ProxyPod
from devenv.netns import Lan, Netns, available
from tests.e2e.operator_support import (
    Env,
    ProcessBackend,
    apply,
    crd,
    get,
    namespace_name,
    proxy_config,
    sipsocket,
    wait_condition,
    wait_for,
)

__all__ = ["crd"]  # fixtures
VIP = 100


@pytest.fixture
def lan(control_plane: ClusterClient, crd: Path) -> Iterator[Lan]:
    reason = available()
    if reason is not None:
        pytest.skip(reason)
    network = Lan("10.200.9")
    try:
        yield network
    finally:
        network.close()


@dataclass
class World:
    env: Env
    nodes: list[str]  # the Node objects made by the test, deleted after it

    def add_node(self, name: str, labels: dict[str, str]) -> None:
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
        self.env.cp.kubectl("apply", "-f", "-", input=json.dumps(node))
        self.nodes.append(name)


@pytest.fixture
def world(lan: Lan, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    backend = ProcessBackend(request.getfixturevalue("control_plane"))
    namespace = namespace_name(request.node.name)
    backend.cp.ensure_namespace(namespace)
    env = Env(backend, namespace, tmp_path)
    nodes: list[str] = []
    try:
        yield World(env, nodes)
    finally:
        try:
            env.close()
        finally:
            for node in nodes:
                backend.cp.kubectl("delete", "node", node, "--wait=false", "--ignore-not-found", check=False)
            backend.cp.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def start_pod(env: Env, lan: Lan, name: str, node: str, host: int) -> Netns:
    """A proxy pod on `node`, in a namespace of its own at `.host` of the LAN."""
    config = proxy_config(env.db_url, mi_tls=env.pki.proxy_config())
    config.update(udp_workers=1, tcp_workers=1)
    config["sockets_mgm"]["processes"] = 2
    netns = lan.node(name, host)
    assert isinstance(env.backend, ProcessBackend)
    pod = ProxyPod(
        env.backend.cp, env.namespace, name, env.addresses.next(), config, env.workdir, netns=netns, node=node
    )
    env.pods.append(pod)
    pod.start()
    return netns


def listeners(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {e["pod"]: e for e in ((obj or {}).get("status") or {}).get("listeners") or ()}


def test_ready_with_the_pod_off_the_address_absent_then_the_address_moves(world: World, lan: Lan) -> None:
    env = world.env
    cp, ns = env.cp, env.namespace
    node_a, node_b = f"{ns}-sbc-a", f"{ns}-sbc-b"
    world.add_node(node_a, {"vlan": "205"})
    world.add_node(node_b, {"vlan": "206"})
    netns_a = start_pod(env, lan, "proxy-a", node_a, 2)
    netns_b = start_pod(env, lan, "proxy-b", node_b, 3)
    vip = lan.address(VIP)
    lan.move(vip, None, netns_a)
    env.operator()

    # Ready: listening where the address is, Absent (not Failed) on the other pod.
    apply(cp, ns, sipsocket("carrier", "udp", vip, 5060))
    obj = wait_condition(cp, ns, "carrier", "Ready", "True", "Listening")
    pods = listeners(obj)
    assert (pods["proxy-a"]["state"], pods["proxy-a"]["node"]) == ("Listening", node_a)
    assert pods["proxy-b"]["state"] == "Absent" and "not on this host" in pods["proxy-b"]["message"]
    assert obj["status"]["listening"] == "1/2"
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["message"] == "listening on 1/2 proxy pods; the address is not on the node of proxy-b"

    # The address moves to the other node: bound there, left here; Ready all along.
    lan.move(vip, netns_a, netns_b)

    def followed() -> dict[str, Any] | None:
        o = get(cp, ns, "carrier")
        pods = listeners(o)
        moved = pods["proxy-b"]["state"] == "Listening" and pods["proxy-a"]["state"] == "Absent"
        return o if moved else None

    obj = wait_for(followed, "the status to follow the address to node b", timeout=120)
    assert "has left this host" in listeners(obj)["proxy-a"]["message"]
    assert next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")["status"] == "True"

    # Free bind, on the VLAN 205 node only: bound there though the address is now on the other node, which
    # does not serve it.
    apply(cp, ns, sipsocket("floating", "udp", vip, 5062, freebind=True, nodeSelector={"vlan": "205"}))
    obj = wait_condition(cp, ns, "floating", "Ready", "True", "Listening")
    pods = listeners(obj)
    assert (pods["proxy-a"]["state"], pods["proxy-a"]["addressOnNode"], pods["proxy-a"]["receiving"]) == (
        "Listening",
        False,
        False,
    )
    assert (pods["proxy-b"]["state"], pods["proxy-b"]["node"]) == ("NotSelected", node_b)

    # A selector the API server refuses: not a label name.
    refused = apply(
        cp, ns, sipsocket("bad", "udp", vip, 5064, nodeSelector={"not a label": "x"}), check=False
    )
    assert refused.returncode != 0 and "nodeSelector keys must be label names" in refused.stderr
