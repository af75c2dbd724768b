"""Conditions and listeners from reconcile results."""

from __future__ import annotations

from sipoperator.conditions import (
    DATABASE_UNAVAILABLE,
    FAILED,
    LISTENING,
    PARTIAL,
    PENDING,
    Condition,
    Outcome,
    PodResult,
    Refs,
    conditions,
    database_down,
    deletion_blocked,
    listeners,
    listening_count,
    merge,
    refused,
    unresolved,
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


# -- ResolvedRefs --------------------------------------------------------------------------------------------

GOOD = Refs(
    True, "ResolvedRefs", "Secret voip/edge-tls: CN=sip.example.com, valid until 2027-04-01T00:00:00Z"
)
MISSING = Refs(False, "InvalidCertificateRef", "Secret voip/edge-tls not found")
LISTENS = (PodResult("p0", True, LISTENING),)


def test_resolved_refs_sits_between_accepted_and_programmed() -> None:
    got = conditions(Outcome(True, programmed=True, pods=LISTENS, refs=GOOD))
    assert [(c.type, c.status) for c in got] == [
        ("Accepted", "True"),
        ("ResolvedRefs", "True"),
        ("Programmed", "True"),
        ("Ready", "True"),
    ]
    # Sockets without spec.tls have no ResolvedRefs at all.
    assert "ResolvedRefs" not in by_type(conditions(Outcome(True, programmed=True, pods=LISTENS)))


def test_with_nothing_to_serve_programmed_and_ready_follow_resolved_refs() -> None:
    got = by_type(conditions(unresolved("TCP 10.0.0.1:5061 is free for this SipSocket", MISSING)))
    assert got["Accepted"].status == "True"
    refs = got["ResolvedRefs"]
    assert (refs.status, refs.reason) == ("False", "InvalidCertificateRef")
    assert refs.message == (
        "Secret voip/edge-tls not found; nothing is served on this socket until it is fixed"
    )
    for ctype, prefix in (("Programmed", "not written to the database: "), ("Ready", "not served: ")):
        assert (got[ctype].status, got[ctype].reason) == ("False", "InvalidCertificateRef")
        assert got[ctype].message == prefix + "Secret voip/edge-tls not found"


def test_a_bad_secret_with_a_last_good_certificate_keeps_the_socket_ready_and_says_so() -> None:
    serving = Refs(False, "InvalidCertificateRef", MISSING.message, "the certificate of 2027-01-01/1F2E")
    got = by_type(conditions(Outcome(True, programmed=True, pods=LISTENS, refs=serving)))
    assert got["ResolvedRefs"].message == (
        "Secret voip/edge-tls not found; the proxies keep serving the certificate of 2027-01-01/1F2E "
        "until it is fixed"
    )
    assert (got["Programmed"].status, got["Ready"].status, got["Ready"].reason) == (
        "True",
        "True",
        "Listening",
    )
    assert got["Ready"].message == (
        "listening on 1/1 proxy pods, with the last good certificate (see ResolvedRefs)"
    )


def test_resolved_refs_is_judged_on_its_own_when_the_socket_is_refused() -> None:
    got = conditions(refused("EndpointConflict", "TCP 10.0.0.1:5061 is used by SipSocket voip/a", GOOD))
    assert [(c.type, c.status, c.reason) for c in got] == [
        ("Accepted", "False", "EndpointConflict"),
        ("ResolvedRefs", "True", "ResolvedRefs"),
        ("Programmed", "False", "EndpointConflict"),
        ("Ready", "False", "EndpointConflict"),
    ]


def test_a_domain_name_taken_by_hand_is_its_own_reason_not_database_unavailable() -> None:
    got = by_type(
        conditions(database_down("tls_mgm already has server domain 'voip/a'", [], "DomainConflict"))
    )
    assert (got["Programmed"].reason, got["Programmed"].message) == (
        "DomainConflict",
        "tls_mgm already has server domain 'voip/a'",
    )
    assert got["Accepted"].message == "spec is valid"


def test_listening_count_counts_listening_pods_of_all_ready_pods() -> None:
    pods = [
        PodResult("p0", True, LISTENING),
        PodResult("p1", True, FAILED, "EADDRNOTAVAIL"),
        PodResult("p2", False, error="timeout"),
        PodResult("p3", True, LISTENING),
    ]
    assert listening_count(pods) == "2/4"
    assert listening_count([]) == "0/0"


def test_a_deletion_blocked_by_the_database_says_so_and_keeps_accepted() -> None:
    previous = [
        {"type": "Accepted", "status": "False", "reason": "EndpointConflict", "message": "held by b"},
        {"type": "Programmed", "status": "False", "reason": "EndpointConflict", "message": "not written"},
        {"type": "Ready", "status": "False", "reason": "EndpointConflict", "message": "not served"},
    ]
    accepted, programmed, ready = deletion_blocked(previous, "connection refused")
    assert accepted == Condition("Accepted", "False", "EndpointConflict", "held by b")
    assert (programmed.type, programmed.status, programmed.reason) == (
        "Programmed",
        "False",
        DATABASE_UNAVAILABLE,
    )
    assert programmed.message.startswith("deleting: the row cannot be removed")
    assert "connection refused" in programmed.message and "finalizer stays" in programmed.message
    assert (ready.status, ready.reason) == ("False", DATABASE_UNAVAILABLE)
    # Never reconciled (no conditions yet): only the two.
    assert [c.type for c in deletion_blocked(None, "x")] == ["Programmed", "Ready"]
