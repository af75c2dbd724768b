"""Python's full garbage collections moved to moments when the operator has nothing to do.

With 1,000 SipSockets the operator holds a few million objects, and a full (generation 2) collection walked
them all in 100-170 ms (measured with `bench reliability --rel-parts scale`). Python starts one when enough
allocations pile up, that is in the middle of work: the slowest apply -> answering probe was such a pause.

So the heap is frozen (`gc.freeze`: the automatic collections leave what is there now alone) right after a
full collection made while no SipSocket's pass is running, and thawed for the next one. The automatic
collections then walk only what was made since, and the full walk happens when nobody waits on it. Cyclic
garbage among frozen objects waits for the next full collection: at most `EVERY` when idle, `AT_LATEST`
under constant work."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

EVERY = 30.0  # a full collection at most this often when the operator is idle...
AT_LATEST = 300.0  # ...and at least this often even if it never is
LOOK_EVERY = 2.0

log = logging.getLogger(__name__)


def collection_due(since_last: float, idle: bool) -> bool:
    return since_last >= AT_LATEST or (idle and since_last >= EVERY)


def collect_and_freeze() -> float:
    """A full collection of everything, then what is left frozen; the time it took, in seconds."""
    start = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - start


async def run(idle: Callable[[], bool], stop: asyncio.Event) -> None:
    collect_and_freeze()  # what start-up made (modules, settings, clients) is never collected again
    last = time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), LOOK_EVERY)
        except TimeoutError:
            pass
        now = time.monotonic()
        if not stop.is_set() and collection_due(now - last, idle()):
            took = collect_and_freeze()
            last = time.monotonic()
            log.debug("full collection in %.1f ms; %d objects frozen", took * 1000, gc.get_freeze_count())
