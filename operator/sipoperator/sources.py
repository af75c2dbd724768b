"""The leader's look at the nodes behind `spec.advertised.fromNode`: every `SOURCE_CHECK_SECONDS` it reads the
proxy pods' Nodes and wakes the SipSockets whose node addresses changed since their last pass
(`Reconciler.check_sources`). Leader work (election.py): a replica that does not hold the Lease reads no
Nodes for it, and its wake-ups would find no keeper anyway. A changed Service needs no look: its watch
(handlers.py) wakes the SipSockets that name it.
"""

from __future__ import annotations

import asyncio
import logging

from sipoperator.election import LoopWork
from sipoperator.reconciler import SOURCE_CHECK_SECONDS, Reconciler

log = logging.getLogger(__name__)


class SourceWatch(LoopWork):
    task_name = "node address look"

    def __init__(self, rec: Reconciler, period: float = SOURCE_CHECK_SECONDS) -> None:
        self.rec, self.period = rec, period

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.rec.check_sources()
            except Exception:
                log.exception("reading the nodes of advertised addresses failed; trying again")
