"""A proxy pod's own MI port (annotation sipsockets.io/mi-port) wins over --mi-port: during a rolling
change of the MI port old and new pods answer on different ports; hostNetwork pods on one node share an
address."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from aiohttp import web

from sipoperator.metrics import Metrics
from sipoperator.proxies import MI_PORT_ANNOTATION, Fleet, mi_port_of
from sipoperator.settings import Settings
from tests.unit.chart.rendering import rendered


def _fleet(mi_port: int = 8888) -> Fleet:
    return Fleet(Settings(namespace="voip", db_url="sqlite:///x.db", mi_port=mi_port), Metrics())


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        (None, (None, "")),
        ({}, (None, "")),
        ({"other": "1"}, (None, "")),
        ({MI_PORT_ANNOTATION: "9001"}, (9001, "")),
        ({MI_PORT_ANNOTATION: " 9001 "}, (9001, "")),
        ({MI_PORT_ANNOTATION: "1"}, (1, "")),
        ({MI_PORT_ANNOTATION: "65535"}, (65535, "")),
    ],
)
def test_annotation_read(annotations: dict[str, str] | None, expected: tuple[int | None, str]) -> None:
    assert mi_port_of(annotations) == expected


@pytest.mark.parametrize("raw", ["", "0", "65536", "-1", "http", "80a", "8.8"])
def test_annotation_that_is_no_port_is_named_and_ignored(raw: str) -> None:
    port, problem = mi_port_of({MI_PORT_ANNOTATION: raw})
    assert port is None
    assert MI_PORT_ANNOTATION in problem and repr(raw) in problem


def test_url_uses_the_pods_port_else_the_setting() -> None:
    fleet = _fleet(8888)
    fleet.observe("a", "uid-a", "10.0.0.1", True, 9001)
    fleet.observe("b", "uid-b", "10.0.0.1", True)
    fleet.observe("c", "uid-c", "2001:db8::1", True, 9002)
    a, b, c = fleet.ready()
    assert fleet.client.url(a.ip, a.mi_port) == "http://10.0.0.1:9001/mi"
    assert fleet.client.url(b.ip, b.mi_port) == "http://10.0.0.1:8888/mi"
    assert fleet.client.url(c.ip, c.mi_port) == "http://[2001:db8::1]:9002/mi"


def test_a_pod_whose_mi_port_changes_is_a_new_entry() -> None:
    fleet = _fleet()
    fleet.observe("a", "uid-a", "10.0.0.1", True, 9001)
    first = fleet.pods["a"]
    first.static = ["udp:10.0.0.1:5060"]  # what discovery learnt from the process behind the old port
    epoch = fleet.epoch
    fleet.observe("a", "uid-a", "10.0.0.1", True, 9001)
    assert fleet.pods["a"] is first and fleet.epoch == epoch  # nothing new
    fleet.observe("a", "uid-a", "10.0.0.1", True, 9002)
    assert fleet.pods["a"] is not first
    assert fleet.pods["a"].mi_port == 9002 and fleet.pods["a"].static is None
    assert fleet.epoch == epoch + 1
    fleet.observe("a", "uid-a", "10.0.0.1", True)  # annotation removed: back to --mi-port
    assert fleet.pods["a"].mi_port is None and fleet.epoch == epoch + 2


async def test_calls_reach_each_pod_on_its_own_port(unused_tcp_port_factory: Any) -> None:
    """Two MI servers on one address (hostNetwork pods of one node): each pod is asked on its own port."""
    calls: dict[int, list[str]] = {}
    runners = []
    ports = [unused_tcp_port_factory(), unused_tcp_port_factory()]
    for port in ports:

        async def handle(request: web.Request, port: int = port) -> web.Response:
            body = await request.json()
            calls.setdefault(port, []).append(body["method"])
            return web.Response(text=json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": []}))

        app = web.Application()
        app.router.add_post("/mi", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    fleet = _fleet(mi_port=1)  # --mi-port names nothing that listens: only the annotations can work
    try:
        fleet.observe("a", "uid-a", "127.0.0.1", True, ports[0])
        fleet.observe("b", "uid-b", "127.0.0.1", True, ports[1])
        assert await fleet.reload_all() == {}
        assert (await fleet.pods["b"].listing()).entries == {}
        assert calls == {ports[0]: ["sockets_reload"], ports[1]: ["sockets_reload", "sockets_list"]}
    finally:
        await fleet.client.close()
        for runner in runners:
            await runner.cleanup()


@pytest.mark.parametrize(
    ("values", "port"),
    [
        ({}, 8888),
        ({"mi": {"port": 9000}}, 9000),
        (
            {
                "mi": {"port": 9001},
                "proxy": {"mode": "hostNetwork"},
                "networkPolicy": {"database": {"nodeCIDRs": ["10.0.0.0/24"]}},
            },
            9001,
        ),
    ],
)
def test_the_chart_names_its_mi_port_on_every_proxy_pod(values: dict[str, Any], port: int) -> None:
    """The contract between the chart and the operator: the annotation the operator reads is the port the
    chart's proxy config listens on."""
    r = rendered(values)
    proxy = next(w for w in r.workloads() if w["metadata"]["name"].endswith("-proxy"))
    annotations = proxy["spec"]["template"]["metadata"]["annotations"]
    assert mi_port_of(annotations) == (port, "")
    config = yaml.safe_load(r.one("ConfigMap", "-proxy")["data"]["proxy.yaml"])
    assert config["mi"]["listen"].rpartition(":")[2] == str(port)
    [container] = [c for c in proxy["spec"]["template"]["spec"]["containers"] if c["name"] == "proxy"]
    # hostNetwork pods with handover declare no ports (a hostPort would keep the surge pod Pending).
    if values.get("proxy", {}).get("mode") != "hostNetwork":
        assert {"name": "mi", "containerPort": port, "protocol": "TCP"} in container["ports"]
