"""devenv/churn.py's plan and its converged check: the reliability tests and benchmark pass only when
`problems` finds nothing, so each way of losing, duplicating or orphaning a SipSocket must be found."""

from __future__ import annotations

import itertools
from typing import Any

from devenv.churn import Op, TableView, expected_after, plan, problems


def ips() -> Any:
    return (f"127.0.9.{i}" for i in itertools.count(1))


def test_plan_is_seeded_and_only_touches_live_objects() -> None:
    ops = plan(200, seed=7, addresses=ips())
    assert ops == plan(200, seed=7, addresses=ips())
    assert ops != plan(200, seed=8, addresses=ips())
    live: set[str] = set()
    kinds = set()
    for op in ops:
        kinds.add(op.kind)
        if op.kind == "create":
            assert op.name not in live
            live.add(op.name)
        else:
            assert op.name in live, op
            if op.kind == "delete":
                live.remove(op.name)
    assert kinds == {"create", "update", "delete"}
    assert set(expected_after(ops)) == live
    # Every object has an address of its own: none ever conflicts with another.
    creates = [op.address for op in ops if op.kind == "create"]
    assert len(set(creates)) == len(creates)


def obj(name: str, uid: str, socket: str, ready: str = "True", generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": uid, "generation": generation},
        "status": {
            "observedGeneration": 1,
            "socket": socket,
            "conditions": [{"type": "Ready", "status": ready, "reason": "Listening", "message": ""}],
        },
    }


A, B = "udp:127.0.9.1:5070", "udp:127.0.9.2:5070"


def converged() -> tuple[dict[str, Any], dict[str, str], TableView, dict[str, dict[str, str] | None]]:
    objects = {"a": obj("a", "u1", A), "b": obj("b", "u2", B)}
    expected = {"a": A, "b": B}
    table = TableView([(1, A, "u1"), (2, B, "u2")], [("u1", 1), ("u2", 2)])
    listings: dict[str, dict[str, str] | None] = {"p": {A: "listening", B: "listening"}}
    return objects, expected, table, listings


def test_nothing_to_say_when_converged() -> None:
    assert problems(*converged()) == []


def test_each_way_of_not_being_converged_is_found() -> None:
    objects, expected, table, listings = converged()
    cases: list[tuple[str, Any, Any, Any, Any]] = [
        ("missing from the API", {"a": objects["a"]}, expected, table, listings),
        ("still present", objects | {"c": obj("c", "u3", "udp:x:1")}, expected, table, listings),
        ("Ready=False", objects | {"a": obj("a", "u1", A, ready="False")}, expected, table, listings),
        ("not observed", objects | {"a": obj("a", "u1", A, generation=2)}, expected, table, listings),
        ("status.socket", objects, {"a": "udp:127.0.9.1:5071", "b": B}, table, listings),
        ("no row", objects, expected, TableView([(1, A, "u1")], [("u1", 1)]), listings),
        ("2 rows", objects, expected, TableView([*table.rows, (3, "udp:y:1", "u1")], table.owners), listings),
        (
            "no owner",
            objects,
            expected,
            TableView([*table.rows, (3, "udp:y:1", None)], table.owners),
            listings,
        ),
        ("orphan", objects, expected, TableView([*table.rows, (3, "udp:y:1", "u9")], table.owners), listings),
        ("does not exist", objects, expected, TableView(table.rows, [*table.owners, ("u9", 7)]), listings),
        ("could not be read", objects, expected, None, listings),
        ("not listed", objects, expected, table, {"p": {A: "listening"}}),
        ("not listening", objects, expected, table, {"p": {A: "listening", B: "partial"}}),
        ("MI not answering", objects, expected, table, {"p": None}),
    ]
    for what, o, e, t, listing in cases:
        found = problems(o, e, t, listing)
        assert any(what in p for p in found), (what, found)


def test_an_update_must_reach_the_row() -> None:
    op = Op("create", "a", "127.0.9.1", 5070)
    moved = Op("update", "a", "127.0.9.1", 5071)
    assert expected_after([op, moved]) == {"a": moved}
    objects = {"a": obj("a", "u1", moved.socket)}
    stale = TableView([(1, op.socket, "u1")], [("u1", 1)])
    assert any(
        "row udp:127.0.9.1:5070 instead of" in p for p in problems(objects, {"a": moved.socket}, stale, {})
    )
