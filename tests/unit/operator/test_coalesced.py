"""Reloads asked for while one runs share the next run, never the one already reading the table."""

from __future__ import annotations

import asyncio

from sipoperator.proxies import Coalesced


async def test_concurrent_requests_share_runs_but_each_is_covered_by_a_later_start() -> None:
    starts: list[int] = []
    requested_at: dict[int, int] = {}
    gate = asyncio.Event()

    async def run() -> int:
        starts.append(len(requested_at))
        await gate.wait()
        return len(starts)

    coalesced = Coalesced(run)

    async def ask(i: int) -> int:
        requested_at[i] = len(starts)
        return await coalesced()

    first = asyncio.create_task(ask(0))
    await asyncio.sleep(0)
    others = [asyncio.create_task(ask(i)) for i in range(1, 20)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(first, *others)
    assert len(starts) == 2  # one run for the first caller, one shared by the 19 who came during it
    assert results[0] == 1
    assert set(results[1:]) == {2}


async def test_errors_reach_every_caller_of_that_run() -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    coalesced = Coalesced(fail)
    outcomes = await asyncio.gather(coalesced(), coalesced(), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
