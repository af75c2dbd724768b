"""The chain reconcile and the webhook share: spec -> endpoint conflict -> capacity, on one snapshot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sipoperator.checks import CAPACITY_EXCEEDED, ENDPOINT_CONFLICT, INVALID_SPEC, first_refusal
from sipoperator.snapshot import NEWCOMER_CREATED, Known, Snapshot, for_admission
from sipoperator.store import TableRow


def obj(name: str, address: str = "10.0.0.1", port: int = 5060, created: str = "2026-01-02T00:00:00Z",
        **spec: Any) -> Known:  # fmt: skip
    if address in ("0.0.0.0", "::"):  # a wildcard needs the address peers reach it on
        spec.setdefault("advertised", {"address": "203.0.113.10"})
    return Known(
        f"uid-{name}", "voip", name, created, {"protocol": "udp", "address": address, "port": port, **spec}
    )


def owned(row_id: int, known: Known) -> TableRow:
    assert known.wanted is not None
    return TableRow(
        row_id, known.wanted.socket, None, None, None, None, known.uid, known.namespace, known.name
    )


def by_hand(row_id: int, socket: str) -> TableRow:
    return TableRow(row_id, socket, None, None, None, None)


def snap(
    me: Known,
    rows: Sequence[TableRow] | None = (),
    others: Sequence[Known] = (),
    static: Sequence[tuple[str, str]] = (),
    capacity: int | None = None,
) -> Snapshot:
    known = {k.uid: k for k in (me, *others)}
    return Snapshot(me, rows, static, capacity, known, "sockets")


def test_a_free_valid_socket_passes() -> None:
    assert first_refusal(snap(obj("a"))) is None


def test_the_spec_is_judged_first_and_names_the_field() -> None:
    bad = Known("uid-x", "voip", "x", "", {"protocol": "udp", "address": "sbc.example.com"})
    refusal = first_refusal(snap(bad, capacity=0))
    assert refusal is not None and refusal.reason == INVALID_SPEC
    assert refusal.message.startswith("spec.address:")


def test_a_hand_made_row_holds_its_endpoint() -> None:
    refusal = first_refusal(snap(obj("a"), rows=[by_hand(7, "udp:10.0.0.1:5060")]))
    assert refusal is not None and refusal.reason == ENDPOINT_CONFLICT
    assert refusal.holder == "row 7 of table sockets (udp:10.0.0.1:5060, not managed by the operator)"


def test_a_static_wildcard_socket_of_the_fleet_holds_every_address_on_its_port() -> None:
    refusal = first_refusal(snap(obj("a"), static=[("proxy-0", "udp:0.0.0.0:5060")]))
    assert refusal is not None and refusal.reason == ENDPOINT_CONFLICT
    assert "static socket udp:0.0.0.0:5060 of proxy pod proxy-0" in refusal.message
    assert first_refusal(snap(obj("a"), static=[("proxy-0", "udp:[::]:5060")])) is None  # V6ONLY


def test_an_older_wildcard_object_holds_and_the_holder_is_named() -> None:
    wild = obj("wild", "0.0.0.0", created="2026-01-01T00:00:00Z")
    refusal = first_refusal(snap(obj("a"), others=[wild]))
    assert refusal is not None and refusal.reason == ENDPOINT_CONFLICT
    assert "SipSocket voip/wild" in refusal.message
    assert first_refusal(snap(wild, others=[obj("a")])) is None


def test_a_programmed_row_keeps_its_endpoint_against_an_older_object() -> None:
    old, young = obj("old", created="2026-01-01T00:00:00Z"), obj("young", created="2026-01-05T00:00:00Z")
    rows = [owned(1, young)]
    assert first_refusal(snap(young, rows, others=[old])) is None
    refusal = first_refusal(snap(old, rows, others=[young]))
    assert refusal is not None and "already programmed" in refusal.message


def test_objects_being_deleted_hold_nothing() -> None:
    leaving = obj("leaving", created="2026-01-01T00:00:00Z")
    leaving.deleting = True
    assert first_refusal(snap(obj("a"), others=[leaving])) is None


def test_capacity_counts_distinct_rows_and_spares_an_object_that_has_its_row() -> None:
    a, b = obj("a", port=5070), obj("b", port=5071)
    full = [owned(1, a)]
    refusal = first_refusal(snap(b, full, capacity=1))
    assert refusal is not None and refusal.reason == CAPACITY_EXCEEDED
    assert "max_sockets=1" in refusal.message
    assert first_refusal(snap(a, full, capacity=1)) is None
    assert first_refusal(snap(b, full, capacity=None)) is None  # OpenSIPS: not enforced


def test_a_conflict_is_reported_before_capacity() -> None:
    rows = [by_hand(1, "udp:10.0.0.1:5060")]
    refusal = first_refusal(snap(obj("a"), rows, capacity=1))
    assert refusal is not None and refusal.reason == ENDPOINT_CONFLICT


def test_without_the_table_only_the_spec_is_judged() -> None:
    wild = obj("wild", "0.0.0.0", created="2026-01-01T00:00:00Z")
    assert first_refusal(snap(obj("a"), rows=None, others=[wild], capacity=0)) is None
    bad = Known("uid-x", "voip", "x", "", {"protocol": "udp"})
    refusal = first_refusal(snap(bad, rows=None))
    assert refusal is not None and refusal.reason == INVALID_SPEC


def test_admission_judges_a_newcomer_after_everything_that_exists() -> None:
    """The webhook's object ranks last; its own row and its own watched (old) spec are not in the way."""
    existing = obj("first", created="2026-01-05T00:00:00Z")
    newcomer = Known("new:voip/second", "voip", "second", NEWCOMER_CREATED, existing.spec)
    admission = for_admission(newcomer, [], [], None, {existing.uid: existing}, "sockets")
    refusal = first_refusal(admission)
    assert refusal is not None and refusal.holder == "SipSocket voip/first"

    # An update of "first" itself (same name): its row and its old state are left out.
    moved = Known(existing.uid, "voip", "first", NEWCOMER_CREATED, {**existing.spec, "port": 5062})
    admission = for_admission(moved, [owned(1, existing)], [], 1, {existing.uid: existing}, "sockets")
    assert first_refusal(admission) is None
