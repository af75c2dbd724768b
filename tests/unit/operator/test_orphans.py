"""Which rows belong to SipSockets that no longer exist."""

from __future__ import annotations

from sipoperator.orphans import orphaned, sweep_due
from sipoperator.snapshot import Known
from sipoperator.store import TableRow

SPEC = {"protocol": "udp", "address": "10.0.0.1"}


def row(row_id: int, uid: str | None, namespace: str = "voip", name: str = "s") -> TableRow:
    owner = (uid, namespace, name) if uid else (None, None, None)
    return TableRow(row_id, f"udp:10.0.0.1:{5060 + row_id}", None, None, None, None, *owner)


def known(*objs: tuple[str, str]) -> dict[str, Known]:
    return {uid: Known(uid, "voip", name, "", SPEC) for uid, name in objs}


def test_a_name_now_held_by_another_object_makes_the_old_row_an_orphan_at_once() -> None:
    rows = [row(1, "uid-old", name="s"), row(2, "uid-other", name="gone")]
    assert orphaned(rows, known(("uid-new", "s")), "voip", sweep=False) == [rows[0]]


def test_unknown_owners_are_collected_only_by_a_sweep() -> None:
    rows = [row(1, "uid-gone", name="gone")]
    assert orphaned(rows, known(), "voip", sweep=False) == []
    assert orphaned(rows, known(), "voip", sweep=True) == rows


def test_known_owners_rows_by_hand_and_other_namespaces_are_never_orphans() -> None:
    rows = [row(1, "uid-a", name="a"), row(2, None), row(3, "uid-x", namespace="elsewhere", name="a")]
    assert orphaned(rows, known(("uid-a", "a")), "voip", sweep=True) == []


def test_sweeps_wait_for_one_resync_period_of_uptime_then_come_once_per_period() -> None:
    started = 1000.0
    assert not sweep_due(started + 59, started, started, 60)  # the watch may not have listed everything
    assert sweep_due(started + 60, started, started, 60)
    assert not sweep_due(started + 100, started, started + 60, 60)
    assert sweep_due(started + 120, started, started + 60, 60)
