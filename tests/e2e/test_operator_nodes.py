"""Sockets that live on some nodes, seen by the operator: two proxy pods in network namespaces of their own
(devenv.netns; one node holding the carrier's address, one not), registered as Pods bound to two Nodes,
against a real API server and the real operator. Processes fleet only: hostNetwork pods on the one local node
share that node's addresses."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
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
    condition,
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

    def set_addresses(self, name: str, addresses: dict[str, str]) -> None:
        """The node's status.addresses, as its kubelet or cloud controller would set them."""
        status = {"status": {"addresses": [{"type": t, "address": a} for t, a in addresses.items()]}}
        self.env.cp.kubectl(
            "patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps(status)
        )  # fmt: skip


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


def advertising(
    cp: ClusterClient, ns: str, name: str, pod: str, value: str
) -> Callable[[], dict[str, Any] | None]:
    """A check: the SipSocket, once `pod`'s listener says it advertises `value`."""

    def check() -> dict[str, Any] | None:
        obj = get(cp, ns, name)
        return obj if listeners(obj).get(pod, {}).get("advertised") == value else None

    return check


def forwarded_via(proxy: tuple[str, int], sink: socket.socket) -> str:
    """A MESSAGE sent through the proxy's socket to `sink` (the Request-URI's host): the Via the proxy added
    (the top one of the forwarded request)."""
    host, port = sink.getsockname()[:2]
    branch = secrets.token_hex(6)
    request = (
        f"MESSAGE sip:probe@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{branch}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:e2e@{host}>;tag={branch}\r\n"
        f"To: <sip:probe@{host}>\r\n"
        f"Call-ID: {branch}@e2e\r\n"
        "CSeq: 1 MESSAGE\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    sink.sendto(request.encode(), proxy)
    while True:
        data = sink.recv(65535).decode(errors="replace")
        if data.startswith("MESSAGE") and branch in data:
            return next(line for line in data.split("\r\n") if line.lower().startswith("via:"))


def test_the_advertised_address_follows_a_services_load_balancer(world: World) -> None:
    env = world.env
    cp, ns = env.cp, env.namespace
    config = proxy_config(env.db_url, mi_tls=env.pki.proxy_config())
    config.update(udp_workers=1, tcp_workers=1)
    config["sockets_mgm"]["processes"] = 2
    assert isinstance(env.backend, ProcessBackend)
    pod = ProxyPod(env.backend.cp, ns, "proxy-0", env.addresses.next(), config, env.workdir)
    env.pods.append(pod)
    pod.start()
    env.operator()
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sip-lb"},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "sip", "port": 5060, "protocol": "UDP"}]},
    }
    cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(service))

    def set_ingress(ip: str) -> None:
        status = {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}
        patch = ("--subresource=status", "--type=merge", "-p", json.dumps(status))
        cp.kubectl("patch", "service", "sip-lb", "-n", ns, *patch)

    addr = env.addresses.next()
    apply(cp, ns, sipsocket("carrier", "udp", addr, 5070, advertised={"fromService": "sip-lb"}))
    pending = wait_condition(cp, ns, "carrier", "Ready", "False", "AdvertisedAddressPending")
    assert "Service sip-lb has no load-balancer ingress address yet" in condition(pending, "Ready")["message"]

    # A cloud controller gives the Service its address: the socket advertises it.
    set_ingress("203.0.113.7")
    obj = wait_condition(cp, ns, "carrier", "Ready", "True", "Listening")
    assert obj["status"]["advertised"] == "203.0.113.7:5070"
    assert listeners(obj)["proxy-0"]["advertised"] == "203.0.113.7:5070"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind((env.addresses.next(), 0))
        sink.settimeout(10)
        assert "SIP/2.0/UDP 203.0.113.7:5070;" in forwarded_via((addr, 5070), sink)

        # A new load-balancer address: new messages carry it, through the same open socket (no replacement).
        set_ingress("198.51.100.9")
        changed_at = time.monotonic()
        wait_for(
            lambda: "198.51.100.9:5070;" in forwarded_via((addr, 5070), sink),
            "Via to carry the new load-balancer address",
            timeout=60,
            interval=0.5,
        )
        print(f"new messages carried the new address {time.monotonic() - changed_at:.1f}s after the change")
    obj = wait_for(advertising(cp, ns, "carrier", "proxy-0", "198.51.100.9:5070"), "the listener to follow")
    assert obj["status"]["advertised"] == "198.51.100.9:5070"


def test_each_pod_advertises_its_own_nodes_address(world: World, lan: Lan) -> None:
    env = world.env
    cp, ns = env.cp, env.namespace
    nodes = {"proxy-a": f"{ns}-sbc-a", "proxy-b": f"{ns}-sbc-b"}
    external = {"proxy-a": "203.0.113.1", "proxy-b": "203.0.113.2"}
    for pod, node in nodes.items():
        world.add_node(node, {})
        world.set_addresses(node, {"ExternalIP": external[pod], "InternalIP": "10.0.0.1"})
    start_pod(env, lan, "proxy-a", nodes["proxy-a"], 2)
    start_pod(env, lan, "proxy-b", nodes["proxy-b"], 3)
    env.operator()

    # A wildcard socket on every node, each advertising its own node's public address.
    apply(cp, ns, sipsocket("edge", "udp", "0.0.0.0", 5060, advertised={"fromNode": "ExternalIP"}))
    obj = wait_condition(cp, ns, "edge", "Ready", "True", "Listening")
    assert {pod: e["advertised"] for pod, e in listeners(obj).items()} == {
        "proxy-a": "203.0.113.1:5060",
        "proxy-b": "203.0.113.2:5060",
    }
    assert obj["status"]["advertised"] == "ExternalIP of each node, port 5060"

    # One node's address changes: that pod follows, the other keeps its own.
    world.set_addresses(nodes["proxy-b"], {"ExternalIP": "198.51.100.2"})
    obj = wait_for(
        advertising(cp, ns, "edge", "proxy-b", "198.51.100.2:5060"),
        "proxy-b to advertise its node's new address",
        timeout=90,
    )
    assert listeners(obj)["proxy-a"]["advertised"] == "203.0.113.1:5060"
