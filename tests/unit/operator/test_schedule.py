"""When each SipSocket is due for another pass: resync, backoff after failures, wake-ups."""

from __future__ import annotations

from sipoperator.conditions import Condition
from sipoperator.schedule import (
    Memo,
    backoff,
    due,
    finished,
    seconds_until_due,
    started,
    woken_by_table_change,
)

RESYNC = 60.0


def ready() -> list[Condition]:
    return [
        Condition("Accepted", "True", "Accepted", ""),
        Condition("Programmed", "True", "Programmed", ""),
        Condition("Ready", "True", "Listening", ""),
    ]


def refused(reason: str) -> list[Condition]:
    return [Condition(t, "False", reason, "") for t in ("Accepted", "Programmed", "Ready")]


def not_ready(reason: str = "ProxyUnreachable") -> list[Condition]:
    return [*ready()[:2], Condition("Ready", "False", reason, "")]


def after(conditions: list[Condition], now: float = 100.0, fleet: int = 0, table: int = 0) -> Memo:
    memo = Memo()
    started(memo, now, fleet, table)
    finished(memo, now, conditions)
    return memo


def test_never_reconciled_here_waits_for_the_keepers_first_pass() -> None:
    memo = Memo()
    assert not due(memo, 1e6, RESYNC, 0, 0, running=False)
    assert seconds_until_due(memo, 0.0, RESYNC) == RESYNC


def test_a_ready_object_is_due_after_the_resync_period() -> None:
    memo = after(ready())
    assert not due(memo, 159.0, RESYNC, 0, 0, running=False)
    assert due(memo, 160.0, RESYNC, 0, 0, running=False)
    assert seconds_until_due(memo, 130.0, RESYNC) == 30.0


def test_failures_back_off_2_4_8_16_then_30_seconds() -> None:
    assert [backoff(n) for n in range(1, 8)] == [2, 4, 8, 16, 30, 30, 30]
    memo = after(not_ready())
    assert memo.failures == 1 and not memo.healthy
    assert not due(memo, 101.0, RESYNC, 0, 0, running=False)
    assert due(memo, 102.0, RESYNC, 0, 0, running=False)
    finished(memo, 102.0, not_ready())
    assert seconds_until_due(memo, 102.0, RESYNC) == 4.0
    finished(memo, 106.0, ready())
    assert memo.failures == 0 and seconds_until_due(memo, 106.0, RESYNC) == RESYNC


def test_backoff_never_sleeps_longer_than_the_resync_period() -> None:
    memo = after(not_ready())
    memo.failures = 10
    assert seconds_until_due(memo, 100.0, 10.0) == 10.0


def test_a_fleet_change_wakes_every_object() -> None:
    memo = after(ready(), fleet=3)
    assert due(memo, 101.0, RESYNC, 4, 0, running=False)


def test_a_table_change_wakes_only_objects_waiting_for_an_endpoint_or_a_slot() -> None:
    for reason, waits in (("EndpointConflict", True), ("CapacityExceeded", True), ("InvalidSpec", False)):
        memo = after(refused(reason), table=5)
        assert woken_by_table_change(memo) is waits
        assert due(memo, 100.5, RESYNC, 0, 6, running=False) is waits
    assert not woken_by_table_change(after(ready()))
    assert not due(after(ready()), 100.5, RESYNC, 0, 6, running=False)


def test_never_while_a_pass_runs() -> None:
    memo = after(ready())
    assert not due(memo, 1e6, RESYNC, 9, 9, running=True)


def test_a_changed_secret_makes_a_ready_object_due_at_once_and_its_next_pass_clears_it() -> None:
    memo = Memo()
    started(memo, 100.0, 0, 0)
    finished(memo, 100.5, ready())
    assert not due(memo, 101.0, RESYNC, 0, 0, running=False)
    memo.refs_changed = True
    assert due(memo, 101.0, RESYNC, 0, 0, running=False)
    assert not due(memo, 101.0, RESYNC, 0, 0, running=True)  # the running pass reads no Secret twice
    started(memo, 101.0, 0, 0)
    finished(memo, 101.5, ready())
    assert not due(memo, 102.0, RESYNC, 0, 0, running=False)


def test_a_secret_change_during_a_pass_is_not_lost() -> None:
    memo = Memo()
    started(memo, 100.0, 0, 0)
    memo.refs_changed = True  # the watch saw a new version after this pass had read the Secret
    finished(memo, 100.5, ready())
    assert due(memo, 100.6, RESYNC, 0, 0, running=False)
