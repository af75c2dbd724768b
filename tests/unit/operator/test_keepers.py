"""The leader's keepers against a real SQLite table, a proxy MI and a Kubernetes API on loopback: nothing is
written before this replica leads or after it stops; the finalizer is ours (with the resourceVersion); a
deletion while the database is down keeps the finalizer and says why, and completes when it returns."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sipoperator.events import EventPoster
from sipoperator.keepers import FINALIZER, Keepers, finalizers_patch, needs_attention
from sipoperator.kube import KubeClient
from sipoperator.lease import NotLeader
from sipoperator.metrics import Metrics
from sipoperator.proxies import Fleet
from sipoperator.reconciler import Reconciler
from sipoperator.settings import Settings
from sipoperator.status import StatusWriter
from sipoperator.store import Store
from tests.unit.operator.servers import FakeAPI, FakeMI

NS = "voip"


class Gate:
    """A fence the test opens and closes (the elector's role)."""

    def __init__(self) -> None:
        self.open = True

    def budget(self) -> float:
        if not self.open:
            raise NotLeader("closed by the test")
        return 30.0


@dataclass
class World:
    keepers: Keepers
    rec: Reconciler
    api: FakeAPI
    mi: FakeMI
    db_dir: Path
    gate: Gate

    def table(self) -> list[str]:
        with sqlite3.connect(self.db_dir / "sockets.db") as conn:
            return sorted(str(r[0]) for r in conn.execute("SELECT socket FROM sockets"))

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "metadata": {
                "uid": f"uid-{name}",
                "namespace": NS,
                "name": name,
                "generation": 1,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "finalizers": [],
            },
            "spec": spec,
        }
        return self.api.add_object(body)

    def watch(self, name: str, **changes: Any) -> dict[str, Any]:
        """What the watch delivers next for `name` (as the API has it, with `changes` to its metadata)."""
        body = self.api.current(NS, name)
        body["metadata"].update(changes)
        self.api.bodies[(NS, name)]["metadata"].update(changes)
        self.keepers.seen(body)
        self.rec.observe(body)
        return body

    def finalizers(self, name: str) -> list[str]:
        return list(self.api.bodies[(NS, name)]["metadata"]["finalizers"])

    def conditions(self, name: str) -> dict[str, tuple[str, str, str]]:
        return {
            c["type"]: (c["status"], c["reason"], c["message"])
            for c in self.api.objects[(NS, name)].get("conditions", [])
        }


async def until(check: Callable[[], object], what: str, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    settings = Settings(namespace=NS, db_url=f"sqlite:///{db_dir / 'sockets.db'}")
    store = Store(settings.db_url, timeout=3)
    await store.ensure_schema()

    def sockets() -> list[str]:
        with sqlite3.connect(db_dir / "sockets.db") as conn:
            return [str(r[0]) for r in conn.execute("SELECT socket FROM sockets")]

    gate = Gate()
    async with FakeAPI() as api:
        kube = KubeClient(api.login())
        metrics = Metrics()
        fleet = Fleet(settings, metrics)
        status = StatusWriter(kube, gate)
        rec = Reconciler(settings, store, fleet, metrics, status, kube)
        store.fence = fleet.client.fence = gate
        mi = FakeMI(sockets, lambda _: None)
        fleet.observe("proxy-0", "uid-p", "127.0.0.1", True, await mi.start())
        events = EventPoster(kube)
        keepers = Keepers(rec, kube, events, gate)
        try:
            yield World(keepers, rec, api, mi, db_dir, gate)
        finally:
            await keepers.stop()
            await events.close()
            await mi.close()
            await kube.close()
            await fleet.client.close()
            await store.close()


UDP = {"protocol": "udp", "address": "10.0.0.1", "port": 5070}


async def test_a_replica_that_does_not_lead_writes_nothing(world: World) -> None:
    world.create("a", UDP)
    world.watch("a")
    await asyncio.sleep(0.5)
    assert world.api.object_patches == [] and world.api.patches == [] and world.api.events == []
    assert world.table() == []
    assert world.mi.listed == []


async def test_once_leading_the_finalizer_goes_on_then_the_row_and_the_status(world: World) -> None:
    created = world.create("a", UDP)
    world.watch("a")
    world.keepers.start()
    await until(lambda: world.conditions("a").get("Ready", ("",))[0] == "True", "Ready")
    assert world.finalizers("a") == [FINALIZER]
    [first] = world.api.object_patches[:1]
    assert first == {
        "metadata": {"finalizers": [FINALIZER], "resourceVersion": created["metadata"]["resourceVersion"]}
    }
    assert world.table() == ["udp:10.0.0.1:5070"]
    await until(lambda: len(world.api.events) == 3, "three Events")
    assert {(e["type"], e["reason"]) for e in world.api.events} == {
        ("Normal", "Accepted"),
        ("Normal", "Programmed"),
        ("Normal", "Listening"),
    }
    assert {e["involvedObject"]["uid"] for e in world.api.events} == {"uid-a"}

    # A new spec (generation 2) is a new pass at once.
    world.api.bodies[(NS, "a")]["spec"] = {**UDP, "port": 5071}
    world.watch("a", generation=2)
    await until(lambda: world.table() == ["udp:10.0.0.1:5071"], "the row moved to 5071")


async def test_a_stale_body_gets_409_and_the_next_body_from_the_watch_is_used(world: World) -> None:
    world.create("a", UDP)
    world.keepers.seen(world.api.current(NS, "a"))
    world.api.touch(NS, "a")  # someone else changed the object meanwhile
    world.keepers.start()
    await asyncio.sleep(0.3)
    assert world.finalizers("a") == []  # refused: the finalizer list it would write may be stale
    world.watch("a")  # the watch brings the newer body
    await until(lambda: world.finalizers("a") == [FINALIZER], "the finalizer added")


async def test_deletion_removes_the_row_then_the_finalizer(world: World) -> None:
    world.create("a", UDP)
    world.watch("a")
    world.keepers.start()
    await until(lambda: world.table() == ["udp:10.0.0.1:5070"], "the row")
    world.watch("a", deletionTimestamp="2026-01-01T00:01:00Z")
    await until(lambda: world.finalizers("a") == [], "the finalizer removed")
    assert world.table() == []
    assert world.mi.listed == []  # reloaded before the finalizer went


async def test_deletion_while_the_database_is_down_keeps_the_finalizer_and_says_why(world: World) -> None:
    world.create("a", UDP)
    world.watch("a")
    world.keepers.start()
    await until(lambda: world.conditions("a").get("Ready", ("",))[0] == "True", "Ready")
    away = world.db_dir.with_name("db-away")
    world.db_dir.rename(away)  # the database cannot be opened
    try:
        world.watch("a", deletionTimestamp="2026-01-01T00:01:00Z")
        await until(lambda: world.conditions("a")["Programmed"][1] == "DatabaseUnavailable", "the reason")
        conditions = world.conditions("a")
        assert conditions["Programmed"][0] == "False"
        assert conditions["Programmed"][2].startswith("deleting: the row cannot be removed")
        assert conditions["Ready"][:2] == ("False", "DatabaseUnavailable")
        assert conditions["Accepted"][:2] == ("True", "Accepted")  # the spec did not change
        assert world.finalizers("a") == [FINALIZER]
        await until(
            lambda: any(e["reason"] == "DatabaseUnavailable" for e in world.api.events), "a Warning Event"
        )
        assert world.mi.listed == ["udp:10.0.0.1:5070"]  # still served meanwhile
    finally:
        away.rename(world.db_dir)
    await until(lambda: world.finalizers("a") == [], "the deletion completed", within=30)
    assert world.table() == []
    assert world.mi.listed == []


async def test_after_stepping_down_nothing_more_is_written(world: World) -> None:
    world.create("a", UDP)
    world.watch("a")
    world.keepers.start()
    await until(lambda: world.table() == ["udp:10.0.0.1:5070"], "the row")
    await world.keepers.stop()
    assert world.keepers.tasks == {}
    patches = len(world.api.patches)
    world.api.bodies[(NS, "a")]["spec"] = {**UDP, "port": 5071}
    world.watch("a", generation=2)
    world.rec.wake_all()
    await asyncio.sleep(0.5)
    assert world.table() == ["udp:10.0.0.1:5070"]
    assert len(world.api.patches) == patches


async def test_a_closed_fence_stops_a_keeper_before_any_write(world: World) -> None:
    world.create("a", UDP)
    world.watch("a")
    world.gate.open = False  # the Lease is lost, and the elector has not stopped the work yet
    world.keepers.start()
    await until(lambda: not world.keepers.tasks, "the keeper gone")
    assert world.api.object_patches == []
    assert world.table() == []


def test_own_status_patches_do_not_need_the_keepers_attention() -> None:
    body = {"metadata": {"generation": 1, "finalizers": [FINALIZER]}, "status": {}}
    assert not needs_attention(body, {**body, "status": {"conditions": []}})
    assert needs_attention(body, {"metadata": {"generation": 2, "finalizers": [FINALIZER]}})
    assert needs_attention(body, {"metadata": {**body["metadata"], "deletionTimestamp": "x"}})
    assert needs_attention(None, body)


def test_the_finalizer_patch_keeps_other_finalizers_and_names_the_version() -> None:
    body = {"metadata": {"resourceVersion": "7", "finalizers": ["other.io/x"]}}
    assert finalizers_patch(body, present=True) == {
        "metadata": {"finalizers": ["other.io/x", FINALIZER], "resourceVersion": "7"}
    }
    assert finalizers_patch(body, present=False) is None
    on = {"metadata": {"resourceVersion": "8", "finalizers": ["other.io/x", FINALIZER]}}
    assert finalizers_patch(on, present=False) == {
        "metadata": {"finalizers": ["other.io/x"], "resourceVersion": "8"}
    }
