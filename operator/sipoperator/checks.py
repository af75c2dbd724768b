"""Admission of a SipSocket as an ordered chain of pure checks: spec -> endpoint conflict -> capacity.

Each check looks at a `Snapshot` and returns None ("ok, next one") or a `Refusal` (the Accepted condition's
reason and message). Reconcile and the validating webhook run the same chain, so `kubectl apply` refuses
exactly what reconcile would report as not accepted (the webhook judges the object as a newcomer, see
`snapshot.for_admission`). Checks that need the table pass when it could not be read: reconcile then says
the endpoint is unchecked.

After the chain, `resolve_refs` judges the Secrets of spec.tls (the ResolvedRefs condition). It never
refuses: cert-manager creates a Certificate's Secret after the SipSocket that names it exists, so the webhook
turns a problem into a warning and reconcile into the condition (the Gateway API accepts and reports too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sipoperator.conflicts import Claim, Foreign, Standings, decide
from sipoperator.refs import Resolution, resolve
from sipoperator.snapshot import Known, Snapshot
from sipoperator.spec import DesiredSocket, describe_key, row_key
from sipoperator.store import TableRow

INVALID_SPEC, ENDPOINT_CONFLICT, CAPACITY_EXCEEDED = "InvalidSpec", "EndpointConflict", "CapacityExceeded"


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str
    holder: str | None = None  # EndpointConflict: what holds the endpoint


Check = Callable[[Snapshot], Refusal | None]


def spec_valid(snap: Snapshot) -> Refusal | None:
    error = snap.subject.invalid
    return Refusal(INVALID_SPEC, str(error)) if error is not None else None


def endpoint_free(snap: Snapshot) -> Refusal | None:
    """Nothing else holds an endpoint overlapping ours: rows the operator does not own, the proxies' static
    sockets, other SipSockets (programmed ones from the table, the others from the watch)."""
    me = snap.subject
    wanted = me.wanted
    if wanted is None or snap.rows is None:
        return None
    programmed = any(row_key(r.socket) == wanted.key for r in snap.own_rows())
    claim = Claim(me.uid, me.namespace, me.name, me.created, wanted.key, programmed)
    verdict = snap.standings.verdict(claim) if snap.standings is not None else None
    if verdict is None:
        claims, foreign = claims_and_foreign(snap.rows, snap.others, snap.static, snap.table_name, me.uid)
        verdict = decide(claim, claims, foreign)
    return None if verdict.accepted else Refusal(ENDPOINT_CONFLICT, verdict.message, verdict.holder)


def claims_and_foreign(
    rows: Sequence[TableRow],
    others: Mapping[str, Known],
    static: Sequence[tuple[str, str]],
    table_name: str,
    subject: str | None = None,
) -> tuple[list[Claim], list[Foreign]]:
    """What `decide` weighs: the SipSockets' claims (programmed ones from the table, the others from the
    watch) and the endpoints the operator does not own (rows, the proxies' static sockets). `subject`: the
    uid whose own claims are left out (None: everyone's, for `Standings`)."""
    claims: list[Claim] = []
    foreign: list[Foreign] = []
    for row in rows:
        key = row_key(row.socket)
        if key is None:
            continue
        if row.owner_uid is None:
            what = f"row {row.id} of table {table_name} ({row.socket}, not managed by the operator)"
            foreign.append(Foreign(key, what))
        elif row.owner_uid != subject:
            other = others.get(row.owner_uid)
            created = other.created if other else ""
            claims.append(
                Claim(row.owner_uid, row.owner_namespace or "", row.owner_name or "", created, key, True)
            )
    for pod, text in static:
        key = row_key(text)
        if key is not None:
            foreign.append(Foreign(key, f"static socket {text} of proxy pod {pod}"))
    for other in others.values():
        if other.uid == subject or other.deleting or other.wanted is None:
            continue
        claims.append(Claim(other.uid, other.namespace, other.name, other.created, other.wanted.key))
    return claims, foreign


def standings(
    rows: Sequence[TableRow], others: Mapping[str, Known], static: Sequence[tuple[str, str]], table_name: str
) -> Standings:
    """Every SipSocket's standing against these inputs, for many `endpoint_free` checks in a row."""
    return Standings(*claims_and_foreign(rows, others, static, table_name))


def capacity_left(snap: Snapshot) -> Refusal | None:
    """A new row needs a free slot on every proxy (the smallest max_sockets of the fleet); an object that
    has its row already keeps it."""
    if snap.capacity is None or snap.rows is None or snap.own_rows():
        return None
    distinct = snap.distinct_rows()
    if distinct + 1 <= snap.capacity:
        return None
    return Refusal(
        CAPACITY_EXCEEDED,
        f"the proxies have max_sockets={snap.capacity} and {distinct} sockets are in the table; "
        "delete a SipSocket or raise sockets_mgm.max_sockets",
    )


def accepted_message(wanted: DesiredSocket) -> str:
    """The Accepted condition's message when the whole chain passed."""
    return f"{describe_key(wanted.key)} is free for this SipSocket"


CHAIN: tuple[Check, ...] = (spec_valid, endpoint_free, capacity_left)


def first_refusal(snap: Snapshot, chain: Sequence[Check] = CHAIN) -> Refusal | None:
    for check in chain:
        refusal = check(snap)
        if refusal is not None:
            return refusal
    return None


def resolve_refs(snap: Snapshot) -> Resolution | None:
    """The Secrets of spec.tls, checked at `snap.now`; None when the SipSocket references none."""
    wanted = snap.subject.wanted
    if wanted is None or wanted.tls is None:
        return None
    return resolve(snap.subject.namespace, wanted.tls, snap.secrets, snap.now)
