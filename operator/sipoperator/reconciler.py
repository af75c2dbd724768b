"""Reconcile one SipSocket: validate -> conflicts -> capacity -> owned row -> reload -> listeners -> status.

I/O orchestration only; each decision is a pure function of `spec`, `conflicts` and `conditions`.
Level-triggered: every pass recomputes the whole status from the spec, the table and the proxies, so a pass
interrupted anywhere (operator killed) is simply repeated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sipoperator import conditions as cond
from sipoperator.conflicts import Claim, Foreign, Verdict, decide
from sipoperator.metrics import Metrics
from sipoperator.proxies import Fleet, Listed, MIError, ProxyPod, Unreachable
from sipoperator.settings import Settings
from sipoperator.spec import DesiredSocket, EndpointKey, Row, SpecError, row_key, same_row, validate
from sipoperator.store import DatabaseUnavailable, Store, TableRow, Written
from sipproxy.shared.socketspec import parse_row

log = logging.getLogger(__name__)
TABLE_CACHE_SECONDS = 2.0


@dataclass
class Known:
    """What the watch last said about a SipSocket."""

    uid: str
    namespace: str
    name: str
    created: str
    spec: Mapping[str, Any]
    deleting: bool = False
    wanted: DesiredSocket | None = None  # validated once per spec: conflict checks consult every object

    def __post_init__(self) -> None:
        try:
            self.wanted = validate(self.spec)
        except SpecError:
            self.wanted = None

    def desired(self) -> DesiredSocket | None:
        return self.wanted


@dataclass
class Memo:
    """Per-object scheduling state of the periodic check."""

    last_run: float = 0.0
    fleet_epoch: int = -1
    table_epoch: int = -1
    healthy: bool = False
    blocked: bool = False  # not accepted: waits for an endpoint or a slot to free up
    failures: int = 0
    last_conditions: dict[str, tuple[str, str]] = field(default_factory=dict)
    # What this process last wrote: the watched body may not show our own latest patch yet.
    written_conditions: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Result:
    status: dict[str, Any]
    changed: list[cond.Condition]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    def __init__(self, settings: Settings, store: Store, fleet: Fleet, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.fleet = fleet
        self.metrics = metrics
        self.known: dict[str, Known] = {}
        self.memos: dict[str, Memo] = {}
        self.table_epoch = 0
        self.started = time.monotonic()
        self._write_lock = asyncio.Lock()  # conflict decision + row write are one step across all objects
        # The table as last read, kept current with our own writes (under the write lock): a thousand passes
        # at start-up share a few reads; hand edits are seen within TABLE_CACHE_SECONDS.
        self._table: list[TableRow] | None = None
        self._table_at = 0.0
        self._object_locks: dict[str, asyncio.Lock] = {}
        self._wakers: dict[str, asyncio.Event] = {}
        fleet.on_change = self.wake_all
        self._last_gc = time.monotonic()
        metrics.conditions_source = self.condition_counts

    # -- bookkeeping from the watch ------------------------------------------------------------------

    def observe(self, body: Mapping[str, Any]) -> Known:
        meta = body.get("metadata", {})
        spec = dict(body.get("spec") or {})
        prior = self.known.get(str(meta.get("uid")))
        if prior is not None and prior.spec == spec:
            prior.deleting = bool(meta.get("deletionTimestamp"))
            return prior
        known = Known(
            uid=str(meta.get("uid")),
            namespace=str(meta.get("namespace")),
            name=str(meta.get("name")),
            created=str(meta.get("creationTimestamp") or ""),
            spec=spec,
            deleting=bool(meta.get("deletionTimestamp")),
        )
        self.known[known.uid] = known
        return known

    def forget(self, uid: str) -> None:
        self.known.pop(uid, None)
        self.memos.pop(uid, None)
        self._object_locks.pop(uid, None)
        self._wakers.pop(uid, None)

    def memo(self, uid: str) -> Memo:
        return self.memos.setdefault(uid, Memo())

    def condition_counts(self) -> dict[tuple[str, str, str], int]:
        counts: dict[tuple[str, str, str], int] = {}
        for memo in self.memos.values():
            for ctype, (status, reason) in memo.last_conditions.items():
                counts[(ctype, status, reason)] = counts.get((ctype, status, reason), 0) + 1
        return counts

    def waker(self, uid: str) -> asyncio.Event:
        return self._wakers.setdefault(uid, asyncio.Event())

    def wake_all(self) -> None:
        """Something every SipSocket may care about changed (proxy fleet, table): each checks `due`."""
        for event in self._wakers.values():
            event.set()

    def _table_changed(self) -> None:
        """Only SipSockets waiting for an endpoint or a slot care; waking all would cost a thousand wake-ups
        per write at start-up."""
        self.table_epoch += 1
        for uid, memo in self.memos.items():
            if memo.blocked and uid in self._wakers:
                self._wakers[uid].set()

    def busy(self, uid: str) -> bool:
        lock = self._object_locks.get(uid)
        return lock is not None and lock.locked()

    def seconds_until_due(self, uid: str) -> float:
        memo = self.memo(uid)
        resync = self.settings.resync_period
        if memo.last_run == 0.0:
            return resync
        wait = resync if memo.healthy else min(2.0 ** min(memo.failures, 5), 30.0, resync)
        return max(0.05, memo.last_run + wait - time.monotonic())

    def due(self, uid: str) -> bool:
        """Should the periodic check run a full pass for this object now?"""
        memo = self.memo(uid)
        lock = self._object_locks.get(uid)
        if lock is not None and lock.locked():
            return False  # a pass is running right now
        elapsed = time.monotonic() - memo.last_run
        if memo.last_run == 0.0:
            return False  # never reconciled here: kopf's resume/create handler is about to run
        if elapsed >= self.settings.resync_period or memo.fleet_epoch != self.fleet.epoch:
            return True
        if memo.blocked and memo.table_epoch != self.table_epoch:
            return True
        if not memo.healthy:
            return elapsed >= min(2.0 ** min(memo.failures, 5), 30.0)
        return False

    # -- the pass ------------------------------------------------------------------------------------

    async def reconcile(self, body: Mapping[str, Any]) -> Result:
        known = self.observe(body)
        lock = self._object_locks.setdefault(known.uid, asyncio.Lock())
        async with lock:
            memo = self.memo(known.uid)
            memo.fleet_epoch, memo.table_epoch = self.fleet.epoch, self.table_epoch
            memo.last_run = time.monotonic()
            try:
                outcome, socket = await self._outcome(known, body)
            finally:
                memo.last_run = time.monotonic()
            status = body.get("status") or {}
            generation = int(body.get("metadata", {}).get("generation") or 0)
            new = cond.conditions(outcome)
            previous = memo.written_conditions
            if previous is None:
                previous = status.get("conditions")
            merged, changed = cond.merge(previous, new, generation, now_rfc3339())
            memo.written_conditions = merged
            ready = next(c for c in new if c.type == cond.READY)
            memo.healthy = ready.status == "True"
            memo.blocked = not outcome.accepted and outcome.accepted_reason != "InvalidSpec"
            memo.failures = 0 if memo.healthy else memo.failures + 1
            memo.last_conditions = {c.type: (c.status, c.reason) for c in new}
            self.metrics.reconciles.inc(result="ready" if memo.healthy else "not_ready")
            if not memo.healthy:
                self.metrics.errors.inc(reason=ready.reason)
            new_status: dict[str, Any] = {
                "observedGeneration": generation,
                "port": parse_row(socket, None, None, None, None).port if socket else None,
                "socket": socket,
                "conditions": merged,
                "listeners": cond.listeners(outcome.pods) if outcome.accepted else [],
            }
            return Result(new_status, changed)

    async def _outcome(self, known: Known, body: Mapping[str, Any]) -> tuple[cond.Outcome, str | None]:
        try:
            desired = validate(known.spec)
        except SpecError as exc:
            await self._drop_row(known.uid)
            return cond.Outcome(False, "InvalidSpec", str(exc)), None

        await self.fleet.discover_all()
        try:
            async with self._write_lock:
                rows = await self._drop_orphans_locked(await self._rows_locked())
                verdict = self._verdict(known, desired, rows)
                if not verdict.accepted:
                    outcome = cond.Outcome(False, "EndpointConflict", verdict.message)
                    await self._drop_row_locked(known.uid)
                    return outcome, desired.socket
                full = self._capacity_exceeded(known.uid, rows)
                if full is not None:
                    await self._drop_row_locked(known.uid)
                    return cond.Outcome(False, "CapacityExceeded", full), desired.socket
                generation = int(body.get("metadata", {}).get("generation") or 0)
                mine = [r for r in rows if r.owner_uid == known.uid]
                if len(mine) == 1 and same_row(mine[0].columns(), desired.row):
                    written = Written(mine[0].id, changed=False)
                else:
                    written = await self.store.write(
                        known.uid, known.namespace, known.name, generation, desired.row
                    )
                    self._cache_write(known, written.row_id, desired.row)
                if written.changed:
                    # Rows changed: blocked objects may now be free (e.g. our old endpoint was released).
                    self._table_changed()
                wanted_sockets = {r.socket for r in rows if r.owner_uid != known.uid} | {desired.socket}
        except DatabaseUnavailable as exc:
            self._table = None
            log.warning("database unavailable while reconciling %s/%s: %s", known.namespace, known.name, exc)
            previous = _condition(body, cond.ACCEPTED)
            if (
                previous
                and previous.get("status") == "False"
                and previous.get("reason")
                in (
                    "EndpointConflict",
                    "CapacityExceeded",
                )
            ):
                return cond.Outcome(False, str(previous["reason"]), str(previous.get("message", ""))), (
                    desired.socket
                )
            pods = await self._observe_pods(desired, None, force_reload=False)
            return (
                cond.Outcome(
                    True,
                    accepted_message="spec is valid (endpoint conflicts unchecked: database unavailable)",
                    programmed=False,
                    programmed_reason="DatabaseUnavailable",
                    programmed_message=f"the proxy database is unavailable ({exc}); retrying",
                    pods=pods,
                ),
                desired.socket,
            )
        pods = await self._observe_pods(desired, wanted_sockets, force_reload=written.changed)
        return (
            cond.Outcome(
                True,
                accepted_message=verdict.message,
                programmed=True,
                programmed_message=f"row {written.row_id} of {self.settings.table_name}: {desired.socket}",
                pods=pods,
            ),
            desired.socket,
        )

    def _verdict(self, known: Known, desired: DesiredSocket, rows: Sequence[TableRow]) -> Verdict:
        me_programmed = any(r.owner_uid == known.uid and row_key(r.socket) == desired.key for r in rows)
        me = Claim(known.uid, known.namespace, known.name, known.created, desired.key, me_programmed)
        return self.verdict_among(me, rows, self.known)

    def verdict_among(self, me: Claim, rows: Sequence[TableRow], known: Mapping[str, Known]) -> Verdict:
        """Does `me` get its endpoint, given the table, the proxies' static sockets and the other objects?"""
        claims: list[Claim] = []
        foreign: list[Foreign] = []
        for row in rows:
            key = row_key(row.socket)
            if key is None:
                continue
            if row.owner_uid is None:
                foreign.append(
                    Foreign(
                        key,
                        f"row {row.id} of table {self.settings.table_name} ({row.socket}, "
                        "not managed by the operator)",
                    )
                )
            elif row.owner_uid != me.uid:
                other = known.get(row.owner_uid)
                claims.append(
                    Claim(
                        row.owner_uid,
                        row.owner_namespace or "",
                        row.owner_name or "",
                        other.created if other else "",
                        key,
                        programmed=True,
                    )
                )
        for pod, text in self.fleet.static_sockets():
            key = row_key(text)
            if key is not None:
                foreign.append(Foreign(key, f"static socket {text} of proxy pod {pod}"))
        for other in known.values():
            if other.uid == me.uid or other.deleting:
                continue
            wanted = other.desired()
            if wanted is not None:
                claims.append(Claim(other.uid, other.namespace, other.name, other.created, wanted.key))
        return decide(me, claims, foreign)

    def _capacity_exceeded(self, uid: str, rows: Sequence[TableRow]) -> str | None:
        capacity = self.fleet.capacity()
        if capacity is None or any(r.owner_uid == uid for r in rows):
            return None
        distinct = {(r.socket, r.advertised, r.tag, r.flags, r.tos) for r in rows}
        if len(distinct) + 1 > capacity:
            return (
                f"the proxies have max_sockets={capacity} and {len(distinct)} sockets are in the table; "
                "delete a SipSocket or raise sockets_mgm.max_sockets"
            )
        return None

    async def _drop_row(self, uid: str) -> None:
        try:
            async with self._write_lock:
                await self._drop_row_locked(uid)
        except DatabaseUnavailable as exc:
            log.warning("cannot remove the row of %s: %s", uid, exc)

    async def _drop_row_locked(self, uid: str) -> None:
        if await self.store.remove(uid):
            self._cache_remove(uid)
            self._table_changed()
            await self.fleet.reload_all()

    async def _rows_locked(self) -> list[TableRow]:
        if self._table is None or time.monotonic() - self._table_at > TABLE_CACHE_SECONDS:
            self._table = None
            self._table = await self.store.snapshot()
            self._table_at = time.monotonic()
        return self._table

    def _cache_remove(self, uid: str) -> None:
        if self._table is not None:
            self._table = [r for r in self._table if r.owner_uid != uid]

    def _cache_write(self, known: Known, row_id: int, row: Row) -> None:
        if self._table is None:
            return
        kept = [r for r in self._table if r.owner_uid != known.uid and r.id != row_id]
        owner = {"owner_uid": known.uid, "owner_namespace": known.namespace, "owner_name": known.name}
        kept.append(TableRow(row_id, **row.as_dict(), **owner))
        self._table = kept

    async def _observe_pods(
        self, desired: DesiredSocket, table: set[str | None] | None, force_reload: bool
    ) -> list[cond.PodResult]:
        """`table`: the socket texts the table has (None when unknown: the database is down)."""
        wanted = {t for t in table if row_key(t) is not None} if table is not None else None

        async def one(pod: ProxyPod) -> cond.PodResult:
            try:
                if force_reload:
                    await pod.reload()
                listed = await pod.listing()
                if wanted is not None and self._needs_reload(listed, desired, wanted, force_reload):
                    await pod.reload()
                    listed = await pod.listing()
            except (Unreachable, MIError) as exc:
                return cond.PodResult(pod.name, reachable=False, error=str(exc))
            state, error = listed.state_of(desired.socket, desired.key)
            return cond.PodResult(pod.name, reachable=True, state=state, error=error)

        return list(await asyncio.gather(*(one(p) for p in self.fleet.ready())))

    @staticmethod
    def _needs_reload(
        listed: Listed, desired: DesiredSocket, wanted: set[str | None] | None, done: bool
    ) -> bool:
        if done:
            return listed.state_of(desired.socket, desired.key)[0] == cond.PENDING
        if listed.state_of(desired.socket, desired.key)[0] != cond.LISTENING:
            return True
        # The pod serves something the table no longer has (a missed reload after a delete), or lacks a row.
        return wanted is not None and {t for t in listed.entries if row_key(t) is not None} != wanted

    def _orphans(self, rows: Sequence[TableRow]) -> list[TableRow]:
        """Rows owned by SipSockets of our namespace that no longer exist (finalizer removed by force, or
        the database kept while the cluster was rebuilt). Certain at once when the name now belongs to
        another uid; otherwise only after a resync period of uptime, so the watch has listed every object."""
        now = time.monotonic()
        warm = now - self.started >= self.settings.resync_period
        sweep = warm and now - self._last_gc >= self.settings.resync_period
        if sweep:
            self._last_gc = now
        names = {(k.namespace, k.name) for k in self.known.values()}
        return [
            r
            for r in rows
            if r.owner_uid is not None
            and r.owner_namespace == self.settings.namespace
            and r.owner_uid not in self.known
            and (sweep or (r.owner_namespace, r.owner_name) in names)
        ]

    async def _drop_orphans_locked(self, rows: list[TableRow]) -> list[TableRow]:
        orphans = self._orphans(rows)
        for row in orphans:
            log.warning(
                "removing row %s (%s) of SipSocket %s/%s uid %s, which no longer exists",
                row.id,
                row.socket,
                row.owner_namespace,
                row.owner_name,
                row.owner_uid,
            )
            await self._drop_row_locked(str(row.owner_uid))
        if orphans:
            self._table = None
            return await self._rows_locked()
        return rows

    # -- deletion ------------------------------------------------------------------------------------

    async def finalize(self, uid: str) -> dict[str, str]:
        """Remove the row and reload the proxies. Raises DatabaseUnavailable (the finalizer stays)."""
        lock = self._object_locks.setdefault(uid, asyncio.Lock())
        async with lock:
            async with self._write_lock:
                try:
                    removed = await self.store.remove(uid)
                except DatabaseUnavailable:
                    self._table = None
                    raise
                if removed:
                    self._cache_remove(uid)
            errors = await self.fleet.reload_all() if removed else {}
        self.forget(uid)
        self._table_changed()
        return errors


def _condition(body: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for item in (body.get("status") or {}).get("conditions") or ():
        if isinstance(item, Mapping) and item.get("type") == ctype:
            return item
    return None


__all__ = ["EndpointKey", "Known", "Reconciler", "Result"]
