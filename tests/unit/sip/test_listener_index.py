"""The listener index kept current socket by socket answers every lookup as one built anew would."""

from __future__ import annotations

import random

from sipproxy.sip.listeners import Listener, ListenerIndex


def lookups(index: ListenerIndex, probes: list[Listener]) -> list[object]:
    out: list[object] = [list(index.listeners)]
    for p in probes:
        wire = index.wire(p)
        out += [
            index.by_key(wire.sk),
            index.is_our_via_prefix(wire.via_head[len(b"Via: ") :]),
            index.by_address(p.host, p.port, p.proto),
            index.by_address(p.public_host, p.public_port, None),
            index.by_address(p.host, None, p.proto),
            index.is_ours(p.host, p.port),
            index.is_ours(p.public_host, None),
            index.pick(p.proto, p.family),
        ]
    return out


def candidates(rng: random.Random) -> list[Listener]:
    # Few hosts and ports, so that keys, addresses and advertised addresses collide often.
    hosts = ["127.0.0.1", "127.0.0.2", "::1", "10.0.0.1"]
    out = []
    for _ in range(40):
        advertised = rng.choice([None, None, "203.0.113.9", "sip.example.com", rng.choice(hosts)])
        out.append(
            Listener(
                rng.choice(["udp", "tcp", "tls"]),
                rng.choice(hosts),
                rng.choice([5060, 5061, 5080]),
                advertised,
                rng.choice([None, 5060, 6000]) if advertised else None,
                rng.choice([None, "edge", "core"]),
            )
        )
    return out


def test_added_and_removed_one_by_one_it_answers_like_a_fresh_index() -> None:
    rng = random.Random(7)
    for _ in range(30):
        pool = candidates(rng)
        present: list[Listener] = []
        index = ListenerIndex([])
        for _ in range(120):
            if present and rng.random() < 0.45:
                gone = present.pop(rng.randrange(len(present)))
                index.remove(gone)
            else:
                new = rng.choice(pool)
                if new not in present:
                    present.append(new)
                index.add(new)
            assert lookups(index, pool) == lookups(ListenerIndex(present), pool)


def test_removing_an_absent_listener_or_adding_one_twice_changes_nothing() -> None:
    a = Listener("udp", "127.0.0.1", 5060)
    b = Listener("tcp", "127.0.0.1", 5060)
    index = ListenerIndex([a])
    index.add(a)
    index.remove(b)
    assert list(index.listeners) == [a]
    index.remove(a)
    assert list(index.listeners) == [] and not index.is_ours("127.0.0.1", 5060)
