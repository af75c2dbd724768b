"""Who holds an endpoint (pure): the deterministic winner among SipSockets asking for overlapping ones.

Order: something the operator does not own (a hand-made row, a proxy's static socket) always holds; then a
SipSocket already programmed at that endpoint keeps it; then the oldest; then namespace/name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from sipoperator.spec import EndpointKey, describe_key

WILDCARDS = frozenset({"0.0.0.0", "::"})


def overlaps(a: EndpointKey, b: EndpointKey) -> bool:
    """Could the kernel not bind both? Same transport layer and port, and the same address or a wildcard of
    the other's family (a socket bound to 0.0.0.0:5060 takes port 5060 on every IPv4 address, so a later
    bind of 10.0.0.1:5060 fails with EADDRINUSE). `::` covers IPv6 only: the proxy binds every IPv6 socket
    with IPV6_V6ONLY (sipproxy/binding.py), so `::` and `0.0.0.0` on one port coexist."""
    if a[0] != b[0] or a[2] != b[2]:
        return False
    if a[1] == b[1]:
        return True
    if (":" in a[1]) != (":" in b[1]):
        return False
    return a[1] in WILDCARDS or b[1] in WILDCARDS


@dataclass(frozen=True)
class Claim:
    """A SipSocket asking for (or holding, when `programmed`) an endpoint."""

    uid: str
    namespace: str
    name: str
    created: str  # RFC 3339 creationTimestamp: sorts chronologically as text
    key: EndpointKey
    programmed: bool = False

    @property
    def ref(self) -> str:
        return f"SipSocket {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Foreign:
    """An endpoint taken by something the operator must not touch."""

    key: EndpointKey
    what: str  # e.g. "row 17 of table sockets (not managed by the operator)"


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    holder: str | None = None
    message: str = ""


def _rank(claim: Claim) -> tuple[bool, str, str, str, str]:
    return (not claim.programmed, claim.created, claim.namespace, claim.name, claim.uid)


def _contenders(me: Claim, claims: Iterable[Claim]) -> list[Claim]:
    """`me` and the other claims that can interact with it (same layer and port), one per (uid, endpoint):
    an object may appear from the watch and from its row, and then programmed wins."""
    unique: dict[tuple[str, EndpointKey], Claim] = {}
    for claim in claims:
        if claim.key[0] != me.key[0] or claim.key[2] != me.key[2]:
            continue
        if claim.uid == me.uid:
            if claim.key == me.key and claim.programmed and not me.programmed:
                me = claim
            continue
        prior = unique.get((claim.uid, claim.key))
        if prior is None or (claim.programmed and not prior.programmed):
            unique[(claim.uid, claim.key)] = claim
    return [me, *unique.values()]


def decide(me: Claim, claims: Iterable[Claim], foreign: Iterable[Foreign]) -> Verdict:
    """Does `me` get its endpoint? `claims` may include `me` and duplicates of one uid.

    With wildcards overlap is not transitive (0.0.0.0 overlaps 10.0.0.1 and 10.0.0.2, which do not overlap
    each other), so the winners are picked greedily in rank order: a claim holds when it overlaps nothing
    the operator does not own and no claim of another object that already holds. Every object decides
    from the same inputs, so they agree, and nobody is refused because of a claim that itself lost.
    """
    blockers = [f for f in foreign if f.key[0] == me.key[0] and f.key[2] == me.key[2]]
    for item in blockers:
        if overlaps(item.key, me.key):
            return Verdict(
                False,
                item.what,
                f"{describe_key(me.key)} is already taken by {item.what}; choose another port",
            )
    held = _Held()
    for claim in sorted(_contenders(me, claims), key=_rank):
        if any(overlaps(item.key, claim.key) for item in blockers):
            continue
        holder = held.first_overlapping(claim)
        if claim.uid == me.uid:
            if holder is None:
                return Verdict(True, None, f"{describe_key(me.key)} is free for this SipSocket")
            return _lost(claim, holder)
        if holder is None:
            held.add(claim)
    raise AssertionError("unreachable: `me` is always among the contenders")  # pragma: no cover


_Entry = tuple[int, tuple[str, EndpointKey]]  # (order taken, (uid, endpoint))


class _Held:
    """The claims that hold, in the order they were taken, indexed so that finding the first one a claim
    overlaps does not scan them all: every contender has one layer and port, so overlap is a question of
    addresses (the same one, or a wildcard of the family). A scan made each decision quadratic in the
    SipSockets on one port, and a whole resync cubic (1,000 on one port: most of a cold start's time)."""

    def __init__(self) -> None:
        self._order = 0
        self._claims: dict[tuple[str, EndpointKey], Claim] = {}
        self._by_address: dict[str, list[_Entry]] = {}
        self._wildcards: dict[bool, list[_Entry]] = {}  # IPv6? -> wildcard holders
        self._by_family: dict[bool, list[_Entry]] = {}  # IPv6? -> every holder

    def add(self, claim: Claim) -> None:
        ident = (claim.uid, claim.key)
        self._claims[ident] = claim
        entry = (self._order, ident)
        self._order += 1
        address = claim.key[1]
        v6 = ":" in address
        self._by_address.setdefault(address, []).append(entry)
        self._by_family.setdefault(v6, []).append(entry)
        if address in WILDCARDS:
            self._wildcards.setdefault(v6, []).append(entry)

    def replace(self, claim: Claim) -> None:
        """The holder of `claim`'s object and endpoint is `claim` from now on, in the same place."""
        self._claims[(claim.uid, claim.key)] = claim

    def _candidates(self, claim: Claim) -> list[tuple[int, Claim]]:
        address = claim.key[1]
        v6 = ":" in address
        if address in WILDCARDS:
            entries = self._by_family.get(v6, [])  # a wildcard overlaps every holder of its family
        else:
            entries = self._by_address.get(address, []) + self._wildcards.get(v6, [])
        return [(order, self._claims[ident]) for order, ident in entries]

    def overlapping(self, claim: Claim) -> list[Claim]:
        """Every holder whose endpoint overlaps `claim`'s, its own object's included."""
        return [h for _, h in self._candidates(claim)]

    def first_overlapping(self, claim: Claim) -> Claim | None:
        """The earliest holder of another object whose endpoint overlaps `claim`'s."""
        found = [(order, h) for order, h in self._candidates(claim) if h.uid != claim.uid]
        return min(found, key=lambda e: e[0])[1] if found else None


Group = tuple[str, int]  # (transport layer, port): claims of different groups never overlap


class Standings:
    """`decide` for many claims at once: its greedy pick run once over all the claims (each layer and port
    on its own), so that each of a thousand decisions against the same inputs is a lookup, not a walk.

    Built from every claim there is (every object's, the subject's own included) and the foreign endpoints.
    `verdict(me)` is exactly `decide(me, claims minus me's own, foreign)` when `me` is the one claim of its
    object on its layer and port (an object and its row at one endpoint: the usual case); otherwise it is
    None and the caller decides in full. Why a lookup is enough: a claim holds in `decide`'s walk exactly when
    it is free of foreign endpoints and of the holders ranked before it, so the holders are one set for every
    subject, and a subject that does not hold lost to the first of them (in rank order) it overlaps.
    """

    def __init__(self, claims: Iterable[Claim], foreign: Iterable[Foreign]) -> None:
        self._foreign: dict[Group, list[Foreign]] = {}
        for item in foreign:
            self._foreign.setdefault((item.key[0], item.key[2]), []).append(item)
        groups: dict[Group, dict[tuple[str, EndpointKey], Claim]] = {}
        for claim in claims:  # one per (uid, endpoint), programmed first, as `_contenders` keeps them
            unique = groups.setdefault((claim.key[0], claim.key[2]), {})
            prior = unique.get((claim.uid, claim.key))
            if prior is None or (claim.programmed and not prior.programmed):
                unique[(claim.uid, claim.key)] = claim
        self._claims: dict[tuple[str, EndpointKey], Claim] = {}
        self._per_object: dict[tuple[str, Group], int] = {}
        # Each holder's place in rank order: (rank, position); ranks tie only within one object.
        self._held: dict[tuple[str, EndpointKey], tuple[tuple[bool, str, str, str, str], int]] = {}
        self._index: dict[Group, _Held] = {}
        for group, unique in groups.items():
            held = self._index.setdefault(group, _Held())
            blockers = self._foreign.get(group, [])
            for position, claim in enumerate(sorted(unique.values(), key=_rank)):
                self._claims[(claim.uid, claim.key)] = claim
                count = self._per_object.get((claim.uid, group), 0)
                self._per_object[(claim.uid, group)] = count + 1
                if any(overlaps(item.key, claim.key) for item in blockers):
                    continue
                if held.first_overlapping(claim) is None:
                    held.add(claim)
                    self._held[(claim.uid, claim.key)] = (_rank(claim), position)

    def verdict(self, me: Claim) -> Verdict | None:
        group = (me.key[0], me.key[2])
        if self._per_object.get((me.uid, group)) != 1 or self._claims.get((me.uid, me.key)) != me:
            return None  # the object has other claims here (a move between endpoints), or another view of it
        for item in self._foreign.get(group, ()):
            if overlaps(item.key, me.key):
                return Verdict(
                    False,
                    item.what,
                    f"{describe_key(me.key)} is already taken by {item.what}; choose another port",
                )
        if (me.uid, me.key) in self._held:
            return Verdict(True, None, f"{describe_key(me.key)} is free for this SipSocket")
        rank = _rank(me)
        before = [
            (self._held[(h.uid, h.key)], h)
            for h in self._index[group].overlapping(me)
            if h.uid != me.uid and self._held[(h.uid, h.key)][0] < rank
        ]
        if not before:  # pragma: no cover - a claim that does not hold overlaps a holder ranked before it
            raise AssertionError(f"no holder found for {me}")
        return _lost(me, min(before, key=lambda e: e[0])[1])

    def promote(self, uid: str, key: EndpointKey) -> bool:
        """The holder `uid` got its row at `key` (it is programmed now). The holders stay the same: one that
        moves up in rank order blocks nothing it did not block before, since nothing it overlaps held before
        it either. False when `uid` did not hold `key` here, or holds more there: the caller builds the
        standings anew."""
        place = self._held.get((uid, key))
        claim = self._claims.get((uid, key))
        if place is None or claim is None or self._per_object.get((uid, (key[0], key[2]))) != 1:
            return False
        if not claim.programmed:
            promoted = replace(claim, programmed=True)
            self._claims[(uid, key)] = promoted
            self._held[(uid, key)] = (_rank(promoted), place[1])
            self._index[(key[0], key[2])].replace(promoted)
        return True


def _lost(me: Claim, holder: Claim) -> Verdict:
    why = "already programmed" if holder.programmed else "older"
    if holder.key == me.key:
        return Verdict(
            False,
            holder.ref,
            f"{describe_key(me.key)} is already held by {holder.ref} ({why}); "
            "this SipSocket is accepted automatically once it is released",
        )
    held = f"{holder.ref} ({describe_key(holder.key)})"
    return Verdict(
        False,
        held,
        f"{describe_key(me.key)} overlaps {describe_key(holder.key)}, already held by {holder.ref} ({why}); "
        "this SipSocket is accepted automatically once it is released",
    )
