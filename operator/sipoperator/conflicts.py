"""Who holds an endpoint (pure): the deterministic winner among SipSockets asking for the same one.

Order: something the operator does not own (a hand-made row, a proxy's static socket) always holds; then a
SipSocket already programmed at that endpoint keeps it; then the oldest; then namespace/name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sipoperator.spec import EndpointKey, describe_key


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


def decide(me: Claim, claims: Iterable[Claim], foreign: Iterable[Foreign]) -> Verdict:
    """Is `me` the holder of its endpoint? `claims` may include `me` and duplicates of one uid."""
    for item in foreign:
        if item.key == me.key:
            return Verdict(
                False,
                item.what,
                f"{describe_key(me.key)} is already taken by {item.what}; choose another port",
            )
    merged: dict[str, Claim] = {me.uid: me}
    for claim in claims:
        if claim.key != me.key:
            continue
        prior = merged.get(claim.uid)
        # One object may appear from the watch and from its row: programmed wins.
        if prior is None or (claim.programmed and not prior.programmed):
            merged[claim.uid] = claim
    winner = min(merged.values(), key=_rank)
    if winner.uid == me.uid:
        return Verdict(True, None, f"{describe_key(me.key)} is free for this SipSocket")
    why = "already programmed" if winner.programmed else "older"
    return Verdict(
        False,
        winner.ref,
        f"{describe_key(me.key)} is already held by {winner.ref} ({why}); "
        "this SipSocket is accepted automatically once it is released",
    )
