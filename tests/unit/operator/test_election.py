"""The leader-election loop against a Kubernetes API on loopback that keeps Leases with resourceVersions (409
on a stale write), with a clock the test moves: who leads, when the other takes over, when the leader stops
writing, and that the leader's work runs on one replica only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from sipoperator.election import Elector
from sipoperator.kube import KubeClient
from sipoperator.lease import NotLeader, Timing
from sipoperator.metrics import Metrics
from tests.unit.operator.servers import FakeAPI

T = Timing(lease_duration=15, renew_deadline=10, retry_period=2)
NS, NAME = "voip", "sipsockets-operator"


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return datetime(2026, 3, 1, tzinfo=UTC) + timedelta(seconds=self.now)


@dataclass
class Work:
    """The leader's work, as the elector sees it: started and stopped."""

    log: list[str] = field(default_factory=list)
    running: bool = False

    def start(self) -> None:
        assert not self.running, "started twice"
        self.running = True
        self.log.append("start")

    async def stop(self) -> None:
        if self.running:
            self.log.append("stop")
        self.running = False


@dataclass
class Replica:
    elector: Elector
    work: Work
    metrics: Metrics


@dataclass
class World:
    api: FakeAPI
    clock: Clock
    kube: KubeClient

    def replica(self, identity: str) -> Replica:
        work, metrics = Work(), Metrics()
        elector = Elector(
            self.kube, NS, NAME, T, metrics, work, identity=identity, clock=self.clock, wall=self.clock.wall
        )
        return Replica(elector, work, metrics)

    def lease(self) -> dict[str, object]:
        return dict(self.api.leases[(NS, NAME)]["spec"])


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with FakeAPI() as api:
        kube = KubeClient(api.login())
        try:
            yield World(api, Clock(), kube)
        finally:
            await kube.close()


def leader_gauge(r: Replica) -> str:
    return next(line for line in r.metrics.render().splitlines() if line.startswith("sipsockets_leader "))


async def test_the_first_replica_creates_the_lease_and_leads_the_other_watches(world: World) -> None:
    a, b = world.replica("a"), world.replica("b")
    await a.elector.step()
    await b.elector.step()
    assert (a.elector.leading, b.elector.leading) == (True, False)
    assert (a.work.log, b.work.log) == (["start"], [])
    spec = world.lease()
    assert spec["holderIdentity"] == "a"
    assert (spec["leaseDurationSeconds"], spec["leaseTransitions"]) == (15, 0)
    assert spec["acquireTime"] == spec["renewTime"]
    assert (leader_gauge(a), leader_gauge(b)) == ("sipsockets_leader 1", "sipsockets_leader 0")
    with pytest.raises(NotLeader):
        b.elector.budget()
    assert a.elector.budget() == pytest.approx(15.0)


async def test_two_replicas_started_at_the_same_instant_elect_exactly_one(world: World) -> None:
    replicas = [world.replica(name) for name in ("a", "b", "c")]
    for _ in range(5):
        await asyncio.gather(*(r.elector.step() for r in replicas))
        leaders = [r for r in replicas if r.elector.leading]
        assert len(leaders) == 1
        world.clock.now += 1
    assert sum(len(r.work.log) for r in replicas) == 1  # started once, never stopped
    assert [w[0] for w in world.api.lease_writes].count("POST") == 1


async def test_the_leader_renews_and_keeps_its_acquire_time(world: World) -> None:
    a = world.replica("a")
    await a.elector.step()
    acquired = world.lease()["acquireTime"]
    world.clock.now += 2
    delay = await a.elector.step()
    assert delay == pytest.approx(T.retry_period)
    spec = world.lease()
    assert spec["acquireTime"] == acquired
    assert spec["renewTime"] != acquired
    assert a.elector.budget() == pytest.approx(15.0)  # counted from the renew just sent


async def test_a_killed_leader_is_replaced_after_the_lease_duration_not_before(world: World) -> None:
    a, b = world.replica("a"), world.replica("b")
    await a.elector.step()
    await b.elector.step()  # b sees a's record now (t=1000)
    # a is killed: it never renews again. b looks every retry period, and sleeps no further than the expiry.
    world.clock.now = 1014.0
    delay = await b.elector.step()
    assert not b.elector.leading
    assert delay == pytest.approx(1.0)  # wakes exactly when a's record expires
    world.clock.now = 1015.0
    await b.elector.step()
    assert b.elector.leading
    spec = world.lease()
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)
    assert b.work.log == ["start"]


async def test_the_duration_counts_from_when_the_candidate_saw_the_last_renew(world: World) -> None:
    """The holder renewed at 1008 (b saw it at 1008): b may not take over at 1015, only at 1023."""
    a, b = world.replica("a"), world.replica("b")
    await a.elector.step()
    await b.elector.step()
    world.clock.now = 1008.0
    await a.elector.step()  # a's last renew
    assert world.lease()["renewTime"] != world.lease()["acquireTime"]
    await b.elector.step()
    world.clock.now = 1022.9
    await b.elector.step()
    assert not b.elector.leading
    world.clock.now = 1023.0
    await b.elector.step()
    assert b.elector.leading


async def test_a_leader_that_cannot_renew_stops_writing_at_the_renew_deadline(world: World) -> None:
    a, b = world.replica("a"), world.replica("b")
    await a.elector.step()
    await b.elector.step()
    world.api.lease_fail_with = 500  # a cannot reach the API (b neither: it changes nothing for b)
    world.clock.now = 1005.0
    delay = await a.elector.step()
    assert a.elector.leading and a.work.running
    assert delay == pytest.approx(2.0)
    assert a.elector.budget() == pytest.approx(10.0)
    world.clock.now = 1009.0
    assert await a.elector.step() == pytest.approx(1.0)  # looks again at the deadline, not later
    world.clock.now = 1010.0
    await a.elector.step()
    assert not a.elector.leading
    assert a.work.log == ["start", "stop"]
    with pytest.raises(NotLeader):
        a.elector.budget()
    # a stopped at 1010; b, which saw a's record at 1000, may take over only at 1015.
    world.api.lease_fail_with = None
    world.clock.now = 1014.9
    await b.elector.step()
    assert not b.elector.leading
    world.clock.now = 1015.0
    await b.elector.step()
    assert b.elector.leading


async def test_a_write_asked_after_the_deadline_is_refused_even_before_the_loop_notices(world: World) -> None:
    """A stalled event loop: the elector has not run since the deadline passed. The fence refuses, and the
    work is stopped by a task of its own."""
    a = world.replica("a")
    await a.elector.step()
    world.clock.now = 1010.0
    with pytest.raises(NotLeader):
        a.elector.budget()
    await asyncio.sleep(0)
    assert a.work.log == ["start", "stop"]
    assert not a.elector.leading


async def test_a_leader_whose_lease_was_taken_steps_down_at_once(world: World) -> None:
    a = world.replica("a")
    await a.elector.step()
    lease = world.api.leases[(NS, NAME)]
    lease["spec"]["holderIdentity"] = "intruder"  # e.g. an old operator version's replica, or a person
    lease["metadata"]["resourceVersion"] = "999"
    world.clock.now += 2
    await a.elector.step()
    assert not a.elector.leading
    assert a.work.log == ["start", "stop"]


async def test_a_clean_stop_releases_the_lease_and_the_next_replica_takes_it_at_once(world: World) -> None:
    a, b = world.replica("a"), world.replica("b")
    await a.elector.step()
    await b.elector.step()
    await a.elector.resign()
    assert a.work.log == ["start", "stop"]
    assert world.lease()["holderIdentity"] == ""
    world.clock.now += 0.5  # far less than a lease duration
    await b.elector.step()
    assert b.elector.leading
    assert world.lease()["leaseTransitions"] == 0  # a released it: nobody was displaced


async def test_the_loop_runs_until_stopped_then_releases(world: World) -> None:
    a = world.replica("a")
    stop = asyncio.Event()
    task = asyncio.create_task(a.elector.run(stop))
    for _ in range(100):
        if a.elector.leading:
            break
        await asyncio.sleep(0.01)
    assert a.elector.leading
    stop.set()
    await asyncio.wait_for(task, 5)
    assert a.work.log == ["start", "stop"]
    assert world.lease()["holderIdentity"] == ""
