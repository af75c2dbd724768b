"""Reconcile one SipSocket, as a flat chain:

(a) gather a read-only `Snapshot`: the object, the Secrets its spec.tls references, where it is served
    (`placement`: spec.nodeSelector against the labels of the proxy pods' nodes) and its advertised address
    from a Service or the nodes (API reads, all before any lock), the table rows, the fleet's static sockets
    and capacity, the other known objects;
(b) run `checks.CHAIN` on it (spec -> endpoint conflict -> capacity), then `checks.resolve_refs` (the
    Secrets) and `domains.planned` (the tls_mgm row: from the Secret, else the last good one kept);
(c) write: the owned row, its placement entry and its tls_mgm row in one transaction, or their removal (and
    rows whose SipSocket is gone, `orphans`);
(d) observe the fleet: `tls_reload` on each pod that has not applied this object's domain row yet (before
    `sockets_reload`, so a new socket has its certificate when it starts listening), `sockets_reload` where
    needed (`drift`), `sockets_list` per ready pod;
(e) write the status (conditions, listeners, certificate) through the one `StatusSink`.

Only "read the table, decide conflicts, write the row" (a's table part to c) runs under the table lock, so two
objects cannot both win an endpoint; no MI or API call is made while it is held. Decisions are pure functions
of `checks`, `refs`, `domains`, `orphans`, `drift`, `schedule` and `conditions`; this module only wires them
to I/O.
Level-triggered: every pass recomputes the whole status, so a pass interrupted anywhere is simply repeated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol

from sipoperator import advertised, checks, domains, orphans, refs, schedule
from sipoperator import conditions as cond
from sipoperator.advertised import Resolved
from sipoperator.checks import INVALID_SPEC, Refusal, accepted_message, first_refusal, resolve_refs
from sipoperator.conflicts import Standings
from sipoperator.domains import DomainRow, same_domain
from sipoperator.drift import needs_reload, needs_tls_reload, table_sockets, tls_failure
from sipoperator.kube import KubeError
from sipoperator.metrics import Metrics
from sipoperator.nodes import NodeLabels
from sipoperator.placement import EVERYWHERE, Placement, SocketOptions, place
from sipoperator.proxies import Fleet, MIError, ProxyPod, Unreachable
from sipoperator.refs import Resolution, SecretRead, SecretState, SecretUnreadable
from sipoperator.settings import Settings
from sipoperator.snapshot import Known, Snapshot, TableIndex
from sipoperator.spec import DesiredSocket, EndpointKey, row_key, same_row
from sipoperator.status import StatusSink
from sipoperator.store import (
    NO_OPTIONS,
    DatabaseUnavailable,
    DomainOwner,
    Removed,
    RemoveOp,
    Store,
    TableRow,
    WriteOp,
    Written,
)

log = logging.getLogger(__name__)
TABLE_CACHE_SECONDS = 2.0
# A pass that reloads nothing may use a pod's listing asked for this long ago (and since the object's last
# pass and the table's last change): idle resyncs, a thousand a minute, share a few listings.
LISTING_SHARE_SECONDS = 1.0
STANDINGS_AFTER = 3  # lone steps that decide in full before the conflict standings are built again
# How often the nodes of SipSockets with spec.advertised.fromNode are read for a changed address (a changed
# Service is told by its watch): within this much, plus one pass, new messages carry the new address.
SOURCE_CHECK_SECONDS = 5.0
Memo = schedule.Memo


NOTHING_REMOVED = Removed(socket=False, domain=False)
# Table steps run as one batch at most (one transaction): bounds how long the lock and a transaction are held.
BATCH_MAX = 200


class SecretSource(Protocol):
    async def secret(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...


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
    removed: Removed = NOTHING_REMOVED  # rows removed (ours or orphans): the proxies need a reload
    error: str | None = None  # the database failed somewhere in the step
    error_reason: str = "DatabaseUnavailable"
    resolution: Resolution | None = None  # spec.tls's Secrets; None without spec.tls
    domain: DomainRow | None = None  # our tls_mgm row after the step (None: none, or unknown on error)
    unserved: bool = False  # accepted, but no certificate to serve: nothing written
    table: frozenset[str] | None = None  # the table's socket texts after the step (when written)


@dataclass
class _Request:
    """A pass's table step waiting for the table lock, and its answer; `known` None: a finalizer's removal
    of the rows of `uid` (nothing to decide)."""

    uid: str
    known: Known | None
    generation: int
    secrets: Mapping[str, SecretState]
    options: SocketOptions
    advertised_column: str | None
    done: asyncio.Future[TableStep]


class _Deferred:
    """The writes and removals a batch planned, each with the index of its step and, for a write, the
    provisional (negative) row id the cache holds until the transaction says the real one."""

    def __init__(self) -> None:
        self.ops: list[tuple[WriteOp | RemoveOp, int, int]] = []
        self.index = 0  # the step being planned

    def plan(self, op: WriteOp | RemoveOp) -> int:
        provisional = -1 - len(self.ops)
        self.ops.append((op, self.index, provisional))
        return provisional


def _merge(a: Removed, b: Removed) -> Removed:
    return Removed(a.socket or b.socket, a.domain or b.domain)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        fleet: Fleet,
        metrics: Metrics,
        status: StatusSink,
        secrets: SecretSource,
        nodes: NodeLabels | None = None,
    ) -> None:
        self.settings = settings
        self.nodes = nodes  # None: Nodes cannot be read (a SipSocket with a nodeSelector is served nowhere)
        self.store = store
        self.fleet = fleet
        self.metrics = metrics
        self.status = status
        self.secrets = secrets
        self.known: dict[str, Known] = {}
        self.memos: dict[str, Memo] = {}
        self.table_epoch = 0
        self.started = time.monotonic()
        self.table_lock = asyncio.Lock()  # conflict decision + row write are one step across all objects
        # The table as last read, kept current with our own writes (under the table lock): a thousand passes
        # at start-up share a few reads; hand edits are seen within TABLE_CACHE_SECONDS.
        self._table: list[TableRow] | None = None
        self._table_version = 0  # moves with every change of `_table`
        self._table_changed_at = 0.0  # when it last moved (monotonic)
        self._table_index: TableIndex | None = None  # `_table` by owner, kept with it
        self._table_sockets: frozenset[str] | None = None
        self._known_version = 0  # moves with every change of `known` that the conflict check sees
        self._standing: tuple[tuple[int, int, tuple[tuple[str, str], ...]], Standings] | None = None
        self._standings_missed = 0  # lone steps in a row that decided in full (`_standings`)
        self._requests: list[_Request] = []  # table steps waiting for the table lock (`_decide_and_write`)
        self._domain_owners: list[DomainOwner] = []  # read with the table, kept current the same way
        self._table_at = 0.0
        self._object_locks: dict[str, asyncio.Lock] = {}
        self._wakers: dict[str, asyncio.Event] = {}
        fleet.subscribe(self.wake_all)
        self._last_sweep = self.started
        metrics.conditions_source = self.condition_counts

    # -- bookkeeping from the watch ------------------------------------------------------------------

    def observe(self, body: Mapping[str, Any]) -> Known:
        meta = body.get("metadata", {})
        spec = dict(body.get("spec") or {})
        prior = self.known.get(str(meta.get("uid")))
        if prior is not None and prior.spec == spec:
            deleting = bool(meta.get("deletionTimestamp"))
            if prior.deleting != deleting:
                prior.deleting = deleting
                self._known_version += 1
            return prior
        known = Known.from_body(body)
        self.known[known.uid] = known
        self._known_version += 1
        return known

    def forget(self, uid: str) -> None:
        if self.known.pop(uid, None) is not None:
            self._known_version += 1
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

    def _poke(self, uid: str) -> None:
        self.memo(uid).sources_changed = True
        if uid in self._wakers:
            self._wakers[uid].set()

    def service_changed(self, name: str) -> None:
        """A Service of the namespace changed (its load-balancer address...): the SipSockets that take their
        advertised address from it run a pass."""
        for uid, known in list(self.known.items()):
            source = known.wanted.advertised_from if known.wanted else None
            if source is not None and source.service == name:
                self._poke(uid)

    async def check_sources(self) -> None:
        """Read the nodes of the SipSockets whose advertised address comes from the nodes; wake those whose
        addresses changed since their last pass. A changed Service is told by its watch instead."""
        subjects = [
            (uid, known.wanted)
            for uid, known in list(self.known.items())
            if known.wanted is not None
            and known.wanted.advertised_from is not None
            and known.wanted.advertised_from.node_address is not None
        ]
        if not subjects or self.nodes is None:
            return
        names = {p.node for p in self.fleet.ready() if p.node}
        found = await self.nodes.nodes(names, max_age=0.0)
        for uid, wanted in subjects:
            assert wanted.advertised_from is not None
            now = advertised.from_nodes(wanted.advertised_from, found)
            memo = self.memo(uid)
            if memo.last_run and memo.advertised_seen is not None and now != memo.advertised_seen:
                log.info("the node addresses advertised by %s/%s changed", wanted.socket, uid)
                self._poke(uid)

    def secret_changed(self, name: str, version: str | None) -> None:
        """The Secret watch saw `name` at `version` (None: deleted): wake the SipSockets it concerns."""
        references = {uid: k.wanted.tls if k.wanted else None for uid, k in self.known.items()}
        seen = {uid: m.secret_versions for uid, m in self.memos.items()}
        for uid in refs.objects_woken(references, seen, name, version):
            self.memo(uid).refs_changed = True
            if uid in self._wakers:
                self._wakers[uid].set()

    def _table_changed(self) -> None:
        self.table_epoch += 1
        for uid, memo in self.memos.items():
            if schedule.woken_by_table_change(memo) and uid in self._wakers:
                self._wakers[uid].set()

    def busy(self, uid: str) -> bool:
        lock = self._object_locks.get(uid)
        return lock is not None and lock.locked()

    def idle(self) -> bool:
        """No pass of any SipSocket is running or waiting for the table."""
        if self._requests or self.table_lock.locked():
            return False
        return not any(lock.locked() for lock in self._object_locks.values())

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
            now = time.monotonic()
            # A listing of the pods asked for since this object's last pass, and since the table last changed,
            # and recently, is as good as a new one for a pass that reloads nothing (`_observe_pods`).
            since = max(memo.last_run, self._table_changed_at, now - LISTING_SHARE_SECONDS)
            schedule.started(memo, now, self.fleet.epoch, self.table_epoch)
            generation = int(body.get("metadata", {}).get("generation") or 0)
            await self.fleet.discover_all()  # (a) the fleet's part: MI calls, before the table lock
            secrets = await self.read_secrets(known)  # (a) the Secrets: API calls, before the table lock
            memo.secret_versions = refs.versions(secrets)
            # (a) Node and Service reads, before the table lock too
            placement = await self._placement(known.wanted)
            resolved = await self._advertised(known.wanted, memo)
            options = (
                placement.options(known.wanted.freebind, resolved.per_node) if known.wanted else NO_OPTIONS
            )
            # (a) the table's part, (b), (c)
            step = await self._decide_and_write(known, generation, secrets, options, resolved.column)
            outcome = await self._observe(known, step, body, memo, placement, since)  # (d)
            if resolved.pending and outcome.accepted and outcome.programmed:
                outcome = replace(outcome, advertised_pending=resolved.pending)
            return await self._report(known, body, memo, outcome, step, resolved.shown)  # (e)

    async def _placement(self, wanted: DesiredSocket | None) -> Placement:
        if wanted is None or wanted.node_selector is None:
            return EVERYWHERE
        nodes = {p.node for p in self.fleet.ready() if p.node}
        if self.nodes is None:
            return place(wanted.node_selector, {n: "the operator does not read Nodes" for n in nodes})
        return place(wanted.node_selector, await self.nodes.all(nodes))

    async def _advertised(self, wanted: DesiredSocket | None, memo: Memo) -> Resolved:
        """spec.advertised from a Service or the nodes (advertised.py); what was seen is kept for the watch of
        the sources (`sources.py`, `service_changed`), which wakes the object when it changes."""
        source = wanted.advertised_from if wanted else None
        if source is None:
            return Resolved()
        if self.nodes is None:
            return Resolved(pending="the operator does not read Services and Nodes")
        if source.service is not None:
            found = await self.nodes.service(self.settings.namespace, source.service)
            resolved = advertised.from_service(source, found)
        else:
            names = {p.node for p in self.fleet.ready() if p.node}
            resolved = advertised.from_nodes(source, await self.nodes.nodes(names, SOURCE_CHECK_SECONDS))
        memo.advertised_seen = resolved
        return resolved

    async def read_secrets(self, known: Known) -> dict[str, SecretState]:
        """The Secrets the object's spec.tls references, by name (API reads: never under the table lock)."""
        wanted = known.wanted
        if wanted is None or wanted.tls is None:
            return {}
        names = wanted.tls.secrets
        found = await asyncio.gather(*(self._read_secret(known.namespace, n) for n in names))
        return dict(zip(names, found, strict=True))

    async def _read_secret(self, namespace: str, name: str) -> SecretState:
        try:
            body = await self.secrets.secret(namespace, name)
        except KubeError as exc:
            log.warning("cannot read Secret %s/%s: %s", namespace, name, exc)
            return SecretUnreadable(str(exc))
        return SecretRead.from_body(body) if body is not None else None

    async def _decide_and_write(
        self,
        known: Known,
        generation: int,
        secrets: Mapping[str, SecretState],
        options: SocketOptions = NO_OPTIONS,
        advertised_column: str | None = None,
    ) -> TableStep:
        """(a)'s table part, (b) and (c), under the table lock. The step is queued: whoever holds the lock
        next runs every step queued by then, in order, as one batch (`_batch`), so passes that arrive
        together share one table read, one conflict standing and one transaction. `advertised_column`: the
        row's advertised address resolved from spec.advertised's source."""
        done = asyncio.get_running_loop().create_future()
        return await self._queued(
            _Request(known.uid, known, generation, secrets, options, advertised_column, done)
        )

    async def _queued(self, request: _Request) -> TableStep:
        self._requests.append(request)
        try:
            async with self.table_lock:
                while not request.done.done():
                    batch, self._requests = self._requests[:BATCH_MAX], self._requests[BATCH_MAX:]
                    await self._batch(batch)
        except BaseException:
            if request in self._requests:
                self._requests.remove(request)
            request.done.cancel()  # a batch already holding it skips it (its answer would go unread)
            raise
        return request.done.result()

    def steps_waiting(self) -> int:
        """Table steps queued for the table lock (the next batch, and what waits for the one after)."""
        return sum(1 for r in self._requests if not r.done.done())

    async def _batch(self, batch: list[_Request]) -> None:
        """Run the steps of `batch` under the table lock and answer each; an exception answers every step
        not answered yet (NotLeader: nothing more may be written), and a cancelled batch (its caller went)
        puts them back for the next holder of the lock."""
        try:
            answered = await self._steps(batch)
        except asyncio.CancelledError:
            self._requests[:0] = [r for r in batch if not r.done.done()]
            raise
        except Exception as exc:
            for r in batch:
                if not r.done.done():
                    r.done.set_exception(exc)
            return
        for r, step in answered:
            if not r.done.done():
                r.done.set_result(step)

    async def _steps(self, batch: list[_Request]) -> list[tuple[_Request, TableStep]]:
        """One table read (and orphan sweep) for the batch; then each step decides in order against the table
        as the steps before it left it, their writes and removals collected into ONE transaction. If that
        fails nothing was written: the steps run again one at a time, each with its own transaction, as
        they would have without batching (one bad row must not fail the others)."""
        batch = [r for r in batch if not r.done.cancelled()]
        removed, error = NOTHING_REMOVED, None
        try:
            rows, owners = await self._read_table_locked()
            gone = self._orphans(rows, owners)
            for uid in gone:
                log.warning("removing the rows of SipSocket uid %s, which no longer exists", uid)
                removed = _merge(removed, await self._remove_locked(uid))
            if gone and self._table is not None and any(r.owner_uid in gone for r in self._table):
                self._set_table([r for r in self._table if r.owner_uid not in gone])  # gone meanwhile
        except DatabaseUnavailable as exc:
            error = str(exc)
        if error is not None or len(batch) == 1:
            return [
                (r, await self._step(r, error, removed if i == 0 else NOTHING_REMOVED))
                for i, r in enumerate(batch)
            ]
        deferred = _Deferred()
        steps: list[TableStep] = []
        try:
            for i, r in enumerate(batch):
                deferred.index = i
                steps.append(await self._step(r, None, removed if i == 0 else NOTHING_REMOVED, deferred))
            done = await self.store.apply([op for op, _, _ in deferred.ops]) if deferred.ops else []
        except DatabaseUnavailable as exc:
            log.warning(
                "writing %d rows in one transaction failed (%s); writing them one by one",
                len(deferred.ops),
                exc,
            )
            self._set_table(None)  # read again: the planned rows were never written
            return [
                (r, await self._step(r, None, removed if i == 0 else NOTHING_REMOVED))
                for i, r in enumerate(batch)
            ]
        except BaseException:
            self._set_table(None)  # NotLeader, cancelled: what was planned is unknown to have been written
            raise
        changed = False
        real: dict[int, int] = {}
        for (op, index, provisional), answer in zip(deferred.ops, done, strict=True):
            step = steps[index]
            if isinstance(answer, Removed):
                steps[index] = replace(step, removed=_merge(step.removed, answer))
                changed = changed or bool(answer)
                continue
            assert isinstance(op, WriteOp)
            steps[index] = replace(step, written=answer)
            real[provisional] = answer.row_id
            self._own_domain(op.uid, op.namespace, op.name, op.domain, answer)
            changed = changed or answer.changed
        if self._table is not None:  # the real ids in place of the provisional ones (no standing changes)
            for i, row in enumerate(self._table):
                if row.id in real:
                    self._table[i] = replace(row, id=real[row.id])
            self._table_index = None  # built again with the real ids when next asked for
        self._table_changed_at = time.monotonic()  # committed now: listings from before may lack the rows
        if changed:
            self._table_changed()
        return list(zip(batch, steps, strict=True))

    async def _step(
        self, request: _Request, error: str | None, removed: Removed, deferred: _Deferred | None = None
    ) -> TableStep:
        """One SipSocket's decision and write against the cached table (read by `_steps`). With `deferred`
        its write or removal is only planned (the cache updated as if done) and the answer filled in by
        `_steps` once the batch's transaction committed."""
        if request.known is None:  # a finalizer's removal
            try:
                gone = await self._remove(request.uid, deferred)
            except DatabaseUnavailable as exc:
                return TableStep(None, None, removed=removed, error=str(exc), error_reason=exc.reason)
            return TableStep(None, None, removed=_merge(removed, gone))
        known, rows, current = request.known, None, None
        try:
            if error is None:
                rows, _ = await self._read_table_locked(fresh=deferred is None)
                wanted = known.wanted
                if (wanted is not None and wanted.tls is not None) or any(
                    o.owner_uid == known.uid for o in self._domain_owners
                ):
                    current = await self.store.domain_of(known.uid)
        except DatabaseUnavailable as exc:
            rows, error = None, str(exc)
        snap = Snapshot(
            subject=known,
            rows=rows,
            static=self.fleet.static_sockets(),
            capacity=self.fleet.capacity(),
            others=MappingProxyType(self.known),
            table_name=self.settings.table_name,
            secrets=MappingProxyType(dict(request.secrets)),
            standings=self._standings(rows, deferred is not None) if rows is not None else None,
            index=self._indexed() if rows is not None else None,
        )
        refusal = first_refusal(snap)
        resolution = resolve_refs(snap)
        step = TableStep(rows, refusal, removed=removed, error=error, resolution=resolution)
        try:
            wanted = known.wanted
            if refusal is not None or wanted is None:
                if rows is None or current is not None or self._own(known.uid):
                    step = replace(step, removed=_merge(removed, await self._remove(known.uid, deferred)))
                return step
            if rows is None:
                return step
            if wanted.advertised_from is not None:
                wanted = wanted.with_advertised(request.advertised_column)
            domain: DomainRow | None = None
            if wanted.tls is not None and resolution is not None:
                domain = domains.planned(known.namespace, known.name, wanted, resolution, current)
                if domain is None:  # no certificate to serve: the socket is not programmed
                    if self._own(known.uid):
                        step = replace(step, removed=_merge(removed, await self._remove(known.uid, deferred)))
                    kept = [r for r in rows if r.owner_uid != known.uid]
                    return replace(step, rows=kept, unserved=True)
            written = await self._write_locked(
                known, wanted, rows, request.generation, domain, current, request.options, deferred
            )
        except DatabaseUnavailable as exc:
            return replace(step, error=str(exc), error_reason=exc.reason)
        kept = [r for r in rows if r.owner_uid != known.uid]
        # The table the proxies load after this step: what the steps before it left, and this one's row.
        return replace(step, rows=kept, written=written, domain=domain, table=self._sockets())

    async def _observe(
        self,
        known: Known,
        step: TableStep,
        body: Mapping[str, Any],
        memo: Memo,
        placement: Placement = EVERYWHERE,
        since: float | None = None,
    ) -> cond.Outcome:
        """(d): the fleet after the table lock is released."""
        wanted, refusal = known.wanted, step.refusal
        refs_now = _refs(step)
        if refusal is not None and (refusal.reason == INVALID_SPEC or step.error is None):
            if step.removed:
                await self.fleet.reload_all(tls=step.removed.domain)
            return cond.refused(refusal.reason, refusal.message, refs_now)
        assert wanted is not None  # every spec that is not valid is refused by the chain
        if step.unserved and refs_now is not None:
            if step.removed:
                await self.fleet.reload_all(tls=step.removed.domain)
            return cond.unresolved(accepted_message(wanted), refs_now)
        if step.error is not None or step.rows is None or step.written is None:
            log.warning(
                "database problem while reconciling %s/%s: %s", known.namespace, known.name, step.error
            )
            standing = cond.standing_refusal(_condition(body, cond.ACCEPTED))
            if step.removed:
                await self.fleet.reload_all(tls=step.removed.domain)
            if standing is not None:
                return replace(standing, refs=refs_now)
            pods = await self._observe_pods(wanted, None, False, None, False, memo, placement)
            return cond.database_down(step.error or "unknown error", pods, step.error_reason, refs_now)
        table = step.table
        if table is None:
            table = table_sockets([*(r.socket for r in step.rows), wanted.socket])
        pods = await self._observe_pods(
            wanted,
            table,
            force_reload=step.written.changed or step.removed.socket,
            domain=step.domain,
            tls_force=step.removed.domain or step.written.domain_changed,
            memo=memo,
            placement=placement,
            since=max(since, self._table_changed_at) if since is not None else None,
        )
        return cond.Outcome(
            True,
            accepted_message=accepted_message(wanted),
            programmed=True,
            programmed_message=_programmed_message(
                self.settings.table_name, step.written, wanted, step.domain
            ),
            pods=pods,
            refs=refs_now,
        )

    async def _report(
        self,
        known: Known,
        body: Mapping[str, Any],
        memo: Memo,
        outcome: cond.Outcome,
        step: TableStep,
        advertised_shown: str | None = None,
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
        seen = [current] if memo.written_status is None else [current, memo.written_status]
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "port": wanted.port if wanted else None,
            "socket": wanted.socket if wanted else None,
            "conditions": merged,
            "listeners": cond.listeners(outcome.pods) if outcome.accepted else [],
            "certificate": _certificate(step, seen[-1]),
            # The `kubectl get -o wide` columns; None removes the field (a JSON merge patch).
            "advertised": (
                (advertised_shown if wanted.advertised_from else wanted.row.advertised)
                if wanted and outcome.accepted
                else None
            ),
            "listening": cond.listening_count(outcome.pods) if outcome.accepted else None,
        }
        try:
            await self.status.write(known.namespace, known.name, status, seen)
        except Exception:
            memo.written_status = None  # what the API has is unknown now: compare with the body next time
            memo.healthy = False
            raise
        memo.written_status = status
        return Result(status, changed)

    # -- the table, under the table lock -------------------------------------------------------------

    async def _read_table_locked(self, fresh: bool = True) -> tuple[list[TableRow], list[DomainOwner]]:
        """The cached table, read again when older than TABLE_CACHE_SECONDS (unless `fresh` is False: inside
        a batch, whose planned rows are in the cache only)."""
        if self._table is None or (fresh and time.monotonic() - self._table_at > TABLE_CACHE_SECONDS):
            try:
                rows = await self.store.snapshot()
                self._domain_owners = await self.store.domain_owners()
            except DatabaseUnavailable:
                self._set_table(None)
                raise
            if rows != self._table:
                self._set_table(rows)
            self._table_at = time.monotonic()
        assert self._table is not None
        return self._table, self._domain_owners

    def _set_table(self, rows: list[TableRow] | None, index: TableIndex | None = None) -> None:
        """`index`: `rows` indexed already (else it is built when first asked for)."""
        self._table = rows
        self._table_index = index
        self._table_sockets = None
        self._table_version += 1
        self._table_changed_at = time.monotonic()

    def _indexed(self) -> TableIndex | None:
        if self._table is None:
            return None
        if self._table_index is None:
            self._table_index = TableIndex(self._table)
        return self._table_index

    def _own(self, uid: str) -> list[TableRow]:
        index = self._indexed()
        return list(index.owned_by(uid)) if index is not None else []

    def _sockets(self) -> frozenset[str]:
        """The socket texts of the cached table (what a proxy loads), kept until the table changes."""
        if self._table_sockets is None:
            self._table_sockets = table_sockets(r.socket for r in self._table or ())
        return self._table_sockets

    def _standings(self, rows: Sequence[TableRow], many: bool) -> Standings | None:
        """Every SipSocket's standing for the conflict check (conflicts.Standings), kept while the table (as
        cached), the objects and the static sockets stay the same: a resync that finds nothing changed, and
        each step of a batch after the first, look their verdict up. Building them costs about two checks
        in full, so a lone step (`many` False: a new SipSocket applied while the rest are idle) decides in
        full instead, until STANDINGS_AFTER such steps in a row found them stale."""
        static = self.fleet.static_sockets()
        key = (self._table_version, self._known_version, tuple(static))
        if self._standing is None or self._standing[0] != key:
            if not many and self._standings_missed < STANDINGS_AFTER:
                self._standings_missed += 1
                return None
            self._standing = (key, checks.standings(rows, self.known, static, self.settings.table_name))
            self._standings_missed = 0
        return self._standing[1]

    async def _write_locked(
        self,
        known: Known,
        wanted: DesiredSocket,
        rows: Sequence[TableRow],
        generation: int,
        domain: DomainRow | None,
        current: DomainRow | None,
        options: SocketOptions = NO_OPTIONS,
        deferred: _Deferred | None = None,
    ) -> Written:
        mine = self._own(known.uid)
        if (
            len(mine) == 1
            and same_row(mine[0].columns(), wanted.row)
            and mine[0].options == options
            and same_domain(current, domain)
        ):
            return Written(mine[0].id, changed=False)
        if deferred is not None:
            op = WriteOp(known.uid, known.namespace, known.name, generation, wanted.row, domain, options)
            provisional = deferred.plan(op)
            self._cache_write(known, provisional, wanted, options)
            return Written(provisional, changed=True)  # `_steps` puts the real answer in
        written = await self.store.write(
            known.uid, known.namespace, known.name, generation, wanted.row, domain, options
        )
        self._cache_write(known, written.row_id, wanted, options)
        self._own_domain(known.uid, known.namespace, known.name, domain, written)
        if written.changed:
            # Rows changed: blocked objects may now be free (e.g. our old endpoint was released).
            self._table_changed()
        return written

    def _own_domain(
        self, uid: str, namespace: str, name: str, domain: DomainRow | None, written: Written
    ) -> None:
        self._domain_owners = [o for o in self._domain_owners if o.owner_uid != uid]
        if domain is not None and written.domain_id is not None:
            self._domain_owners.append(DomainOwner(written.domain_id, uid, namespace, name))

    async def _remove(self, uid: str, deferred: _Deferred | None) -> Removed:
        if deferred is None:
            return await self._remove_locked(uid)
        deferred.plan(RemoveOp(uid))
        self._cache_remove(uid)
        return NOTHING_REMOVED  # `_steps` merges in what the transaction removed

    async def _remove_locked(self, uid: str) -> Removed:
        """Delete the rows `uid` owns; the caller reloads the proxies once the lock is released."""
        try:
            removed = await self.store.remove(uid)
        except DatabaseUnavailable as exc:
            log.warning("cannot remove the rows of %s: %s", uid, exc)
            self._set_table(None)
            raise
        if removed:
            self._cache_remove(uid)
            self._table_changed()
        return removed

    def _cache_remove(self, uid: str) -> None:
        if self._table is not None:
            index = self._table_index
            if index is not None:
                index.drop_owner(uid)
            self._set_table([r for r in self._table if r.owner_uid != uid], index)
        self._domain_owners = [o for o in self._domain_owners if o.owner_uid != uid]

    def _cache_write(
        self, known: Known, row_id: int, wanted: DesiredSocket, options: SocketOptions = NO_OPTIONS
    ) -> None:
        if self._table is None:
            return
        kept: list[TableRow] = []
        moved = False  # the object had a row at another endpoint: its standing changes, not only its rank
        replaced = False  # a row of another owner had this id (deleted and its id reused meanwhile)
        for r in self._table:
            if r.owner_uid == known.uid:
                moved = moved or row_key(r.socket) != wanted.key
            elif r.id != row_id:
                kept.append(r)
            else:
                replaced = True
        c = wanted.row.as_dict()
        owner = (known.uid, known.namespace, known.name)
        columns = (c["socket"] or "", c["advertised"], c["tag"], c["flags"], c["tos"])
        row = TableRow(
            row_id,
            *columns,
            *owner,
            freebind=options.freebind,
            nodes=options.nodes,
            node_advertised=options.advertised,
        )
        kept.append(row)
        index = self._table_index if not replaced else None
        if index is not None:
            index.drop_owner(known.uid)
            index.put(row)
        before = self._table_version
        self._set_table(kept, index)
        # A holder that got its row keeps every standing as it was (Standings.promote): no rebuild.
        standing = self._standing
        if (
            standing is not None
            and standing[0][0] == before
            and not moved
            and standing[1].promote(known.uid, wanted.key)
        ):
            self._standing = ((self._table_version, *standing[0][1:]), standing[1])

    def _orphans(self, rows: Sequence[TableRow], owners: Sequence[DomainOwner]) -> list[str]:
        """The uids whose rows (socket or tls_mgm) belong to a SipSocket that no longer exists."""
        now = time.monotonic()
        sweep = orphans.sweep_due(now, self.started, self._last_sweep, self.settings.resync_period)
        if sweep:
            self._last_sweep = now
        namespace = self.settings.namespace
        gone = [
            *(str(r.owner_uid) for r in orphans.orphaned(rows, self.known, namespace, sweep)),
            *(o.owner_uid for o in orphans.orphaned(owners, self.known, namespace, sweep)),
        ]
        return list(dict.fromkeys(gone))

    # -- the fleet, outside the table lock -----------------------------------------------------------

    async def _observe_pods(
        self,
        wanted: DesiredSocket,
        table: frozenset[str] | None,
        force_reload: bool,
        domain: DomainRow | None,
        tls_force: bool,
        memo: Memo,
        placement: Placement = EVERYWHERE,
        since: float | None = None,
    ) -> list[cond.PodResult]:
        """`table`: the socket texts the table has (None when unknown: the database is down). `domain`: our
        tls_mgm row (None: none); a pod that has not applied it gets `tls_reload` first, and every pod does
        with `tls_force` (tls_mgm changed in this pass). A pod whose reload left our domain out is Failed.
        `since`: a pod's listing asked for since then will do for a pod this pass reloads nothing on."""
        ready = self.fleet.ready()
        memo.tls_applied = {k: v for k, v in memo.tls_applied.items() if k in {p.key for p in ready}}
        digest = domain.digest() if domain is not None else None

        async def one(pod: ProxyPod) -> cond.PodResult:
            node = pod.node or ""
            selected = placement.selects(pod.node)
            failure = None
            fresh = force_reload  # a listing from before this pass's reloads will not do
            try:
                if tls_force or needs_tls_reload(memo.tls_applied.get(pod.key), digest):
                    fresh = True
                    answer = await pod.tls_reload()
                    failure = tls_failure(answer, domain.domain) if domain is not None else None
                    if digest is not None and failure is None:
                        memo.tls_applied[pod.key] = digest
                if force_reload:
                    await pod.reload()
                listed = await pod.listing(None if fresh else since)
                if needs_reload(listed, wanted, table, reloaded=force_reload, selected=selected):
                    await pod.reload()
                    listed = await pod.listing()
            except (Unreachable, MIError) as exc:
                return cond.PodResult(pod.name, reachable=False, error=str(exc), selected=selected, node=node)
            if pod.node in placement.unknown:
                # Its node's labels could not be read: whether it should serve the socket is not known.
                error = placement.unknown[pod.node or ""]
                return cond.PodResult(pod.name, reachable=True, state=cond.FAILED, error=error, node=node)
            if not selected:
                why = f"node {node or '(unknown)'} is not selected by spec.nodeSelector"
                state = cond.NOT_SELECTED
                return cond.PodResult(pod.name, True, state=state, error=why, selected=False, node=node)
            state, error = listed.state_of(wanted.socket, wanted.key)
            seen = listed.seen_of(wanted.socket, wanted.key)
            warning = listed.warning_of(wanted.socket, wanted.key) if domain is not None else ""
            if failure is not None and domain is not None:
                state, error = cond.FAILED, f"TLS domain {domain.domain!r} not loaded: {failure}"
            elif warning and state == cond.LISTENING:
                # Listening, but the pod has no certificate for it (it missed a tls_reload, or the table
                # was edited): not serving. The next pass reloads its TLS domains.
                state, error = cond.FAILED, warning
                memo.tls_applied.pop(pod.key, None)
            # Where the address is and traffic arrives, for a free-bind socket (bound on every pod; without
            # free bind Listening already says the address is there); what each pod advertises, for an
            # address from a Service or the nodes.
            floating = wanted.freebind
            return cond.PodResult(
                pod.name,
                reachable=True,
                state=state,
                error=error,
                node=node,
                address_local=seen.address_local if floating else None,
                receiving=seen.receiving if floating else None,
                advertised=seen.advertised if wanted.advertised_from is not None else None,
            )

        return list(await asyncio.gather(*(one(p) for p in ready)))

    # -- deletion ------------------------------------------------------------------------------------

    async def finalize(self, uid: str) -> dict[str, str]:
        """Remove the rows and reload the proxies (sockets, then TLS domains). Raises DatabaseUnavailable
        (the finalizer stays)."""
        async with self._object_locks.setdefault(uid, asyncio.Lock()):
            done = asyncio.get_running_loop().create_future()
            step = await self._queued(_Request(uid, None, 0, {}, NO_OPTIONS, None, done))  # batched too
            if step.error is not None:
                raise DatabaseUnavailable(step.error)
            removed = step.removed
            errors = await self.fleet.reload_all(tls=removed.domain) if removed else {}
        self.forget(uid)
        self._table_changed()
        return errors

    async def deletion_blocked(self, body: Mapping[str, Any], error: str) -> list[cond.Condition]:
        """`finalize` could not remove the row: say so in the status (the conditions, and observedGeneration:
        the deletion moved the generation on); returns the conditions that changed (each worth an Event)."""
        meta = body.get("metadata") or {}
        memo = self.memo(str(meta.get("uid")))
        current = body.get("status") or {}
        previous = memo.written_status.get("conditions") if memo.written_status else current.get("conditions")
        generation = int(meta.get("generation") or 0)
        new = cond.deletion_blocked(previous, error)
        merged, changed = cond.merge(previous, new, generation, now_rfc3339())
        status: dict[str, Any] = {"observedGeneration": generation, "conditions": merged}
        seen = [current] if memo.written_status is None else [current, memo.written_status]
        await self.status.write(str(meta.get("namespace")), str(meta.get("name")), status, seen)
        memo.written_status = {**(memo.written_status or current), **status}
        return changed


def _refs(step: TableStep) -> cond.Refs | None:
    resolution = step.resolution
    if resolution is None:
        return None
    if resolution.ok:
        return cond.Refs(True, resolution.reason, resolution.message)
    if step.error is not None:  # the table could not be read: the proxies keep what they loaded
        return cond.Refs(False, resolution.reason, resolution.message, "the certificate they loaded last")
    kept = domains.served(step.domain)
    return cond.Refs(False, resolution.reason, resolution.message, kept.describe() if kept else "")


def _certificate(step: TableStep, last: Mapping[str, Any]) -> dict[str, Any] | None:
    """status.certificate: the certificate of our tls_mgm row, what the proxies serve for this socket."""
    if step.error is not None and step.refusal is None:
        return last.get("certificate")  # the database could not be read: unknown, keep what was said
    kept = domains.served(step.domain)
    return kept.summary.status() if kept else None


def _programmed_message(table: str, written: Written, wanted: DesiredSocket, domain: DomainRow | None) -> str:
    message = f"row {written.row_id} of {table}: {wanted.socket}"
    if domain is not None:
        message += f"; TLS server domain {domain.domain!r} for {domain.match_ip_address}"
    return message


def _condition(body: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for item in (body.get("status") or {}).get("conditions") or ():
        if isinstance(item, Mapping) and item.get("type") == ctype:
            return item
    return None


__all__ = ["EndpointKey", "Known", "Reconciler", "Result"]
