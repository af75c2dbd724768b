"""Full garbage collections happen when the operator is idle; frozen garbage is freed by the next one."""

from __future__ import annotations

import asyncio
import gc
import weakref

from sipoperator import collector


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_a_full_collection_waits_for_an_idle_moment_but_not_forever() -> None:
    assert not collector.collection_due(collector.EVERY - 1, idle=True)
    assert collector.collection_due(collector.EVERY, idle=True)
    assert not collector.collection_due(collector.AT_LATEST - 1, idle=False)
    assert collector.collection_due(collector.AT_LATEST, idle=False)


def test_cyclic_garbage_frozen_in_the_heap_is_freed_by_the_next_full_collection() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    try:
        collector.collect_and_freeze()  # the cycle is alive here: frozen with the rest
        del a, b
        gc.collect()
        assert gone() is not None, "an automatic collection does not walk frozen objects"
        collector.collect_and_freeze()
        assert gone() is None, "the next full collection thaws the heap and frees the cycle"
    finally:
        gc.unfreeze()


def test_the_operator_freezes_what_start_up_made_and_stops_on_request() -> None:
    async def main() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(lambda: True, stop))
        await asyncio.sleep(0.05)
        frozen = gc.get_freeze_count()
        stop.set()
        await asyncio.wait_for(task, 5)
        return frozen

    try:
        assert asyncio.run(main()) > 0
    finally:
        gc.unfreeze()
