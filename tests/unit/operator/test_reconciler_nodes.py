"""Whole passes for sockets that live on some nodes: two proxy MIs on loopback (one on the node holding the
address, one not), Nodes read from a Kubernetes API on loopback, a real SQLite table."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sipoperator.kube import KubeClient
from sipoperator.metrics import Metrics
from sipoperator.nodes import NodeLabels
from sipoperator.proxies import Fleet
from sipoperator.reconciler import Reconciler
from sipoperator.settings import Settings
from sipoperator.sources import SourceWatch
from sipoperator.status import StatusWriter
from sipoperator.store import Store
from tests.unit.operator.servers import STATUS_PATH, FakeAPI, FakeMI

ROW = "udp:10.0.5.20:5070"


class NodesAPI(FakeAPI):
    """The fake API with Nodes (`nodes`: name -> labels, `addresses`: name -> {type: address}) and Services of
    the namespace (`services`: name -> load-balancer ingress list); a missing name is 404."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, dict[str, str]] = {}
        self.addresses: dict[str, dict[str, str]] = {}
        self.services: dict[str, list[dict[str, str]]] = {}
        self.node_reads = 0

    async def __aenter__(self) -> NodesAPI:
        app = web.Application()
        app.router.add_patch(STATUS_PATH, self._patch)
        app.router.add_get("/api/v1/nodes/{name}", self._node)
        app.router.add_get("/api/v1/namespaces/voip/services/{name}", self._service)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    @staticmethod
    def _missing(kind: str, name: str) -> web.Response:
        body = {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}
        return web.json_response({**body, "message": f'{kind} "{name}" not found'}, status=404)

    async def _node(self, request: web.Request) -> web.Response:
        self.node_reads += 1
        name = request.match_info["name"]
        if request.headers.get("Authorization") != f"Bearer {self.token}" or name not in self.nodes:
            return self._missing("nodes", name)
        addresses = [{"type": t, "address": a} for t, a in self.addresses.get(name, {}).items()]
        return web.json_response(
            {
                "kind": "Node",
                "metadata": {"name": name, "labels": self.nodes[name]},
                "status": {"addresses": addresses},
            }
        )

    async def _service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.services:
            return self._missing("services", name)
        ingress = self.services[name]
        return web.json_response({"kind": "Service", "status": {"loadBalancer": {"ingress": ingress}}})


@dataclass
class NodeMI(FakeMI):
    """A proxy MI whose sockets_list says of each socket what `report` says (listening by default)."""

    report: Callable[[str], dict[str, Any]] = field(default=lambda _: {"state": "listening"})

    async def _handle(self, request: web.Request) -> web.Response:
        call = await request.json()
        if call["method"] != "sockets_list":
            return await super()._handle(request)
        self.on_call("sockets_list")
        result = [{"socket": s, **self.report(s)} for s in self.listed]
        return web.json_response({"jsonrpc": "2.0", "id": call["id"], "result": result})


@dataclass
class World:
    rec: Reconciler
    api: NodesAPI
    mis: dict[str, NodeMI]
    db: Path
    calls: list[tuple[str, str]]  # (pod, MI method)

    def body(self, spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
        self.api.objects.setdefault(("voip", "carrier"), {})
        return {
            "metadata": {
                "uid": "uid-carrier",
                "namespace": "voip",
                "name": "carrier",
                "generation": generation,
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": spec,
            "status": dict(self.api.objects[("voip", "carrier")]),
        }

    def placement(self) -> list[tuple[int, str | None]]:
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute("SELECT freebind, nodes FROM sipsockets_socket_options").fetchall()
        return [(int(r[0]), r[1]) for r in rows]

    def reloads(self, pod: str) -> int:
        return sum(1 for p, method in self.calls if (p, method) == (pod, "sockets_reload"))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    db = tmp_path / "sockets.db"
    settings = Settings(namespace="voip", db_url=f"sqlite:///{db}")
    store = Store(settings.db_url)
    calls: list[tuple[str, str]] = []

    def sockets() -> list[str]:
        with sqlite3.connect(db) as conn:
            return [str(r[0]) for r in conn.execute("SELECT socket FROM sockets")]

    async with NodesAPI() as api:
        api.nodes = {"sbc-1": {"vlan": "205"}, "sbc-2": {"vlan": "206"}}
        kube = KubeClient(api.login())
        metrics = Metrics()
        fleet = Fleet(settings, metrics)
        rec = Reconciler(settings, store, fleet, metrics, StatusWriter(kube), kube, NodeLabels(kube, ttl=0.0))
        mis: dict[str, NodeMI] = {}

        def recorder(pod: str) -> Callable[[str], None]:
            return lambda method: calls.append((pod, method))

        for pod, node in (("proxy-a", "sbc-1"), ("proxy-b", "sbc-2")):
            mi = NodeMI(sockets, recorder(pod))
            mis[pod] = mi
            fleet.observe(pod, f"uid-{pod}", "127.0.0.1", True, await mi.start(), node)
        try:
            yield World(rec, api, mis, db, calls)
        finally:
            for mi in mis.values():
                await mi.close()
            await kube.close()
            await fleet.client.close()
            await store.close()


def ready(status: dict[str, Any]) -> tuple[str, str, str]:
    [c] = [c for c in status["conditions"] if c["type"] == "Ready"]
    return c["status"], c["reason"], c["message"]


def listeners(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["pod"]: entry for entry in status["listeners"]}


async def test_ready_with_one_pod_absent_and_no_reload_for_it(world: World) -> None:
    world.mis["proxy-a"].report = lambda _: {"state": "listening", "address_local": True, "received": 40,
                                             "receiving": True}  # fmt: skip
    absent = (
        "address 10.0.5.20 is not on this host ([Errno 99] Cannot assign requested address); "
        "the socket is bound when the address appears"
    )
    world.mis["proxy-b"].report = lambda _: {"state": "absent", "error": absent}
    spec = {"protocol": "udp", "address": "10.0.5.20", "port": 5070}
    result = await world.rec.reconcile(world.body(spec))
    assert ready(result.status) == (
        "True",
        "Listening",
        "listening on 1/2 proxy pods; the address is not on the node of proxy-b",
    )
    # Listening says the address is there; where traffic arrives is shown for free-bind sockets.
    assert listeners(result.status) == {
        "proxy-a": {"pod": "proxy-a", "state": "Listening", "message": "listening", "node": "sbc-1"},
        "proxy-b": {"pod": "proxy-b", "state": "Absent", "message": absent, "node": "sbc-2"},
    }
    assert result.status["listening"] == "1/2"
    assert world.placement() == []  # every node, no free bind: nothing beside the row
    assert world.api.node_reads == 0  # no selector: no Node is read

    # The next pass: the absent pod is as it should be, no reload for it.
    before = world.reloads("proxy-b")
    again = await world.rec.reconcile(world.body(spec))
    assert world.reloads("proxy-b") == before and again.changed == []

    # The address is nowhere: not Ready, and the reason says so.
    world.mis["proxy-a"].report = lambda _: {"state": "absent", "error": absent}
    result = await world.rec.reconcile(world.body(spec))
    assert ready(result.status)[:2] == ("False", "AddressAbsent")


async def test_a_node_selector_places_the_socket_on_the_selected_nodes_only(world: World) -> None:
    world.mis["proxy-a"].report = lambda _: {"state": "listening", "freebind": True, "address_local": True,
                                             "received": 7, "receiving": True}  # fmt: skip
    world.mis["proxy-b"].report = lambda _: {"state": "unselected", "error": "placed on other nodes"}
    spec = {"protocol": "udp", "address": "10.0.5.20", "port": 5070, "freebind": True,
            "nodeSelector": {"vlan": "205"}}  # fmt: skip
    result = await world.rec.reconcile(world.body(spec))
    assert world.placement() == [(1, "sbc-1")]
    assert ready(result.status) == (
        "True",
        "Listening",
        "listening on 1/1 proxy pods; 1 pods are on nodes spec.nodeSelector does not select",
    )
    assert listeners(result.status)["proxy-a"] == {
        "pod": "proxy-a",
        "state": "Listening",
        "message": "listening",
        "node": "sbc-1",
        "addressOnNode": True,
        "receiving": True,
    }
    assert listeners(result.status)["proxy-b"] == {
        "pod": "proxy-b",
        "state": "NotSelected",
        "message": "node sbc-2 is not selected by spec.nodeSelector",
        "node": "sbc-2",
    }
    # A resync: both pods are as the placement says, neither is reloaded.
    reloads = world.reloads("proxy-a"), world.reloads("proxy-b")
    await world.rec.reconcile(world.body(spec))
    assert (world.reloads("proxy-a"), world.reloads("proxy-b")) == reloads

    # sbc-2 joins the VLAN: the row's node list grows, every pod reloads and both serve it.
    world.api.nodes["sbc-2"] = {"vlan": "205"}
    world.mis["proxy-b"].report = lambda _: {"state": "listening"}
    result = await world.rec.reconcile(world.body(spec))
    assert world.placement() == [(1, "sbc-1,sbc-2")]
    assert world.reloads("proxy-b") == reloads[1] + 1
    assert ready(result.status)[:3] == ("True", "Listening", "listening on 2/2 proxy pods")

    # The selector dropped: every node again, and the side table holds only free bind.
    spec.pop("nodeSelector")
    result = await world.rec.reconcile(world.body(spec, generation=2))
    assert world.placement() == [(1, None)]
    assert ready(result.status)[:2] == ("True", "Listening")


async def test_a_node_that_cannot_be_read_fails_its_pod_with_the_reason(world: World) -> None:
    del world.api.nodes["sbc-2"]
    spec = {"protocol": "udp", "address": "10.0.5.20", "port": 5070, "nodeSelector": {"vlan": "205"}}
    result = await world.rec.reconcile(world.body(spec))
    status, reason, message = ready(result.status)
    assert (status, reason) == ("False", "PartiallyListening")
    assert "proxy-b: cannot read Node sbc-2: 404 NotFound" in message
    assert world.placement() == [(0, "sbc-1")]


def advertised_column(world: World) -> list[str | None]:
    with sqlite3.connect(world.db) as conn:
        return [r[0] for r in conn.execute("SELECT advertised FROM sockets")]


async def test_the_advertised_address_follows_a_services_load_balancer(world: World) -> None:
    world.api.services["sip-lb"] = []
    spec = {"protocol": "udp", "address": "10.0.5.20", "port": 5070, "advertised": {"fromService": "sip-lb"}}
    result = await world.rec.reconcile(world.body(spec))
    status, reason, message = ready(result.status)
    assert (status, reason) == ("False", "AdvertisedAddressPending")
    assert message.startswith("Service sip-lb has no load-balancer ingress address yet; listening on 2/2")
    assert advertised_column(world) == [None]

    # The cloud controller gives it an address: the Service's watch wakes the object, whose pass writes it.
    world.api.services["sip-lb"] = [{"ip": "203.0.113.7"}]
    uid = "uid-carrier"
    assert not world.rec.due(uid) or world.rec.memo(uid).failures  # (backoff aside) nothing due yet
    world.rec.service_changed("other-service")
    assert not world.rec.memo(uid).sources_changed
    world.rec.service_changed("sip-lb")
    assert world.rec.memo(uid).sources_changed and world.rec.due(uid)
    for mi in world.mis.values():
        mi.report = lambda _: {"state": "listening", "advertised": "203.0.113.7:5070"}
    result = await world.rec.reconcile(world.body(spec))
    assert ready(result.status)[:2] == ("True", "Listening")
    assert advertised_column(world) == ["203.0.113.7:5070"]
    assert result.status["advertised"] == "203.0.113.7:5070"
    assert listeners(result.status)["proxy-a"]["advertised"] == "203.0.113.7:5070"
    assert not world.rec.memo(uid).sources_changed

    # A new address: the row changes (the proxies update the socket in place) and every pod reloads.
    world.api.services["sip-lb"] = [{"hostname": "a1b2.elb.example.com"}]
    reloads = world.reloads("proxy-a")
    await world.rec.reconcile(world.body(spec))
    assert advertised_column(world) == ["a1b2.elb.example.com:5070"]
    assert world.reloads("proxy-a") == reloads + 1


async def test_each_pod_advertises_its_own_nodes_address(world: World) -> None:
    world.api.addresses = {"sbc-1": {"ExternalIP": "203.0.113.1"}, "sbc-2": {"ExternalIP": "203.0.113.2"}}
    spec = {"protocol": "udp", "address": "0.0.0.0", "port": 5070, "advertised": {"fromNode": "ExternalIP"}}
    world.mis["proxy-a"].report = lambda _: {"state": "listening", "advertised": "203.0.113.1:5070"}
    result = await world.rec.reconcile(world.body(spec))
    assert ready(result.status)[:2] == ("True", "Listening")
    assert advertised_column(world) == [None]  # OpenSIPS reads one value per row: none fits every node
    with sqlite3.connect(world.db) as conn:
        [(per_node,)] = conn.execute("SELECT advertised FROM sipsockets_socket_options").fetchall()
    assert per_node == "sbc-1=203.0.113.1:5070,sbc-2=203.0.113.2:5070"
    assert result.status["advertised"] == "ExternalIP of each node, port 5070"
    assert listeners(result.status)["proxy-a"]["advertised"] == "203.0.113.1:5070"

    # Nothing changed: the periodic look wakes nobody. A node's new address wakes the object.
    uid = "uid-carrier"
    await world.rec.check_sources()
    assert not world.rec.memo(uid).sources_changed
    world.api.addresses["sbc-2"] = {"ExternalIP": "198.51.100.2"}
    await world.rec.check_sources()
    assert world.rec.memo(uid).sources_changed
    await world.rec.reconcile(world.body(spec))
    with sqlite3.connect(world.db) as conn:
        [(per_node,)] = conn.execute("SELECT advertised FROM sipsockets_socket_options").fetchall()
    assert per_node == "sbc-1=203.0.113.1:5070,sbc-2=198.51.100.2:5070"

    # A node without that address: the others keep theirs, and Ready says which node lacks one.
    del world.api.addresses["sbc-2"]
    await world.rec.check_sources()
    assert world.rec.memo(uid).sources_changed
    result = await world.rec.reconcile(world.body(spec))
    status, reason, message = ready(result.status)
    assert (status, reason) == ("False", "AdvertisedAddressPending") and message.startswith(
        "Node sbc-2 has no ExternalIP"
    )


async def test_the_look_at_node_addresses_runs_only_as_leader_work(world: World) -> None:
    """The look is started and stopped with the Lease (sources.py, beside the keepers): started, it reads the
    nodes and wakes the SipSocket whose node address changed; stopped, it reads no Node any more."""
    world.api.addresses = {"sbc-1": {"ExternalIP": "203.0.113.1"}, "sbc-2": {"ExternalIP": "203.0.113.2"}}
    spec = {"protocol": "udp", "address": "0.0.0.0", "port": 5070, "advertised": {"fromNode": "ExternalIP"}}
    await world.rec.reconcile(world.body(spec))
    uid = "uid-carrier"
    wake = world.rec.waker(uid)
    wake.clear()
    look = SourceWatch(world.rec, period=0.05)
    look.start()
    try:
        world.api.addresses["sbc-2"] = {"ExternalIP": "198.51.100.2"}
        await asyncio.wait_for(wake.wait(), 30)
        assert world.rec.memo(uid).sources_changed
    finally:
        await look.stop()
    reads = world.api.node_reads
    await asyncio.sleep(0.5)  # ten periods
    assert world.api.node_reads == reads
