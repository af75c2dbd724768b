"""The deterministic winner of an endpoint."""

from __future__ import annotations

from sipoperator.conflicts import Claim, Foreign, decide

KEY = ("udp", "10.0.0.1", 5060)


def claim(name: str, created: str, programmed: bool = False, key: tuple[str, str, int] = KEY) -> Claim:
    return Claim(f"uid-{name}", "voip", name, created, key, programmed)


def test_alone_it_is_accepted() -> None:
    assert decide(claim("a", "2026-01-01T00:00:00Z"), [], []).accepted


def test_oldest_wins_and_the_loser_names_the_holder() -> None:
    old, new = claim("old", "2026-01-01T00:00:00Z"), claim("new", "2026-01-02T00:00:00Z")
    verdict = decide(new, [old], [])
    assert not verdict.accepted
    assert verdict.holder == "SipSocket voip/old"
    assert "SipSocket voip/old" in verdict.message
    assert decide(old, [new], []).accepted


def test_already_programmed_keeps_its_endpoint_even_if_younger() -> None:
    old, young = claim("old", "2026-01-01T00:00:00Z"), claim("young", "2026-01-05T00:00:00Z", programmed=True)
    assert decide(young, [old], []).accepted
    assert decide(old, [young], []).holder == "SipSocket voip/young"


def test_same_age_falls_back_to_name() -> None:
    a, b = claim("a", "2026-01-01T00:00:00Z"), claim("b", "2026-01-01T00:00:00Z")
    assert decide(a, [b], []).accepted
    assert not decide(b, [a], []).accepted


def test_exactly_one_winner_whichever_side_decides() -> None:
    claims = [claim(n, "2026-01-01T00:00:00Z") for n in ("c", "a", "b")]
    winners = [c.name for c in claims if decide(c, claims, []).accepted]
    assert winners == ["a"]


def test_rows_the_operator_does_not_own_always_hold() -> None:
    me = claim("a", "2026-01-01T00:00:00Z", programmed=True)
    verdict = decide(me, [], [Foreign(KEY, "row 7 of sockets (udp:10.0.0.1, not managed by the operator)")])
    assert not verdict.accepted
    assert "row 7" in verdict.message


def test_other_endpoints_do_not_conflict() -> None:
    me = claim("a", "2026-01-02T00:00:00Z")
    others = [claim("b", "2026-01-01T00:00:00Z", key=("tcp", "10.0.0.1", 5060))]
    foreign = [Foreign(("udp", "10.0.0.2", 5060), "static socket udp:10.0.0.2:5060 of proxy pod p")]
    assert decide(me, others, foreign).accepted


def test_tls_and_tcp_on_one_port_conflict() -> None:
    tcp = claim("tcp", "2026-01-01T00:00:00Z", key=("tcp", "10.0.0.1", 5061))
    tls = claim("tls", "2026-01-02T00:00:00Z", key=("tcp", "10.0.0.1", 5061))
    assert not decide(tls, [tcp], []).accepted
