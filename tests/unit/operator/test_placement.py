"""Sockets that live on some nodes, the operator's decisions: spec.freebind and spec.nodeSelector, which pods
serve a socket, Ready when the address is on some nodes only, the listing of absent and unselected sockets,
when such a pod needs a reload, and the placement written next to the row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sipoperator import conditions as cond
from sipoperator.drift import needs_reload
from sipoperator.placement import EVERYWHERE, Placement, SocketOptions, matches, place
from sipoperator.proxies import Seen, parse_listing
from sipoperator.spec import SpecError, validate
from sipoperator.store import Store

UDP = {"protocol": "udp", "address": "10.0.5.20"}


def ready(*pods: cond.PodResult) -> tuple[str, str, str]:
    outcome = cond.Outcome(True, programmed=True, pods=pods)
    [c] = [c for c in cond.conditions(outcome) if c.type == cond.READY]
    return c.status, c.reason, c.message


def pod(name: str, state: str, error: str = "", **extra: Any) -> cond.PodResult:
    return cond.PodResult(name, reachable=True, state=state, error=error, **extra)


# -- the spec ---------------------------------------------------------------------------------------------


def test_freebind_and_node_selector_are_validated_and_kept() -> None:
    wanted = validate({**UDP, "freebind": True, "nodeSelector": {"sbc.example.com/vlan": "205", "zone": "a"}})
    assert wanted.freebind and wanted.parsed.freebind
    assert wanted.node_selector == (("sbc.example.com/vlan", "205"), ("zone", "a"))
    # The row OpenSIPS reads does not change: free bind and nodes live in the side table.
    assert wanted.row == validate(UDP).row
    plain = validate(UDP)
    assert (plain.freebind, plain.node_selector) == (False, None)
    assert validate({**UDP, "freebind": None, "nodeSelector": None}).node_selector is None


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"freebind": "yes"}, "freebind", "must be true or false"),
        ({"nodeSelector": ["zone=a"]}, "nodeSelector", "must be a map"),
        ({"nodeSelector": {"zone a": "x"}}, "nodeSelector['zone a']", "is not a label name"),
        (
            {"nodeSelector": {"Example.com/zone": "x"}},
            "nodeSelector['Example.com/zone']",
            "is not a label name",
        ),
        ({"nodeSelector": {"zone": "a b"}}, "nodeSelector['zone']", "is not a label value"),
        ({"nodeSelector": {"zone": 5}}, "nodeSelector['zone']", "is not a label value"),
        ({"nodeSelector": {f"k{i}": "v" for i in range(17)}}, "nodeSelector", "at most 16 labels"),
    ],
)
def test_a_bad_freebind_or_node_selector_names_the_field(
    spec: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(SpecError, match=message) as refused:
        validate({**UDP, **spec})
    assert refused.value.field == field


# -- which pods serve it ----------------------------------------------------------------------------------


def test_a_selector_picks_the_nodes_with_every_label() -> None:
    assert matches((("zone", "a"), ("vlan", "205")), {"zone": "a", "vlan": "205", "other": "x"})
    assert not matches((("zone", "a"), ("vlan", "205")), {"zone": "a"})
    placed = place(
        (("vlan", "205"),),
        {
            "sbc-1": {"vlan": "205"},
            "sbc-2": {"vlan": "206"},
            "sbc-3": "cannot read Node sbc-3: 403 Forbidden",
        },
    )
    assert placed.nodes == frozenset({"sbc-1"}) and dict(placed.unknown) == {
        "sbc-3": "cannot read Node sbc-3: 403 Forbidden"
    }
    assert placed.selects("sbc-1") and not placed.selects("sbc-2") and not placed.selects(None)
    assert placed.options(freebind=True) == SocketOptions(True, "sbc-1")
    assert place(None, {"sbc-1": {}}) is EVERYWHERE
    assert EVERYWHERE.selects(None) and EVERYWHERE.options(False) == SocketOptions()
    assert SocketOptions().default and not SocketOptions(nodes=",").default
    # Nothing matches: placed on no node at all (every proxy lists it unselected).
    assert Placement(frozenset()).options(False) == SocketOptions(False, ",")


# -- Ready ------------------------------------------------------------------------------------------------


def test_ready_when_listening_where_the_address_is_and_absent_elsewhere() -> None:
    status, reason, message = ready(
        pod("proxy-a", cond.LISTENING), pod("proxy-b", cond.ABSENT, "address 10.0.5.20 is not on this host")
    )
    assert (status, reason) == ("True", "Listening")
    assert message == "listening on 1/2 proxy pods; the address is not on the node of proxy-b"


def test_absent_everywhere_is_not_ready_and_says_what_to_do() -> None:
    status, reason, message = ready(pod("proxy-a", cond.ABSENT), pod("proxy-b", cond.ABSENT))
    assert (status, reason) == ("False", "AddressAbsent")
    assert "none of the 2 proxy pods (proxy-a, proxy-b)" in message and "spec.freebind" in message


def test_absent_does_not_hide_a_failure_or_a_pending_pod() -> None:
    failed = pod("proxy-c", cond.FAILED, "[Errno 98] Address already in use")
    assert (
        ready(pod("proxy-a", cond.LISTENING), pod("proxy-b", cond.ABSENT), failed)[1] == "PartiallyListening"
    )
    assert ready(pod("proxy-b", cond.ABSENT), failed)[1] == "BindFailed"
    assert (
        ready(pod("proxy-a", cond.LISTENING), pod("proxy-b", cond.ABSENT), pod("proxy-c", cond.PENDING))[1]
        == "Pending"
    )
    unreachable = cond.PodResult("proxy-c", reachable=False, error="timeout")
    assert (
        ready(pod("proxy-a", cond.LISTENING), pod("proxy-b", cond.ABSENT), unreachable)[1]
        == "ProxyUnreachable"
    )


def test_pods_the_selector_leaves_out_do_not_count() -> None:
    out = pod("proxy-c", cond.NOT_SELECTED, "node sbc-3 is not selected", selected=False)
    status, reason, message = ready(pod("proxy-a", cond.LISTENING), out)
    assert (status, reason) == ("True", "Listening")
    assert message == "listening on 1/1 proxy pods; 1 pods are on nodes spec.nodeSelector does not select"
    # Even a pod left out that cannot be reached does not matter.
    gone = cond.PodResult("proxy-d", reachable=False, error="timeout", selected=False)
    assert ready(pod("proxy-a", cond.LISTENING), gone)[:2] == ("True", "Listening")
    status, reason, message = ready(out)
    assert (status, reason) == ("False", "NoSelectedNodes")
    assert message == "none of the 1 ready proxy pods runs on a node spec.nodeSelector selects"


def test_listeners_show_the_node_where_the_address_is_and_where_traffic_arrives() -> None:
    pods = [
        pod("proxy-a", cond.LISTENING, node="sbc-1", address_local=True, receiving=True),
        pod("proxy-b", cond.LISTENING, node="sbc-2", address_local=False, receiving=False),
        pod("proxy-c", cond.ABSENT, "address 10.0.5.20 is not on this host", node="sbc-3"),
        pod("proxy-d", cond.NOT_SELECTED, "", node="sbc-4", selected=False),
        cond.PodResult("proxy-e", reachable=False, error="timeout", node="sbc-5", address_local=True),
    ]
    assert cond.listeners(pods) == [
        {"pod": "proxy-a", "state": "Listening", "message": "listening", "node": "sbc-1",
         "addressOnNode": True, "receiving": True},
        {"pod": "proxy-b", "state": "Listening", "message": "listening", "node": "sbc-2",
         "addressOnNode": False, "receiving": False},
        {"pod": "proxy-c", "state": "Absent", "message": "address 10.0.5.20 is not on this host",
         "node": "sbc-3"},
        {"pod": "proxy-d", "state": "NotSelected", "message": "not on a node spec.nodeSelector selects",
         "node": "sbc-4"},
        {"pod": "proxy-e", "state": "Failed", "message": "proxy unreachable: timeout", "node": "sbc-5"},
    ]  # fmt: skip
    assert cond.listening_count(pods) == "2/5"


# -- the listing and drift --------------------------------------------------------------------------------


def test_absent_and_unselected_sockets_are_read_with_what_the_proxy_says_of_them() -> None:
    listed = parse_listing(
        [
            {"socket": "udp:10.0.5.20:5060", "state": "absent", "error": "not on this host"},
            {"socket": "udp:10.0.5.21:5060", "state": "unselected", "error": "placed on other nodes"},
            {"socket": "udp:10.0.5.22:5060", "state": "listening", "freebind": True, "address_local": False,
             "received": 0, "receiving": False},
            {"socket": "udp:10.0.5.23:5060", "state": "listening", "address_local": True, "received": 9,
             "receiving": True},
        ]
    )  # fmt: skip
    a, b, c, d = (validate({**UDP, "address": f"10.0.5.{n}"}) for n in (20, 21, 22, 23))
    assert listed.state_of(a.socket, a.key) == (cond.ABSENT, "not on this host")
    assert listed.state_of(b.socket, b.key) == (cond.NOT_SELECTED, "placed on other nodes")
    assert listed.seen_of(a.socket, a.key) == Seen()
    assert listed.seen_of(c.socket, c.key) == Seen(address_local=False, receiving=False)
    assert listed.seen_of(d.socket, d.key) == Seen(address_local=True, receiving=True)
    # OpenSIPS says nothing of either.
    opensips = parse_listing([{"socket": "udp:10.0.5.23:5060"}])
    assert opensips.seen_of(d.socket, d.key) == Seen()


def test_an_absent_socket_needs_no_reload_but_a_pod_with_an_old_placement_does() -> None:
    wanted = validate(UDP)
    table = frozenset({wanted.socket})

    def listing(state: str) -> Any:
        return parse_listing([{"socket": wanted.socket, "state": state}])

    assert not needs_reload(listing("absent"), wanted, table, reloaded=False)
    assert needs_reload(listing("failed"), wanted, table, reloaded=False)
    # Selected, but the proxy still has the old node list (or the other way round).
    assert needs_reload(listing("unselected"), wanted, table, reloaded=False, selected=True)
    assert not needs_reload(listing("unselected"), wanted, table, reloaded=False, selected=False)
    assert needs_reload(listing("listening"), wanted, table, reloaded=False, selected=False)
    # OpenSIPS serves every row everywhere: a pod left out listening is as good as it gets.
    opensips = parse_listing([{"socket": wanted.socket}])
    assert not needs_reload(opensips, wanted, table, reloaded=False, selected=False)


# -- the side table ---------------------------------------------------------------------------------------


async def test_the_placement_is_written_with_the_row_and_only_when_needed(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    row = validate(UDP).row
    try:
        plain = await store.write("uid-1", "voip", "a", 1, row)
        [entry] = await store.snapshot()
        assert entry.options == SocketOptions() and plain.changed

        placed = await store.write("uid-1", "voip", "a", 2, row, options=SocketOptions(True, "sbc-1,sbc-2"))
        assert placed.changed and placed.row_id == plain.row_id
        [entry] = await store.snapshot()
        assert (entry.freebind, entry.nodes) == (True, "sbc-1,sbc-2")
        assert not (
            await store.write("uid-1", "voip", "a", 2, row, options=SocketOptions(True, "sbc-1,sbc-2"))
        ).changed

        # Back to every node without free bind: the side table's entry goes.
        assert (await store.write("uid-1", "voip", "a", 3, row)).changed
        [entry] = await store.snapshot()
        assert entry.options == SocketOptions()
        await store.write("uid-1", "voip", "a", 4, row, options=SocketOptions(False, ","))
        assert await store.remove("uid-1")
        assert await store.snapshot() == []
        async with store.engine.connect() as conn:
            assert (await conn.execute(store.options.select())).fetchall() == []
    finally:
        await store.close()
