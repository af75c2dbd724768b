"""Reconcile one SipSocket, as a flat chain:

(a) gather a read-only `Snapshot`: the object, the table rows, the fleet's static sockets and capacity, the
    other known objects;
(b) run `checks.CHAIN` on it (spec -> endpoint conflict -> capacity);
(c) write: the owned row, or its removal (and rows whose SipSocket is gone, `orphans`);
(d) observe the fleet: `sockets_reload` where needed (`drift`), `sockets_list` per ready pod;
(e) write the status through the one `StatusSink`.

Only "read the table, decide conflicts, write the row" (a's table part to c) runs under the table lock, so two
objects cannot both win an endpoint; no MI call is made while it is held. Decisions are pure functions of
`checks`, `orphans`, `drift`, `schedule` and `conditions`; this module only wires them to I/O.
Level-triggered: every pass recomputes the whole status, so a pass interrupted anywhere is simply repeated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from sipoperator import conditions as cond
from sipoperator import orphans, schedule
from sipoperator.checks import INVALID_SPEC, Refusal, accepted_message, first_refusal
from sipoperator.drift import needs_reload, table_sockets
from sipoperator.metrics import Metrics
from sipoperator.proxies import Fleet, MIError, ProxyPod, Unreachable
from sipoperator.settings import Settings
from sipoperator.snapshot import Known, Snapshot
from sipoperator.spec import DesiredSocket, EndpointKey, Row, same_row
from sipoperator.status import StatusSink
from sipoperator.store import DatabaseUnavailable, Store, TableRow, Written

log = logging.getLogger(__name__)
TABLE_CACHE_SECONDS = 2.0
Memo = schedule.Memo


@dataclass(frozen=True)
class Result:
    status: dict[str, Any]
    changed: list[cond.Condition]


@dataclass(frozen=True)
class TableStep:
    """What (a)-(c) found and did under the table lock."""

    rows: Sequence[TableRow] | None  # the table after our writes; None when it could not be read
    refusal: Refusal | None
    written: Written | None = None  # our row, when accepted and written (or found as wanted)
    removed: bool = False  # rows were removed (ours or orphans): the proxies need a reload
    error: str | None = None  # the database failed somewhere in the step


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    def __init__(
        self, settings: Settings, store: Store, fleet: Fleet, metrics: Metrics, status: StatusSink
    ) -> None:
        self.settings = settings
        self.store = store
        self.fleet = fleet
        self.metrics = metrics
        self.status = status
        self.known: dict[str, Known] = {}
        self.memos: dict[str, Memo] = {}
        self.table_epoch = 0
        self.started = time.monotonic()
        self.table_lock = asyncio.Lock()  # conflict decision + row write are one step across all objects
        # The table as last read, kept current with our own writes (under the table lock): a thousand passes
        # at start-up share a few reads; hand edits are seen within TABLE_CACHE_SECONDS.
        self._table: list[TableRow] | None = None
        self._table_at = 0.0
        self._object_locks: dict[str, asyncio.Lock] = {}
        self._wakers: dict[str, asyncio.Event] = {}
        fleet.on_change = self.wake_all
        self._last_sweep = self.started
        metrics.conditions_source = self.condition_counts

    # -- bookkeeping from the watch ------------------------------------------------------------------

    def observe(self, body: Mapping[str, Any]) -> Known:
        meta = body.get("metadata", {})
        spec = dict(body.get("spec") or {})
        prior = self.known.get(str(meta.get("uid")))
        if prior is not None and prior.spec == spec:
            prior.deleting = bool(meta.get("deletionTimestamp"))
            return prior
        known = Known.from_body(body)
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

    # -- scheduling (the decisions are schedule.py's) ------------------------------------------------

    def waker(self, uid: str) -> asyncio.Event:
        return self._wakers.setdefault(uid, asyncio.Event())

    def wake_all(self) -> None:
        """Something every SipSocket may care about changed (the proxy fleet): each checks `due`."""
        for event in self._wakers.values():
            event.set()

    def _table_changed(self) -> None:
        self.table_epoch += 1
        for uid, memo in self.memos.items():
            if schedule.woken_by_table_change(memo) and uid in self._wakers:
                self._wakers[uid].set()

    def busy(self, uid: str) -> bool:
        lock = self._object_locks.get(uid)
        return lock is not None and lock.locked()

    def seconds_until_due(self, uid: str) -> float:
        return schedule.seconds_until_due(self.memo(uid), time.monotonic(), self.settings.resync_period)

    def due(self, uid: str) -> bool:
        """Should the keeper run a full pass for this object now?"""
        return schedule.due(
            self.memo(uid),
            time.monotonic(),
            self.settings.resync_period,
            self.fleet.epoch,
            self.table_epoch,
            running=self.busy(uid),
        )

    # -- the pass ------------------------------------------------------------------------------------

    async def reconcile(self, body: Mapping[str, Any]) -> Result:
        known = self.observe(body)
        async with self._object_locks.setdefault(known.uid, asyncio.Lock()):
            memo = self.memo(known.uid)
            schedule.started(memo, time.monotonic(), self.fleet.epoch, self.table_epoch)
            generation = int(body.get("metadata", {}).get("generation") or 0)
            await self.fleet.discover_all()  # (a) the fleet's part: MI calls, before the table lock
            step = await self._decide_and_write(known, generation)  # (a) the table's part, (b), (c)
            outcome = await self._observe(known, step, body)  # (d)
            return await self._report(known, body, memo, outcome)  # (e)

    async def _decide_and_write(self, known: Known, generation: int) -> TableStep:
        async with self.table_lock:
            removed, rows, error = False, None, None
            try:
                rows = await self._read_table_locked()
                gone = self._orphans(rows)
                for row in gone:
                    log.warning(
                        "removing row %s (%s) of SipSocket %s/%s uid %s, which no longer exists",
                        row.id,
                        row.socket,
                        row.owner_namespace,
                        row.owner_name,
                        row.owner_uid,
                    )
                    removed = await self._remove_locked(str(row.owner_uid)) or removed
                rows = [r for r in rows if r not in gone]
            except DatabaseUnavailable as exc:
                rows, error = None, str(exc)
            snap = Snapshot(
                subject=known,
                rows=rows,
                static=self.fleet.static_sockets(),
                capacity=self.fleet.capacity(),
                others=MappingProxyType(self.known),
                table_name=self.settings.table_name,
            )
            refusal = first_refusal(snap)
            try:
                if refusal is not None or known.wanted is None:
                    if rows is None or any(r.owner_uid == known.uid for r in rows):
                        removed = await self._remove_locked(known.uid) or removed
                    return TableStep(rows, refusal, removed=removed, error=error)
                if rows is None:
                    return TableStep(rows, refusal, removed=removed, error=error)
                written = await self._write_locked(known, known.wanted, rows, generation)
            except DatabaseUnavailable as exc:
                return TableStep(rows, refusal, removed=removed, error=str(exc))
            kept = [r for r in rows if r.owner_uid != known.uid]
            return TableStep(kept, refusal, written=written, removed=removed, error=error)

    async def _observe(self, known: Known, step: TableStep, body: Mapping[str, Any]) -> cond.Outcome:
        """(d): the fleet after the table lock is released."""
        wanted, refusal = known.wanted, step.refusal
        if refusal is not None and (refusal.reason == INVALID_SPEC or step.error is None):
            if step.removed:
                await self.fleet.reload_all()
            return cond.refused(refusal.reason, refusal.message)
        assert wanted is not None  # every spec that is not valid is refused by the chain
        if step.error is not None or step.rows is None or step.written is None:
            log.warning(
                "database unavailable while reconciling %s/%s: %s", known.namespace, known.name, step.error
            )
            standing = cond.standing_refusal(_condition(body, cond.ACCEPTED))
            if step.removed:
                await self.fleet.reload_all()
            if standing is not None:
                return standing
            pods = await self._observe_pods(wanted, None, force_reload=False)
            return cond.database_down(step.error or "unknown error", pods)
        table = table_sockets([*(r.socket for r in step.rows), wanted.socket])
        pods = await self._observe_pods(wanted, table, force_reload=step.written.changed or step.removed)
        return cond.Outcome(
            True,
            accepted_message=accepted_message(wanted),
            programmed=True,
            programmed_message=f"row {step.written.row_id} of {self.settings.table_name}: {wanted.socket}",
            pods=pods,
        )

    async def _report(
        self, known: Known, body: Mapping[str, Any], memo: Memo, outcome: cond.Outcome
    ) -> Result:
        """(e): conditions, metrics and the status, written once."""
        current = body.get("status") or {}
        generation = int(body.get("metadata", {}).get("generation") or 0)
        new = cond.conditions(outcome)
        previous = memo.written_status.get("conditions") if memo.written_status else current.get("conditions")
        merged, changed = cond.merge(previous, new, generation, now_rfc3339())
        schedule.finished(memo, time.monotonic(), new)
        self.metrics.reconciles.inc(result="ready" if memo.healthy else "not_ready")
        if not memo.healthy:
            self.metrics.errors.inc(reason=next(c.reason for c in new if c.type == cond.READY))
        wanted = known.wanted
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "port": wanted.port if wanted else None,
            "socket": wanted.socket if wanted else None,
            "conditions": merged,
            "listeners": cond.listeners(outcome.pods) if outcome.accepted else [],
            # The `kubectl get -o wide` columns; None removes the field (a JSON merge patch).
            "advertised": wanted.row.advertised if wanted and outcome.accepted else None,
            "listening": cond.listening_count(outcome.pods) if outcome.accepted else None,
        }
        seen = [current] if memo.written_status is None else [current, memo.written_status]
        try:
            await self.status.write(known.namespace, known.name, status, seen)
        except Exception:
            memo.written_status = None  # what the API has is unknown now: compare with the body next time
            memo.healthy = False
            raise
        memo.written_status = status
        return Result(status, changed)

    # -- the table, under the table lock -------------------------------------------------------------

    async def _read_table_locked(self) -> list[TableRow]:
        if self._table is None or time.monotonic() - self._table_at > TABLE_CACHE_SECONDS:
            self._table = None
            try:
                self._table = await self.store.snapshot()
            except DatabaseUnavailable:
                self._table = None
                raise
            self._table_at = time.monotonic()
        return self._table

    async def _write_locked(
        self, known: Known, wanted: DesiredSocket, rows: Sequence[TableRow], generation: int
    ) -> Written:
        mine = [r for r in rows if r.owner_uid == known.uid]
        if len(mine) == 1 and same_row(mine[0].columns(), wanted.row):
            return Written(mine[0].id, changed=False)
        written = await self.store.write(known.uid, known.namespace, known.name, generation, wanted.row)
        self._cache_write(known, written.row_id, wanted.row)
        if written.changed:
            # Rows changed: blocked objects may now be free (e.g. our old endpoint was released).
            self._table_changed()
        return written

    async def _remove_locked(self, uid: str) -> bool:
        """Delete the row `uid` owns; the caller reloads the proxies once the lock is released."""
        try:
            removed = await self.store.remove(uid)
        except DatabaseUnavailable as exc:
            log.warning("cannot remove the row of %s: %s", uid, exc)
            self._table = None
            raise
        if removed:
            self._cache_remove(uid)
            self._table_changed()
        return removed

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

    def _orphans(self, rows: Sequence[TableRow]) -> list[TableRow]:
        now = time.monotonic()
        sweep = orphans.sweep_due(now, self.started, self._last_sweep, self.settings.resync_period)
        if sweep:
            self._last_sweep = now
        return orphans.orphaned(rows, self.known, self.settings.namespace, sweep)

    # -- the fleet, outside the table lock -----------------------------------------------------------

    async def _observe_pods(
        self, wanted: DesiredSocket, table: frozenset[str] | None, force_reload: bool
    ) -> list[cond.PodResult]:
        """`table`: the socket texts the table has (None when unknown: the database is down)."""

        async def one(pod: ProxyPod) -> cond.PodResult:
            try:
                if force_reload:
                    await pod.reload()
                listed = await pod.listing()
                if needs_reload(listed, wanted, table, reloaded=force_reload):
                    await pod.reload()
                    listed = await pod.listing()
            except (Unreachable, MIError) as exc:
                return cond.PodResult(pod.name, reachable=False, error=str(exc))
            state, error = listed.state_of(wanted.socket, wanted.key)
            return cond.PodResult(pod.name, reachable=True, state=state, error=error)

        return list(await asyncio.gather(*(one(p) for p in self.fleet.ready())))

    # -- deletion ------------------------------------------------------------------------------------

    async def finalize(self, uid: str) -> dict[str, str]:
        """Remove the row and reload the proxies. Raises DatabaseUnavailable (the finalizer stays)."""
        async with self._object_locks.setdefault(uid, asyncio.Lock()):
            async with self.table_lock:
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
