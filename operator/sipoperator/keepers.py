"""The leader's work on SipSockets: one keeper task per object while this replica holds the Lease.

A keeper puts the finalizer on its object, runs a full pass (`reconciler.py`) when the spec changed (a new
generation), when this leader has not run one yet, and whenever `schedule.py` says one is due (resync,
backoff, fleet or table changes); when the object is being deleted it removes the row (`finalize`), then the
finalizer. Every replica keeps the latest body of every object from the watch (`seen`), so a replica that
becomes the leader starts at once with a warm cache; only the leader's keepers run.

kopf only watches (its `on.event` handlers keep no state on the objects and patch nothing): its own
finalizer, progress and diff-base annotations belong to one handling process per object, and replicas that
all ran kopf's handlers would all write them. The finalizer is ours, added and removed here with the
object's resourceVersion (a 409 means someone changed the object: the next body from the watch is used).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from sipoperator import schedule
from sipoperator.conditions import Condition
from sipoperator.events import EventPoster
from sipoperator.kube import KubeClient, KubeError
from sipoperator.lease import UNFENCED, Fence, NotLeader
from sipoperator.reconciler import Reconciler
from sipoperator.status import GROUP, PLURAL, VERSION
from sipoperator.store import DatabaseUnavailable

FINALIZER = "sipsockets.io/finalizer"
CONFLICT_RETRY = 0.5  # seconds before trying a finalizer patch again with a newer body
log = logging.getLogger(__name__)


def _key(body: Mapping[str, Any]) -> tuple[int, bool, bool]:
    meta = body.get("metadata") or {}
    return (
        int(meta.get("generation") or 0),
        bool(meta.get("deletionTimestamp")),
        FINALIZER in (meta.get("finalizers") or ()),
    )


def needs_attention(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Does a watched change concern the keeper now (spec, deletion, our finalizer)? Its own status patches
    come back through the watch too and must not wake it."""
    return old is None or _key(old) != _key(new)


def object_path(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"/apis/{GROUP}/{VERSION}/namespaces/{meta.get('namespace')}/{PLURAL}/{meta.get('name')}"


def finalizers_patch(body: Mapping[str, Any], present: bool) -> dict[str, Any] | None:
    """A merge patch putting our finalizer on (`present`) or off, guarded by the resourceVersion; None when
    there is nothing to change."""
    meta = body.get("metadata") or {}
    current = list(meta.get("finalizers") or ())
    if (FINALIZER in current) == present:
        return None
    wanted = [*current, FINALIZER] if present else [f for f in current if f != FINALIZER]
    return {"metadata": {"finalizers": wanted, "resourceVersion": meta.get("resourceVersion")}}


class Keepers:
    def __init__(
        self,
        rec: Reconciler,
        kube: KubeClient,
        events: EventPoster,
        fence: Fence = UNFENCED,
        reload_missed: Callable[[], None] = lambda: None,
    ) -> None:
        self.rec, self.kube, self.events, self.fence = rec, kube, events, fence
        self.reload_missed = reload_missed  # a reload after a deletion missed a pod: the fleet check repairs
        self.bodies: dict[str, Mapping[str, Any]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.leading = False

    # -- from the watch, on every replica ------------------------------------------------------------

    def seen(self, body: Mapping[str, Any]) -> None:
        uid = str((body.get("metadata") or {}).get("uid"))
        old = self.bodies.get(uid)
        self.bodies[uid] = body
        if self.leading:
            self._ensure(uid)
            if needs_attention(old, body):
                self.rec.waker(uid).set()

    def gone(self, uid: str) -> None:
        self.bodies.pop(uid, None)
        task = self.tasks.pop(uid, None)
        if task is not None:
            task.cancel()

    # -- LeaderWork ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.leading = True
        for uid in list(self.bodies):
            self._ensure(uid)

    async def stop(self) -> None:
        self.leading = False
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # What this replica learnt as the leader goes stale now (its conditions metrics, its last statuses):
        # a later term starts afresh, as a new leader would.
        self.rec.memos.clear()

    def _ensure(self, uid: str) -> None:
        task = self.tasks.get(uid)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._keep(uid), name=f"keeper {uid}")
            self.tasks[uid] = task
            task.add_done_callback(lambda t: self.tasks.pop(uid, None) if self.tasks.get(uid) is t else None)

    # -- one object ----------------------------------------------------------------------------------

    async def _keep(self, uid: str) -> None:
        handled: int | None = None  # the generation of this leader's last complete pass
        failures = 0
        while True:
            body = self.bodies.get(uid)
            if body is None:
                return
            wake = self.rec.waker(uid)
            wake.clear()
            try:
                handled, delay = await self._step(uid, body, handled, failures)
                failures = 0
            except NotLeader:
                return  # the election stops the work; nothing more may be written
            except (KubeError, DatabaseUnavailable) as exc:
                failures += 1
                conflict = isinstance(exc, KubeError) and exc.conflict
                delay = CONFLICT_RETRY if conflict else schedule.backoff(failures)
                log.warning("%s: %s; again in %gs", _ref(body), exc, delay)
            except Exception:
                failures += 1
                delay = schedule.backoff(failures)
                log.exception("%s: pass failed; again in %gs", _ref(body), delay)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), None if math.isinf(delay) else delay)

    async def _step(
        self, uid: str, body: Mapping[str, Any], handled: int | None, failures: int
    ) -> tuple[int | None, float]:
        """One look at the object; returns (handled generation, seconds to sleep unless woken)."""
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            if FINALIZER in (meta.get("finalizers") or ()):
                await self._finalize(uid, body, failures)
            return handled, math.inf  # the watch's DELETED event ends this keeper
        patch = finalizers_patch(body, present=True)
        if patch is not None:
            await self._patch_finalizers(uid, body, patch)
            return handled, 0.0
        generation = int(meta.get("generation") or 0)
        if handled != generation or self.rec.due(uid):
            result = await self.rec.reconcile(body)
            self._emit(body, result.changed)
            handled = generation
        return handled, self.rec.seconds_until_due(uid)

    async def _finalize(self, uid: str, body: Mapping[str, Any], failures: int) -> None:
        """Row removed and proxies reloaded, then the finalizer goes. With the database down the finalizer
        stays and the status says why; raises DatabaseUnavailable so the keeper retries with backoff."""
        try:
            errors = await self.rec.finalize(uid)
        except DatabaseUnavailable as exc:
            changed = await self.rec.deletion_blocked(body, str(exc))
            self._emit(body, changed)
            raise
        for pod, error in sorted(errors.items()):
            log.warning("proxy pod %s missed the reload after deleting %s: %s", pod, _ref(body), error)
        if errors:
            self.reload_missed()
        patch = finalizers_patch(body, present=False)
        if patch is not None:
            await self._patch_finalizers(uid, body, patch)

    async def _patch_finalizers(self, uid: str, body: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        budget = self.fence.budget()  # raises NotLeader
        try:
            updated = await self.kube.patch(object_path(body), patch, within=min(self.kube.timeout, budget))
        except KubeError as exc:
            if exc.not_found:
                return  # gone already
            raise
        if uid in self.bodies and updated.get("metadata"):
            self.bodies[uid] = updated

    def _emit(self, body: Mapping[str, Any], changed: list[Condition]) -> None:
        for c in changed:
            log.info("%s: %s=%s %s: %s", _ref(body), c.type, c.status, c.reason, c.message)
            kind = "Normal" if c.status == "True" else "Warning"
            self.events.emit(body, kind, c.reason, f"{c.type}={c.status}: {c.message}")


def _ref(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"
