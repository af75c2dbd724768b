"""Conditions and listeners from reconcile results."""

from __future__ import annotations

from sipoperator.conditions import (
    FAILED,
    LISTENING,
    PARTIAL,
    PENDING,
    Condition,
    Outcome,
    PodResult,
    conditions,
    listeners,
    listening_count,
    merge,
)


def by_type(conds: list[Condition]) -> dict[str, Condition]:
    return {c.type: c for c in conds}


def programmed(*pods: PodResult) -> dict[str, Condition]:
    return by_type(conditions(Outcome(True, programmed=True, pods=pods)))


def test_ready_when_every_pod_listens() -> None:
    got = programmed(PodResult("p0", True, LISTENING), PodResult("p1", True, LISTENING))
    assert (got["Accepted"].status, got["Programmed"].status, got["Ready"].status) == ("True", "True", "True")
    assert "2/2" in got["Ready"].message


def test_one_pod_failing_to_bind_is_partially_listening_naming_it() -> None:
    got = programmed(
        PodResult("p0", True, LISTENING), PodResult("p1", True, FAILED, "Address already in use")
    )
    assert got["Ready"].status == "False"
    assert got["Ready"].reason == "PartiallyListening"
    assert "p1: Address already in use" in got["Ready"].message


def test_a_pod_with_a_worker_being_replaced_is_partially_listening_naming_the_worker() -> None:
    why = "worker udp-pool#3 (pid 4242) did not apply the change within 10 s; it is being replaced"
    got = programmed(PodResult("p0", True, PARTIAL, why))
    assert (got["Ready"].status, got["Ready"].reason) == ("False", "PartiallyListening")
    assert f"p0: {why}" in got["Ready"].message
    [entry] = listeners([PodResult("p0", True, PARTIAL, why)])
    assert entry == {"pod": "p0", "state": PARTIAL, "message": why}


def test_all_failing_is_bind_failed() -> None:
    got = programmed(PodResult("p0", True, FAILED, "Cannot assign requested address"))
    assert got["Ready"].reason == "BindFailed"


def test_unreachable_pod_is_proxy_unreachable_and_its_listener_says_so() -> None:
    pods = (PodResult("p0", True, LISTENING), PodResult("p1", False, error="connection refused"))
    got = programmed(*pods)
    assert got["Ready"].reason == "ProxyUnreachable"
    assert "p1" in got["Ready"].message
    entry = next(item for item in listeners(pods) if item["pod"] == "p1")
    assert entry["state"] == FAILED
    assert "unreachable" in entry["message"]


def test_no_pods() -> None:
    assert programmed()["Ready"].reason == "NoProxyPods"


def test_pending_while_the_proxy_has_not_listed_it() -> None:
    got = programmed(PodResult("p0", True, PENDING))
    assert (got["Ready"].status, got["Ready"].reason) == ("False", "Pending")


def test_not_accepted_propagates_its_reason_down_the_chain() -> None:
    got = by_type(conditions(Outcome(False, "EndpointConflict", "held by SipSocket voip/a")))
    assert [got[t].reason for t in ("Accepted", "Programmed", "Ready")] == ["EndpointConflict"] * 3
    assert all(c.status == "False" for c in got.values())


def test_database_unavailable_is_programmed_false() -> None:
    got = by_type(conditions(Outcome(True, programmed=False, programmed_reason="DatabaseUnavailable")))
    assert got["Accepted"].status == "True"
    assert (got["Programmed"].status, got["Ready"].reason) == ("False", "DatabaseUnavailable")


def test_merge_keeps_transition_time_and_reports_changes() -> None:
    first, changed = merge(None, [Condition("Ready", "False", "Pending", "m")], 1, "2026-01-01T00:00:00Z")
    assert [c.reason for c in changed] == ["Pending"]
    again, changed = merge(first, [Condition("Ready", "False", "Pending", "m2")], 2, "2026-01-01T00:01:00Z")
    assert changed == []
    assert again[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert again[0]["observedGeneration"] == 2
    later, changed = merge(again, [Condition("Ready", "True", "Listening", "ok")], 2, "2026-01-01T00:02:00Z")
    assert [c.reason for c in changed] == ["Listening"]
    assert later[0]["lastTransitionTime"] == "2026-01-01T00:02:00Z"


def test_listening_count_counts_listening_pods_of_all_ready_pods() -> None:
    pods = [
        PodResult("p0", True, LISTENING),
        PodResult("p1", True, FAILED, "EADDRNOTAVAIL"),
        PodResult("p2", False, error="timeout"),
        PodResult("p3", True, LISTENING),
    ]
    assert listening_count(pods) == "2/4"
    assert listening_count([]) == "0/0"
