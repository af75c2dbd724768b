"""The leader-election loop: one `coordination.k8s.io/v1` Lease in the operator's namespace, read and written
with the operator's own API client (`kube.py`). The decisions are `lease.py`'s; the timing is explained there.

Every replica runs this loop. The one holding the Lease runs the leader's work (`LeaderWork`: the keepers of
the SipSockets and the fleet check), and is the `Fence` every write asks first; the others only watch.
Losing the Lease (someone else's record, or no successful renew within the renew deadline) stops that work
before the loop goes on; a clean stop releases the Lease so the next replica need not wait a lease duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from sipoperator import lease
from sipoperator.kube import KubeClient, KubeError
from sipoperator.lease import LeaseRecord, NotLeader, Observed, Timing
from sipoperator.metrics import Metrics

log = logging.getLogger(__name__)


class LeaderWork(Protocol):
    def start(self) -> None:
        """Begin the leader's work (spawn its tasks); returns at once."""

    async def stop(self) -> None:
        """End it: every task cancelled and finished when this returns."""


class LoopWork:
    """Leader work that is one loop, `_run`, in one task: started with the Lease, cancelled when it goes."""

    task_name = "leader work"
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        raise NotImplementedError


class AllOf:
    """Several pieces of leader work started and stopped together."""

    def __init__(self, works: Iterable[LeaderWork]) -> None:
        self.works = list(works)

    def start(self) -> None:
        for work in self.works:
            work.start()

    async def stop(self) -> None:
        await asyncio.gather(*(work.stop() for work in self.works))


def default_identity() -> str:
    """The pod name (the hostname in a pod) and a random suffix: a restarted process is a new candidate, and
    two replicas on one host (the e2e tier) differ."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class Elector:
    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        name: str,
        timing: Timing,
        metrics: Metrics,
        work: LeaderWork,
        identity: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.timing, self.metrics, self.work = timing, metrics, work
        self.identity = identity or default_identity()
        self.clock, self.wall = clock, wall
        self.leading = False
        self.renewed_at: float | None = None  # when the last successful acquire or renew was sent
        self.observed: Observed | None = None
        self._stepping_down: asyncio.Task[None] | None = None
        metrics.leader.set(0)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    # -- the fence every write asks ------------------------------------------------------------------

    def budget(self) -> float:
        now = self.clock()
        budget = lease.write_budget(self.renewed_at if self.leading else None, now, self.timing)
        if budget is None:
            if self.leading:  # the deadline passed before the loop noticed (a stalled event loop)
                self._step_down_soon("the renew deadline passed")
            raise NotLeader(f"not the holder of Lease {self.ref}")
        return budget

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        log.info("leader election: Lease %s, identity %s", self.ref, self.identity)
        try:
            while not stop.is_set():
                try:
                    delay = await self.step()
                except Exception:  # a bug must not end the election for good: the fence still holds
                    log.exception("leader election step failed")
                    delay = self.timing.retry_period
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            await self.resign()

    async def step(self) -> float:
        """One look at the Lease: renew it, take it, or watch it. Returns the seconds until the next look."""
        try:
            await self._attempt()
        except KubeError as exc:
            if exc.conflict and self.leading:
                await self._lost(f"the Lease changed under us ({exc.message})")
            elif exc.conflict:
                log.debug("Lease %s: another replica wrote it first", self.ref)
            else:
                log.warning("Lease %s: %s", self.ref, exc)
        now = self.clock()
        if self.leading and not lease.still_leading(self.renewed_at, now, self.timing.renew_deadline):
            await self._lost(f"no successful renew within {self.timing.renew_deadline:g}s")
        if self.leading:
            assert self.renewed_at is not None
            return max(0.0, min(self.timing.retry_period, self.renewed_at + self.timing.renew_deadline - now))
        return lease.candidate_sleep(self.observed, now, self.timing, random.uniform(1.0, lease.JITTER))

    def _call_timeout(self) -> float:
        """A leader's call must not outlive its renew deadline (it steps down then, whatever the answer)."""
        if self.leading and self.renewed_at is not None:
            return max(0.001, self.renewed_at + self.timing.renew_deadline - self.clock())
        return self.timing.renew_deadline

    async def _attempt(self) -> None:
        path = lease.lease_path(self.namespace, self.name)
        try:
            body = await self.kube.get(path, within=self._call_timeout())
        except KubeError as exc:
            if not exc.not_found:
                raise
            spec = lease.acquired_spec(None, self.identity, self.wall(), self.timing.lease_duration)
            sent = self.clock()
            created = await self.kube.create(
                lease.lease_path(self.namespace),
                lease.lease_body(self.namespace, self.name, spec),
                within=self._call_timeout(),
            )
            await self._won(sent, created)
            return
        record = LeaseRecord.from_body(body)
        self.observed = lease.observe(self.observed, record, self.clock())
        if record.holder == self.identity:
            spec = lease.renewed_spec(record, self.identity, self.wall(), self.timing.lease_duration)
        elif lease.may_acquire(self.observed, self.clock(), self.identity, self.timing.lease_duration):
            spec = lease.acquired_spec(record, self.identity, self.wall(), self.timing.lease_duration)
        else:
            if self.leading:
                await self._lost(f"Lease {self.ref} is held by {record.holder}")
            return
        sent = self.clock()
        written = await self.kube.replace(
            path,
            lease.lease_body(self.namespace, self.name, spec, record.resource_version),
            within=self._call_timeout(),
        )
        await self._won(sent, written)

    async def _won(self, sent: float, body: Mapping[str, Any]) -> None:
        self.observed = lease.observe(self.observed, LeaseRecord.from_body(body), self.clock())
        if not self.leading and self._stepping_down is not None:
            await self._stepping_down  # the old work must be gone before new work starts
        self.renewed_at = sent
        if not self.leading:
            self.leading = True
            self.metrics.leader.set(1)
            record = self.observed.record
            log.info(
                "became the leader: Lease %s, identity %s, transitions %d",
                self.ref,
                self.identity,
                record.transitions,
            )
            self.work.start()

    async def _lost(self, why: str) -> None:
        if not self.leading:
            return
        self.leading = False
        self.renewed_at = None
        self.metrics.leader.set(0)
        log.warning("stopped leading (%s): writes stop, watching goes on", why)
        await self.work.stop()

    def _step_down_soon(self, why: str) -> None:
        """From `budget` (not a coroutine): the work is stopped by a task of its own."""
        if self._stepping_down is None or self._stepping_down.done():
            self._stepping_down = asyncio.get_running_loop().create_task(self._lost(why))

    async def resign(self) -> None:
        """A clean stop: the work ends first, then the Lease is released for the next replica."""
        was_leading = self.leading
        await self._lost("the operator is stopping")
        if self._stepping_down is not None:
            await self._stepping_down
        if not was_leading or self.observed is None:
            return
        record = self.observed.record
        if record.holder != self.identity:
            return
        spec = lease.released_spec(record, self.wall())
        try:
            await self.kube.replace(
                lease.lease_path(self.namespace, self.name),
                lease.lease_body(self.namespace, self.name, spec, record.resource_version),
                within=self.timing.retry_period,
            )
            log.info("released Lease %s", self.ref)
        except KubeError as exc:
            log.warning("could not release Lease %s (the next leader waits it out): %s", self.ref, exc)


__all__ = ["AllOf", "Elector", "LeaderWork", "NotLeader", "default_identity"]
