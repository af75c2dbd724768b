"""Who may take the Lease, and how long its holder may still write (pure): the fencing arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sipoperator import lease
from sipoperator.lease import LeaseRecord, Observed, Timing

T = Timing(lease_duration=15, renew_deadline=10, retry_period=2)
NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def record(
    holder: str = "a", renew: str = "r1", duration: float | None = 15, transitions: int = 0
) -> LeaseRecord:
    return LeaseRecord(holder, duration, "t0", renew, transitions, resource_version="7")


def test_a_record_is_read_from_the_lease_body() -> None:
    body = {
        "metadata": {"name": "sipsockets-operator", "resourceVersion": "42"},
        "spec": {
            "holderIdentity": "op-0_ab12",
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-03-01T11:00:00.000000Z",
            "renewTime": "2026-03-01T12:00:00.000000Z",
            "leaseTransitions": 3,
        },
    }
    r = LeaseRecord.from_body(body)
    assert (r.holder, r.duration, r.transitions, r.resource_version) == ("op-0_ab12", 15.0, 3, "42")
    empty = LeaseRecord.from_body({"metadata": {"resourceVersion": "1"}, "spec": {}})
    assert (empty.holder, empty.duration, empty.transitions) == ("", None, 0)


def test_the_duration_runs_from_when_the_record_was_first_seen_changed() -> None:
    first = lease.observe(None, record(renew="r1"), now=100.0)
    same = lease.observe(first, record(renew="r1"), now=110.0)
    assert same.at == 100.0  # unchanged: the clock keeps running
    renewed = lease.observe(same, record(renew="r2"), now=111.0)
    assert renewed.at == 111.0  # renewed: starts again
    other = lease.observe(renewed, record(holder="b", renew="r2"), now=112.0)
    assert other.at == 112.0  # any field counts, not only renewTime


def test_someone_elses_lease_is_taken_only_after_a_whole_duration_without_change() -> None:
    seen = Observed(record(holder="a"), at=100.0)
    assert not lease.may_acquire(seen, 100.0, "b", T.lease_duration)
    assert not lease.may_acquire(seen, 114.999, "b", T.lease_duration)
    assert lease.may_acquire(seen, 115.0, "b", T.lease_duration)


def test_the_holders_promised_duration_counts_ours_only_when_it_has_none() -> None:
    longer = Observed(record(holder="a", duration=60), at=100.0)
    assert not lease.may_acquire(longer, 130.0, "b", T.lease_duration)
    assert lease.may_acquire(longer, 160.0, "b", T.lease_duration)
    unknown = Observed(record(holder="a", duration=None), at=100.0)
    assert lease.may_acquire(unknown, 115.0, "b", T.lease_duration)


def test_a_released_lease_or_our_own_is_taken_at_once() -> None:
    assert lease.may_acquire(Observed(record(holder=""), at=100.0), 100.0, "b", T.lease_duration)
    assert lease.may_acquire(Observed(record(holder="b"), at=100.0), 100.0, "b", T.lease_duration)


def test_the_leader_stops_writing_at_the_renew_deadline() -> None:
    assert lease.still_leading(100.0, 109.9, T.renew_deadline)
    assert not lease.still_leading(100.0, 110.0, T.renew_deadline)
    assert not lease.still_leading(None, 100.0, T.renew_deadline)


def test_a_write_must_end_before_a_candidate_can_take_over() -> None:
    """Renew sent at 100: writes start until 110 and are cut at 115, the earliest a candidate that saw that
    renew land (at 100 or later) can take the Lease."""
    assert lease.write_budget(100.0, 101.0, T) == pytest.approx(14.0)
    assert lease.write_budget(100.0, 109.5, T) == pytest.approx(5.5)
    assert lease.write_budget(100.0, 110.0, T) is None
    assert lease.write_budget(None, 100.0, T) is None
    # The arithmetic: the last write started before renew + D ends before renew + L <= any takeover.
    for started in (100.0, 105.0, 109.99):
        budget = lease.write_budget(100.0, started, T)
        assert budget is not None
        candidate_sees_renew_at = 100.0  # at the earliest
        takeover = lease.expires_at(Observed(record(), candidate_sees_renew_at), T.lease_duration)
        assert started + budget <= takeover


def test_a_candidate_looks_again_when_the_record_expires_not_a_retry_later() -> None:
    seen = Observed(record(holder="a"), at=100.0)
    assert lease.candidate_sleep(seen, 101.0, T, jitter=1.1) == pytest.approx(2.2)
    assert lease.candidate_sleep(seen, 114.5, T, jitter=1.1) == pytest.approx(0.5)
    assert lease.candidate_sleep(seen, 120.0, T, jitter=1.1) == 0.0
    assert lease.candidate_sleep(None, 0.0, T, jitter=1.0) == 2.0
    assert lease.candidate_sleep(Observed(record(holder=""), at=100.0), 114.5, T, jitter=1.0) == 2.0


def test_taking_over_from_another_holder_counts_a_transition() -> None:
    taken = lease.acquired_spec(record(holder="a", transitions=2), "b", NOW, 15)
    assert taken == {
        "holderIdentity": "b",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-03-01T12:00:00.123456Z",
        "renewTime": "2026-03-01T12:00:00.123456Z",
        "leaseTransitions": 3,
    }
    assert lease.acquired_spec(None, "b", NOW, 15)["leaseTransitions"] == 0
    assert lease.acquired_spec(record(holder="", transitions=2), "b", NOW, 15)["leaseTransitions"] == 2


def test_a_renew_moves_only_the_renew_time() -> None:
    renewed = lease.renewed_spec(record(holder="b", transitions=3), "b", NOW, 15.5)
    assert renewed["acquireTime"] == "t0"
    assert renewed["renewTime"] == "2026-03-01T12:00:00.123456Z"
    assert (renewed["leaseTransitions"], renewed["leaseDurationSeconds"]) == (
        3,
        16,
    )  # whole seconds, rounded up


def test_a_release_leaves_no_holder() -> None:
    released = lease.released_spec(record(holder="b", transitions=3), NOW)
    assert (released["holderIdentity"], released["leaseDurationSeconds"], released["leaseTransitions"]) == (
        "",
        1,
        3,
    )


@pytest.mark.parametrize(
    ("timing", "problem"),
    [
        (Timing(15, 10, 2), None),
        (Timing(10, 10, 2), "must be longer than the renew deadline"),
        (Timing(15, 2.4, 2), "1.2 times the retry period"),
    ],
)
def test_timings_that_cannot_fence_are_refused(timing: Timing, problem: str | None) -> None:
    found = lease.timing_problem(timing)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_unfenced_writes_have_no_limit() -> None:
    assert lease.UNFENCED.budget() == float("inf")
