"""The deterministic winner of an endpoint."""

from __future__ import annotations

from dataclasses import replace

from sipoperator.conflicts import Claim, Foreign, decide, overlaps

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


def at(address: str, port: int = 5060, layer: str = "udp") -> tuple[str, str, int]:
    return (layer, address, port)


def test_a_wildcard_overlaps_every_address_of_its_family_on_that_layer_and_port() -> None:
    assert overlaps(at("0.0.0.0"), at("10.0.0.1"))
    assert overlaps(at("10.0.0.1"), at("0.0.0.0"))
    assert overlaps(at("::"), at("2001:db8::1"))
    assert overlaps(at("0.0.0.0"), at("0.0.0.0"))
    assert not overlaps(at("0.0.0.0"), at("10.0.0.1", 5061))
    assert not overlaps(at("0.0.0.0", layer="tcp"), at("10.0.0.1"))
    assert not overlaps(at("10.0.0.1"), at("10.0.0.2"))


def test_the_ipv6_wildcard_leaves_ipv4_alone_because_the_proxy_binds_v6only() -> None:
    assert not overlaps(at("::"), at("10.0.0.1"))
    assert not overlaps(at("::"), at("0.0.0.0"))
    assert not overlaps(at("0.0.0.0"), at("2001:db8::1"))


def test_the_younger_of_a_wildcard_and_an_address_is_refused_naming_the_holder_and_its_endpoint() -> None:
    wild = claim("wild", "2026-01-01T00:00:00Z", key=at("0.0.0.0"))
    one = claim("one", "2026-01-02T00:00:00Z", key=at("10.0.0.1"))
    assert decide(wild, [one], []).accepted
    verdict = decide(one, [wild], [])
    assert not verdict.accepted
    assert verdict.holder == "SipSocket voip/wild (UDP 0.0.0.0:5060)"
    assert "overlaps UDP 0.0.0.0:5060" in verdict.message and "SipSocket voip/wild" in verdict.message
    # And the other way round: an address held first keeps the wildcard out.
    assert decide(claim("one", "2026-01-01T00:00:00Z", key=at("10.0.0.1")), [wild], []).accepted


def test_a_wildcard_row_not_managed_by_the_operator_holds_every_address() -> None:
    me = claim("a", "2026-01-01T00:00:00Z", programmed=True, key=at("10.0.0.1"))
    verdict = decide(me, [], [Foreign(at("0.0.0.0"), "static socket udp:0.0.0.0:5060 of proxy pod p")])
    assert not verdict.accepted
    assert verdict.holder == "static socket udp:0.0.0.0:5060 of proxy pod p"


def test_no_address_is_refused_because_of_a_wildcard_that_lost_itself() -> None:
    """a (10.0.0.1) is older than the wildcard, which is older than b (10.0.0.2): the wildcard loses to a,
    so it holds nothing and b is free. Every side agrees; no two holders overlap."""
    a = claim("a", "2026-01-01T00:00:00Z", key=at("10.0.0.1"))
    wild = claim("wild", "2026-01-02T00:00:00Z", key=at("0.0.0.0"))
    b = claim("b", "2026-01-03T00:00:00Z", key=at("10.0.0.2"))
    everyone = [a, wild, b]
    assert [c.name for c in everyone if decide(c, everyone, []).accepted] == ["a", "b"]
    assert decide(wild, everyone, []).holder == "SipSocket voip/a (UDP 10.0.0.1:5060)"


def test_a_wildcard_blocked_by_a_foreign_row_frees_the_addresses_it_would_cover() -> None:
    wild = claim("wild", "2026-01-01T00:00:00Z", key=at("0.0.0.0"))
    b = claim("b", "2026-01-02T00:00:00Z", key=at("10.0.0.2"))
    foreign = [
        Foreign(at("10.0.0.1"), "row 3 of table sockets (udp:10.0.0.1:5060, not managed by the operator)")
    ]
    assert not decide(wild, [b], foreign).accepted
    assert decide(b, [wild], foreign).accepted


def test_an_object_moving_between_overlapping_endpoints_does_not_block_itself() -> None:
    """Its old row (programmed at 10.0.0.1) and its new wish (0.0.0.0) are one object."""
    row = claim("m", "2026-01-01T00:00:00Z", programmed=True, key=at("10.0.0.1"))
    moving = claim("m", "2026-01-01T00:00:00Z", key=at("0.0.0.0"))
    assert decide(moving, [row, moving], []).accepted


def _decide_by_scan(me: Claim, claims: list[Claim], foreign: list[Foreign]) -> tuple[bool, str | None]:
    """The rule as its docstring states it, written as the plain scan: the index must agree with it."""
    from sipoperator.conflicts import _contenders, _lost, _rank

    blockers = [f for f in foreign if f.key[0] == me.key[0] and f.key[2] == me.key[2]]
    for item in blockers:
        if overlaps(item.key, me.key):
            return False, item.what
    held: list[Claim] = []
    for c in sorted(_contenders(me, claims), key=_rank):
        if any(overlaps(item.key, c.key) for item in blockers):
            continue
        holder = next((h for h in held if h.uid != c.uid and overlaps(h.key, c.key)), None)
        if c.uid == me.uid:
            return (True, None) if holder is None else (False, _lost(c, holder).holder)
        if holder is None:
            held.append(c)
    raise AssertionError("me is always a contender")


def test_the_indexed_holders_agree_with_a_scan_of_them_all() -> None:
    import random

    rng = random.Random(20261205)
    addresses = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "0.0.0.0", "::", "::1", "fd00::2"]
    for _ in range(400):
        claims = [
            Claim(
                f"uid-{rng.randrange(12)}",
                "voip",
                f"s{i}",
                f"2026-01-{rng.randrange(1, 28):02d}T00:00:00Z",
                (rng.choice(["udp", "tcp"]), rng.choice(addresses), rng.choice([5060, 5061])),
                rng.random() < 0.3,
            )
            for i in range(rng.randrange(1, 25))
        ]
        foreign = []
        if rng.random() < 0.3:
            foreign.append(Foreign(("udp", rng.choice(addresses), 5061), "a static socket"))
        for me in claims:
            verdict = decide(me, claims, foreign)
            assert (verdict.accepted, verdict.holder) == _decide_by_scan(me, claims, foreign)


def test_standings_agree_with_deciding_each_claim_alone_also_after_holders_got_their_rows() -> None:
    """What a batch relies on: one walk over every claim gives each object the verdict (and the holder it
    names) that `decide` gives it alone, and stays right as holders are programmed one after another."""
    import random

    from sipoperator.conflicts import Standings

    rng = random.Random(20261205)
    addresses = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "0.0.0.0", "::", "::1", "fd00::2"]
    looked_up = 0
    for _ in range(400):
        claims = []
        for _ in range(rng.randrange(1, 25)):
            n = rng.randrange(12)  # an object may claim several endpoints (its row and its new wish)
            key = (rng.choice(["udp", "tcp"]), rng.choice(addresses), rng.choice([5060, 5061]))
            claims.append(Claim(f"uid-{n}", "voip", f"s{n}", f"2026-01-{n + 1:02d}T00:00:00Z", key,
                                rng.random() < 0.3))  # fmt: skip
        foreign = []
        if rng.random() < 0.3:
            foreign.append(Foreign(("udp", rng.choice(addresses), 5061), "a static socket"))
        standings = Standings(claims, foreign)
        for me in claims:
            if rng.random() < 0.3 and standings.verdict(me) is not None and standings.promote(me.uid, me.key):
                claims = [
                    replace(c, programmed=True) if (c.uid, c.key) == (me.uid, me.key) else c for c in claims
                ]
        for me in claims:
            verdict = standings.verdict(me)
            if verdict is None:
                continue  # several claims of one object here: the caller decides in full
            looked_up += 1
            alone = decide(me, [c for c in claims if c.uid != me.uid], foreign)
            assert verdict == alone
    assert looked_up > 1000
