"""What one decision about a SipSocket looks at: the object, the table, the fleet, the other objects, the
Secrets it references.

Gathered by reconcile (under its table lock) and by the webhook alike, then judged by the same chain of checks
(`checks.py`); nothing here does I/O.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sipoperator.conflicts import Standings
from sipoperator.refs import SecretState
from sipoperator.spec import DesiredSocket, SpecError, validate
from sipoperator.store import TableRow


@dataclass
class Known:
    """What the watch last said about a SipSocket, its spec validated once per spec."""

    uid: str
    namespace: str
    name: str
    created: str
    spec: Mapping[str, Any]
    deleting: bool = False
    checked: DesiredSocket | SpecError = field(init=False)

    def __post_init__(self) -> None:
        try:
            self.checked = validate(self.spec)
        except SpecError as exc:
            self.checked = exc

    @classmethod
    def from_body(cls, body: Mapping[str, Any], **overrides: Any) -> Known:
        meta = body.get("metadata") or {}
        fields: dict[str, Any] = {
            "uid": str(meta.get("uid")),
            "namespace": str(meta.get("namespace")),
            "name": str(meta.get("name")),
            "created": str(meta.get("creationTimestamp") or ""),
            "spec": dict(body.get("spec") or {}),
            "deleting": bool(meta.get("deletionTimestamp")),
        }
        fields.update(overrides)
        return cls(**fields)

    @property
    def wanted(self) -> DesiredSocket | None:
        return self.checked if isinstance(self.checked, DesiredSocket) else None

    @property
    def invalid(self) -> SpecError | None:
        return self.checked if isinstance(self.checked, SpecError) else None


class TableIndex:
    """What the checks ask of the table for one SipSocket (its own rows; how many distinct rows there are),
    answered without a scan of every row: kept by the reconciler with its cached table, so that each of a
    thousand decisions in a batch or a resync wave costs the same at 1,000 rows as at 10."""

    def __init__(self, rows: Sequence[TableRow]) -> None:
        self._by_owner: dict[str | None, list[TableRow]] = {}
        self._distinct: Counter[tuple[str | None, ...]] = Counter()
        for row in rows:
            self.put(row)

    def owned_by(self, uid: str) -> list[TableRow]:
        return self._by_owner.get(uid, [])

    @property
    def distinct(self) -> int:
        return len(self._distinct)

    def put(self, row: TableRow) -> None:
        self._by_owner.setdefault(row.owner_uid, []).append(row)
        self._distinct[_columns(row)] += 1

    def drop_owner(self, uid: str) -> None:
        for row in self._by_owner.pop(uid, []):
            columns = _columns(row)
            self._distinct[columns] -= 1
            if not self._distinct[columns]:
                del self._distinct[columns]


def _columns(row: TableRow) -> tuple[str | None, ...]:
    return (row.socket, row.advertised, row.tag, row.flags, row.tos)


@dataclass(frozen=True)
class Snapshot:
    """Read-only inputs of one decision. `rows` is None when the table could not be read."""

    subject: Known
    rows: Sequence[TableRow] | None
    static: Sequence[tuple[str, str]]  # (proxy pod, static socket text)
    capacity: int | None  # the fleet's smallest max_sockets; None: not enforced
    others: Mapping[str, Known]  # uid -> every SipSocket the watch knows (may include the subject)
    table_name: str = "sockets"
    secrets: Mapping[str, SecretState] = field(default_factory=dict)  # spec.tls's Secrets by name, as read
    now: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    # Every SipSocket's standing against these same rows, others and static sockets (checks.standings), when
    # the caller keeps them between decisions: the conflict check is then a lookup.
    standings: Standings | None = None
    index: TableIndex | None = None  # `rows` indexed (the reconciler's): each check a lookup, not a scan

    def own_rows(self) -> Sequence[TableRow]:
        """The subject's rows (none when the table could not be read)."""
        if self.rows is None:
            return []
        if self.index is not None:
            return self.index.owned_by(self.subject.uid)
        return [r for r in self.rows if r.owner_uid == self.subject.uid]

    def distinct_rows(self) -> int:
        """How many different socket rows the table has (what a proxy's slots hold)."""
        if self.index is not None:
            return self.index.distinct
        return len({_columns(r) for r in self.rows or ()})


# The webhook's newcomer ranks after everything that exists: whoever is there keeps the endpoint.
NEWCOMER_CREATED = "9999-12-31T23:59:59Z"


def for_admission(
    subject: Known,
    rows: Sequence[TableRow],
    static: Sequence[tuple[str, str]],
    capacity: int | None,
    known: Mapping[str, Known],
    table_name: str,
    secrets: Mapping[str, SecretState] | None = None,
) -> Snapshot:
    """The snapshot the webhook judges: the object as it would be after the change, so its own row and its
    own watched state (the old spec, when it is an update) are left out."""
    me = (subject.namespace, subject.name)
    return Snapshot(
        subject=subject,
        rows=[r for r in rows if r.owner_uid != subject.uid and (r.owner_namespace, r.owner_name) != me],
        static=static,
        capacity=capacity,
        others={uid: k for uid, k in known.items() if (k.namespace, k.name) != me},
        table_name=table_name,
        secrets=secrets or {},
    )
