"""spec.advertised from the platform, the operator's decisions: the spec (fromService, fromNode), the address
of a Service's load balancer and of each node, what is written for the proxies, and Ready while the address is
not known."""

from __future__ import annotations

from typing import Any

import pytest

from sipoperator import conditions as cond
from sipoperator.advertised import Resolved, from_nodes, from_service, node_address, service_address
from sipoperator.proxies import Seen, parse_listing
from sipoperator.spec import AdvertisedFrom, SpecError, validate

UDP = {"protocol": "udp", "address": "10.0.5.20", "port": 5070}


def lb(*ingress: dict[str, str]) -> dict[str, Any]:
    return {"kind": "Service", "status": {"loadBalancer": {"ingress": list(ingress)}}}


def node(*addresses: tuple[str, str]) -> dict[str, Any]:
    return {"kind": "Node", "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}}


def test_the_spec_takes_one_source_and_leaves_the_column_to_reconcile() -> None:
    wanted = validate({**UDP, "advertised": {"fromService": "sip-lb"}})
    assert wanted.advertised_from == AdvertisedFrom(5070, service="sip-lb")
    assert wanted.row.advertised is None
    assert wanted.with_advertised("203.0.113.7:5070").row.advertised == "203.0.113.7:5070"
    wanted = validate({**UDP, "advertised": {"fromNode": "ExternalIP", "port": 5999}})
    assert wanted.advertised_from == AdvertisedFrom(5999, node_address="ExternalIP")
    # A wildcard socket needs an advertised address: a source is one.
    assert validate({**UDP, "address": "0.0.0.0", "advertised": {"fromNode": "InternalIP"}}).advertised_from
    assert validate({**UDP, "advertised": {"address": "sbc.example.com"}}).advertised_from is None


@pytest.mark.parametrize(
    ("advertised", "field", "message"),
    [
        ({"address": "sbc.example.com", "fromService": "lb"}, "advertised", "takes one of"),
        ({"fromService": "Not_A_Name"}, "advertised.fromService", "is not a Service name"),
        ({"fromNode": "Hostname"}, "advertised.fromNode", "must be one of ExternalIP, InternalIP"),
        ({"port": 5060}, "advertised.address", "is required (or fromService or fromNode)"),
    ],
)
def test_a_bad_source_names_the_field(advertised: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(SpecError) as refused:
        validate({**UDP, "advertised": advertised})
    assert refused.value.field == field and message in str(refused.value)


def test_a_services_address_is_its_first_ingress_ip_else_host_name() -> None:
    assert service_address(lb({"ip": "203.0.113.7"}, {"ip": "203.0.113.8"})) == "203.0.113.7"
    assert service_address(lb({"hostname": "abc.elb.example.com"})) == "abc.elb.example.com"
    assert service_address(lb()) is None and service_address({"kind": "Service"}) is None
    source = AdvertisedFrom(5070, service="sip-lb")
    assert from_service(source, lb({"ip": "2001:db8::7"})) == Resolved(
        column="[2001:db8::7]:5070", shown="[2001:db8::7]:5070"
    )
    assert from_service(source, lb()).pending == "Service sip-lb has no load-balancer ingress address yet"
    assert from_service(source, "Service sip-lb does not exist") == Resolved(
        pending="Service sip-lb does not exist"
    )


def test_each_node_advertises_its_own_address_of_the_type() -> None:
    source = AdvertisedFrom(5060, node_address="ExternalIP")
    assert node_address(node(("InternalIP", "10.0.0.1"), ("ExternalIP", "203.0.113.1")), "ExternalIP") == (
        "203.0.113.1"
    )
    resolved = from_nodes(
        source,
        {
            "sbc-1": node(("ExternalIP", "203.0.113.1")),
            "sbc-2": node(("ExternalIP", "2001:db8::2")),
            "sbc-3": node(("InternalIP", "10.0.0.3")),
            "sbc-4": "cannot read Node sbc-4: 403 Forbidden",
        },
    )
    assert resolved.column is None  # one value per row for OpenSIPS: none fits every node
    assert resolved.per_node == "sbc-1=203.0.113.1:5060,sbc-2=[2001:db8::2]:5060"
    assert resolved.pending == "Node sbc-3 has no ExternalIP; cannot read Node sbc-4: 403 Forbidden"
    assert resolved.shown == "ExternalIP of each node, port 5060"
    assert from_nodes(source, {}).pending == "no ready proxy pod runs on a known node yet"


def test_not_ready_while_the_address_is_pending_but_programmed() -> None:
    pods = (cond.PodResult("proxy-a", reachable=True, state=cond.LISTENING),)
    outcome = cond.Outcome(True, programmed=True, pods=pods, advertised_pending="Service sip-lb has no ...")
    by_type = {c.type: c for c in cond.conditions(outcome)}
    assert (by_type["Programmed"].status, by_type["Ready"].status) == ("True", "False")
    assert by_type["Ready"].reason == "AdvertisedAddressPending"
    assert by_type["Ready"].message == "Service sip-lb has no ...; listening on 1/1 proxy pods"


def test_each_pod_shows_what_it_advertises() -> None:
    listed = parse_listing(
        [{"socket": "udp:10.0.5.20:5070", "state": "listening", "advertised": "203.0.113.1:5070"}]
    )
    wanted = validate(UDP)
    assert listed.seen_of(wanted.socket, wanted.key) == Seen(advertised="203.0.113.1:5070")
    pod = cond.PodResult(
        "proxy-a", reachable=True, state=cond.LISTENING, node="sbc-1", advertised="203.0.113.1:5070"
    )
    assert cond.listeners([pod]) == [
        {
            "pod": "proxy-a",
            "state": "Listening",
            "message": "listening",
            "node": "sbc-1",
            "advertised": "203.0.113.1:5070",
        }
    ]
