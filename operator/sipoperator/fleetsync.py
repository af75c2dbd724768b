"""The leader's fleet check: every ready proxy pod's `sockets_list` against the table, and a `sockets_reload`
for each pod that differs. Not tied to any SipSocket: after the last SipSocket is deleted while a pod is
unreachable, no pass of any object would ever look at that pod again, and it would go on serving the socket.

Runs every resync period, at once when the set of ready pods changes (a pod ready again), and every few
seconds while a pod does not answer (a hung pod stays Ready for Kubernetes). The decisions are `drift.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from enum import Enum

from sipoperator import drift
from sipoperator.election import LoopWork
from sipoperator.lease import NotLeader
from sipoperator.metrics import Metrics
from sipoperator.proxies import Fleet, MIError, ProxyPod, Unreachable
from sipoperator.settings import Settings
from sipoperator.store import DatabaseUnavailable, Store

log = logging.getLogger(__name__)


class PodCheck(Enum):
    IN_SYNC = "in sync"
    REPAIRED = "reloaded"
    DIFFERS = "still differs after a reload"
    UNREACHABLE = "unreachable"


class FleetSync(LoopWork):
    task_name = "fleet check"

    def __init__(self, settings: Settings, store: Store, fleet: Fleet, metrics: Metrics) -> None:
        self.settings, self.store, self.fleet, self.metrics = settings, store, fleet, metrics
        self._wake = asyncio.Event()
        fleet.subscribe(self.wake)

    def wake(self) -> None:
        """Check now (the fleet changed, or a reload after a deletion missed a pod)."""
        self._wake.set()

    # -- the loop ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                delay = await self.check()
            except NotLeader:
                return
            except Exception:
                log.exception("fleet check failed")
                delay = drift.next_fleet_check(self.settings.resync_period, retry_soon=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def check(self) -> float:
        """One check of every ready pod; returns the seconds until the next one."""
        resync = self.settings.resync_period
        try:
            rows = await self.store.snapshot()
        except DatabaseUnavailable as exc:
            log.debug("fleet check skipped: %s", exc)
            return drift.next_fleet_check(resync, retry_soon=True)
        table = drift.table_sockets(r.socket for r in rows)
        results = await asyncio.gather(*(self._one(pod, table) for pod in self.fleet.ready()))
        return drift.next_fleet_check(resync, retry_soon=PodCheck.UNREACHABLE in results)

    async def _one(self, pod: ProxyPod, table: frozenset[str]) -> PodCheck:
        try:
            listed = await pod.listing()
            if not drift.pod_out_of_sync(listed, table):
                return PodCheck.IN_SYNC
            extra = sorted(drift.table_sockets(listed.entries) - table)
            missing = sorted(table - drift.table_sockets(listed.entries))
            log.info(
                "proxy pod %s differs from the table (serves %s no row has; lacks %s): reloading",
                pod.name,
                ", ".join(extra) or "nothing",
                ", ".join(missing) or "nothing",
            )
            await pod.reload()
            self.metrics.drift_repairs.inc()
            listed = await pod.listing()
        except (Unreachable, MIError) as exc:
            log.debug("fleet check: proxy pod %s: %s", pod.name, exc)
            return PodCheck.UNREACHABLE
        if drift.pod_out_of_sync(listed, table):
            return PodCheck.DIFFERS  # the table changed meanwhile, or the pod refused a row: the next check
        return PodCheck.REPAIRED
