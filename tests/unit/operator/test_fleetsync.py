"""The leader's fleet check against a real SQLite table and proxy MIs on loopback: a pod serving a socket the
table no longer has is reloaded although no SipSocket is left to reconcile; a pod that does not answer is
asked again within seconds."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipoperator.drift import FLEET_RETRY
from sipoperator.fleetsync import FleetSync
from sipoperator.lease import NotLeader
from sipoperator.metrics import Metrics
from sipoperator.proxies import Fleet
from sipoperator.settings import Settings
from sipoperator.store import Store
from tests.unit.operator.servers import FakeMI

RESYNC = 60.0


@dataclass
class World:
    sync: FleetSync
    fleet: Fleet
    mi: FakeMI
    calls: list[str]
    db: Path
    metrics: Metrics

    def insert(self, socket_text: str) -> None:
        with sqlite3.connect(self.db) as conn:
            conn.execute("INSERT INTO sockets (socket) VALUES (?)", (socket_text,))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    db = tmp_path / "sockets.db"
    settings = Settings(namespace="voip", db_url=f"sqlite:///{db}", resync_period=RESYNC)
    store = Store(settings.db_url, timeout=3)
    await store.ensure_schema()
    calls: list[str] = []

    def sockets() -> list[str]:
        with sqlite3.connect(db) as conn:
            return [str(r[0]) for r in conn.execute("SELECT socket FROM sockets")]

    metrics = Metrics()
    fleet = Fleet(settings, metrics)
    mi = FakeMI(sockets, calls.append)
    fleet.observe("proxy-0", "uid-0", "127.0.0.1", True, await mi.start())
    try:
        yield World(FleetSync(settings, store, fleet, metrics), fleet, mi, calls, db, metrics)
    finally:
        await mi.close()
        await fleet.client.close()
        await store.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_pod_still_serving_a_removed_socket_is_reloaded(world: World) -> None:
    world.mi.listed = ["udp:10.0.0.1:5070"]  # it missed the reload after the last SipSocket went
    assert await world.sync.check() == RESYNC
    assert world.mi.listed == []
    assert world.calls.count("sockets_reload") == 1
    assert "sipsockets_fleet_drift_repairs_total 1" in world.metrics.render()


async def test_a_pod_lacking_a_row_is_reloaded_and_a_pod_in_sync_is_left_alone(world: World) -> None:
    world.insert("udp:10.0.0.1:5070")
    await world.sync.check()
    assert world.mi.listed == ["udp:10.0.0.1:5070"]
    world.calls.clear()
    assert await world.sync.check() == RESYNC
    assert world.calls == ["sockets_list"]


async def test_an_unreachable_pod_is_asked_again_within_seconds(world: World) -> None:
    world.fleet.observe("proxy-1", "uid-1", "127.0.0.1", True, closed_port())
    assert await world.sync.check() == FLEET_RETRY
    assert FLEET_RETRY < RESYNC


async def test_without_the_table_nothing_is_reloaded_and_it_tries_again_soon(world: World) -> None:
    world.mi.listed = ["udp:10.0.0.1:5070"]
    world.db.unlink()
    world.db.mkdir()  # a directory where the database file was: it cannot be opened
    assert await world.sync.check() == FLEET_RETRY
    assert "sockets_reload" not in world.calls


async def test_the_loop_runs_when_the_fleet_changes_and_ends_when_fenced(world: World) -> None:
    world.sync.start()
    try:
        await asyncio.sleep(0.2)  # the first check at start
        mi = FakeMI(lambda: [], world.calls.append, listed=["udp:10.0.0.9:5070"])
        world.fleet.observe("proxy-2", "uid-2", "127.0.0.1", True, await mi.start())
        try:
            for _ in range(200):
                if mi.listed == []:
                    break
                await asyncio.sleep(0.02)
            assert mi.listed == []  # the new pod was checked at once, not a resync later

            class Closed:
                def budget(self) -> float:
                    raise NotLeader("lost")

            world.fleet.client.fence = Closed()
            mi.listed = ["udp:10.0.0.9:5070"]
            world.sync.wake()
            await asyncio.sleep(0.3)
            assert mi.listed == ["udp:10.0.0.9:5070"]  # no reload without the Lease
            assert world.sync._task is not None and world.sync._task.done()
        finally:
            await mi.close()
    finally:
        await world.sync.stop()
