"""Whole passes of the reconciler against a real SQLite table, proxy MIs and a Kubernetes API on loopback.

What the chain must keep: no MI call while the table lock is held (every other object would wait behind MI
timeouts), reloads after removals included; the status written once per change, its port from the spec."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sipoperator.kube import KubeClient
from sipoperator.metrics import Metrics
from sipoperator.proxies import Fleet
from sipoperator.reconciler import Reconciler, Result
from sipoperator.settings import Settings
from sipoperator.spec import Row
from sipoperator.status import StatusWriter
from sipoperator.store import Store
from tests.tlscerts import issue, make_ca
from tests.unit.operator.servers import FakeAPI, FakeMI


@dataclass
class World:
    rec: Reconciler
    api: FakeAPI
    mi: FakeMI
    db: Path
    calls: list[tuple[str, bool]]  # (MI method, table lock held)

    def table(self) -> list[tuple[str, str | None]]:
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute(
                "SELECT s.socket, o.name FROM sockets s LEFT JOIN sipsockets_owners o ON o.socket_id = s.id"
            ).fetchall()
        return sorted((str(r[0]), r[1]) for r in rows)

    def body(
        self, name: str, spec: dict[str, Any], uid: str | None = None, generation: int = 1
    ) -> dict[str, Any]:
        self.api.objects.setdefault(("voip", name), {})
        return {
            "metadata": {
                "uid": uid or f"uid-{name}",
                "namespace": "voip",
                "name": name,
                "generation": generation,
                "creationTimestamp": f"2026-01-01T00:00:0{len(self.rec.known)}Z",
            },
            "spec": spec,
            "status": dict(self.api.objects[("voip", name)]),  # the watch has seen the API's status
        }

    def reloads(self) -> int:
        return sum(1 for method, _ in self.calls if method == "sockets_reload")

    def methods(self) -> list[str]:
        """The MI methods called so far, discovery left out."""
        return [m for m, _ in self.calls if m not in ("list_sockets", "sockets_capacity")]

    def domains(self) -> list[tuple[str, str, bytes]]:
        """(domain, match_ip_address, certificate) of every tls_mgm row."""
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute("SELECT domain, match_ip_address, certificate FROM tls_mgm").fetchall()
        return sorted((str(r[0]).strip(), str(r[1]).strip(), bytes(r[2])) for r in rows)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with make_world(tmp_path / "sockets.db") as made:
        yield made


@contextlib.asynccontextmanager
async def make_world(db: Path, max_sockets: int = 100) -> AsyncIterator[World]:
    settings = Settings(namespace="voip", db_url=f"sqlite:///{db}")
    store = Store(settings.db_url)
    calls: list[tuple[str, bool]] = []

    def sockets() -> list[str]:
        with sqlite3.connect(db) as conn:
            return [str(r[0]) for r in conn.execute("SELECT socket FROM sockets")]

    def domains() -> list[tuple[str, bytes]]:
        with sqlite3.connect(db) as conn:
            return [
                (str(r[0]).strip(), bytes(r[1]))
                for r in conn.execute("SELECT domain, certificate FROM tls_mgm")
            ]

    async with FakeAPI() as api:
        kube = KubeClient(api.login())
        metrics = Metrics()
        fleet = Fleet(settings, metrics)
        rec = Reconciler(settings, store, fleet, metrics, StatusWriter(kube), kube)
        mi = FakeMI(sockets, lambda method: calls.append((method, rec.table_lock.locked())), domains=domains)
        mi.max_sockets = max_sockets
        fleet.observe("proxy-0", "uid-p", "127.0.0.1", True, await mi.start())
        try:
            yield World(rec, api, mi, db, calls)
        finally:
            await mi.close()
            await kube.close()
            await fleet.client.close()
            await store.close()
    assert [c for c in calls if c[1]] == [], "an MI call was made while the table lock was held"


def udp(address: str, port: int, **spec: Any) -> dict[str, Any]:
    if address in ("0.0.0.0", "::"):  # a wildcard needs the address peers reach it on
        spec.setdefault("advertised", {"address": "203.0.113.10"})
    return {"protocol": "udp", "address": address, "port": port, **spec}


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


async def test_a_pass_programs_the_row_reloads_outside_the_lock_and_writes_the_status_once(
    world: World,
) -> None:
    result = await world.rec.reconcile(world.body("a", udp("10.0.0.1", 5070)))
    assert conditions(result.status)["Ready"][:2] == ("True", "Listening")
    assert world.table() == [("udp:10.0.0.1:5070", "a")]
    assert world.reloads() == 1
    [patch] = world.api.patches
    assert patch.body["status"]["port"] == 5070
    assert patch.body["status"]["socket"] == "udp:10.0.0.1:5070"
    assert [c.reason for c in result.changed] == ["Accepted", "Programmed", "Listening"]

    # A resync that finds nothing new: no reload, no status call, no Event.
    again = await world.rec.reconcile(world.body("a", udp("10.0.0.1", 5070)))
    assert world.reloads() == 1
    assert len(world.api.patches) == 1
    assert again.changed == []


async def test_the_default_port_is_reported_from_the_validated_spec(world: World) -> None:
    spec = {"protocol": "tls", "address": "10.0.0.1", "tls": {"secretName": "d-tls"}}
    result = await world.rec.reconcile(world.body("d", spec))
    assert (result.status["port"], result.status["socket"]) == (5061, "tls:10.0.0.1:5061")


async def test_an_invalid_spec_removes_the_row_and_reloads_after_the_lock(world: World) -> None:
    await world.rec.reconcile(world.body("a", udp("10.0.0.1", 5070)))
    bad = world.body("a", udp("sbc.example.com", 5070), generation=2)
    result = await world.rec.reconcile(bad)
    assert conditions(result.status)["Accepted"][:2] == ("False", "InvalidSpec")
    assert (result.status["port"], result.status["socket"], result.status["listeners"]) == (None, None, [])
    assert world.table() == []
    assert world.reloads() == 2
    assert world.mi.listed == []


async def test_the_orphan_of_a_recreated_name_is_removed_and_its_endpoint_freed(world: World) -> None:
    await world.rec.store.write("uid-old", "voip", "a", 1, Row(socket="udp:10.0.0.1:5070"))
    result = await world.rec.reconcile(world.body("a", udp("10.0.0.1", 5070), uid="uid-new"))
    assert conditions(result.status)["Ready"][:2] == ("True", "Listening")
    with sqlite3.connect(world.db) as conn:
        assert conn.execute("SELECT uid FROM sipsockets_owners").fetchall() == [("uid-new",)]


async def test_a_refused_wildcard_names_the_holder_and_loses_its_row(world: World) -> None:
    await world.rec.reconcile(world.body("a", udp("10.0.0.1", 5070)))
    result = await world.rec.reconcile(world.body("w", udp("0.0.0.0", 5070)))
    accepted = conditions(result.status)["Accepted"]
    assert accepted[:2] == ("False", "EndpointConflict")
    assert "UDP 0.0.0.0:5070 overlaps UDP 10.0.0.1:5070" in accepted[2]
    assert "SipSocket voip/a" in accepted[2]
    assert result.status["port"] == 5070
    assert world.table() == [("udp:10.0.0.1:5070", "a")]

    # The holder moves away: the wildcard's next pass takes the port; the old row is reloaded away.
    await world.rec.reconcile(world.body("a", udp("10.0.0.1", 5071), generation=2))
    result = await world.rec.reconcile(world.body("w", udp("0.0.0.0", 5070)))
    assert conditions(result.status)["Ready"][:2] == ("True", "Listening")
    assert world.table() == [("udp:0.0.0.0:5070", "w"), ("udp:10.0.0.1:5071", "a")]
    assert sorted(world.mi.listed) == ["udp:0.0.0.0:5070", "udp:10.0.0.1:5071"]


async def test_finalize_removes_the_row_and_reloads_after_the_lock(world: World) -> None:
    body = world.body("a", udp("10.0.0.1", 5070))
    await world.rec.reconcile(body)
    assert await world.rec.finalize("uid-a") == {}
    assert world.table() == []
    assert world.mi.listed == []


async def test_the_wide_columns_show_the_advertised_address_and_the_pods_listening(world: World) -> None:
    spec = udp("10.0.0.1", 5070, advertised={"address": "sbc.example.com"})
    result = await world.rec.reconcile(world.body("w", spec))
    assert (result.status["advertised"], result.status["listening"]) == ("sbc.example.com:5070", "1/1")
    assert world.api.objects[("voip", "w")]["listening"] == "1/1"

    # advertised dropped from the spec: the merge patch removes the field (null) instead of leaving it stale.
    result = await world.rec.reconcile(world.body("w", udp("10.0.0.1", 5070), generation=2))
    assert result.status["advertised"] is None
    assert world.api.patches[-1].body["status"]["advertised"] is None

    # Refused: nothing listens and nothing is advertised.
    result = await world.rec.reconcile(world.body("w", udp("sbc.example.com", 5070), generation=3))
    assert (result.status["advertised"], result.status["listening"]) == (None, None)


def born(body: dict[str, Any], second: int) -> dict[str, Any]:
    body["metadata"]["creationTimestamp"] = f"2026-01-01T00:00:{second:02d}Z"
    return body


async def in_one_batch(world: World, bodies: list[dict[str, Any]]) -> list[Result]:
    """Reconcile `bodies` at once with their table steps queued behind the held table lock, so that they run
    as one batch when it is released (as a thousand passes do at start-up)."""
    rec = world.rec
    await rec.fleet.discover_all()  # no MI call on the way to the lock
    async with rec.table_lock:
        tasks = [asyncio.create_task(rec.reconcile(b)) for b in bodies]
        for _ in range(1000):
            if rec.steps_waiting() == len(bodies):
                break
            await asyncio.sleep(0.01)
        assert rec.steps_waiting() == len(bodies)
    return list(await asyncio.gather(*tasks))


# Two claims on each of two endpoints (one of them a wildcard and an address it covers), and more winners
# than the proxies have slots for: the batch must pick the same winners as passes one at a time.
CONTENDERS = [
    ("a", udp("10.0.0.1", 5070), 5),
    ("b", udp("10.0.0.1", 5070), 1),  # older than a: holds 10.0.0.1:5070
    ("x", udp("10.0.0.2", 5071), 6),
    ("w", udp("0.0.0.0", 5071), 2),  # an older wildcard: x loses to it
    ("c", udp("10.0.0.3", 5072), 3),
    ("d", udp("10.0.0.4", 5072), 4),  # the fourth winner: no slot left (max_sockets 3)
]


async def test_a_batch_picks_the_same_winners_as_passes_one_at_a_time(tmp_path: Path) -> None:
    async with make_world(tmp_path / "batch.db", max_sockets=3) as batched:
        bodies = [born(batched.body(n, spec), t) for n, spec, t in CONTENDERS]
        together = {
            r.status["socket"] + " " + n: conditions(r.status)["Accepted"]
            for (n, _, _), r in zip(CONTENDERS, await in_one_batch(batched, bodies), strict=True)
        }
        assert batched.reloads() <= 2  # the passes' reloads coalesce: none per SipSocket
        table = batched.table()
    async with make_world(tmp_path / "one.db", max_sockets=3) as alone:
        bodies = [born(alone.body(n, spec), t) for n, spec, t in CONTENDERS]
        for body in bodies:  # the watch has listed them all, as before the batch
            alone.rec.observe(body)
        one_by_one = {}
        for (n, _, _), body in zip(CONTENDERS, bodies, strict=True):
            result = await alone.rec.reconcile(body)
            one_by_one[result.status["socket"] + " " + n] = conditions(result.status)["Accepted"]
        assert alone.table() == table
    assert table == [("udp:0.0.0.0:5071", "w"), ("udp:10.0.0.1:5070", "b"), ("udp:10.0.0.3:5072", "c")]
    assert {k: v[:2] for k, v in together.items()} == {k: v[:2] for k, v in one_by_one.items()}
    assert together["udp:10.0.0.1:5070 a"][:2] == ("False", "EndpointConflict")
    assert "SipSocket voip/b" in together["udp:10.0.0.1:5070 a"][2]
    assert "SipSocket voip/w" in together["udp:10.0.0.2:5071 x"][2]
    assert together["udp:10.0.0.4:5072 d"][:2] == ("False", "CapacityExceeded")


async def test_a_batch_whose_transaction_fails_is_written_one_by_one(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """One SipSocket's tls_mgm domain name is taken by a row made by hand: the batch's one transaction fails,
    so nothing of it was written; each step then runs alone and only that one is refused."""
    leaf = issue(make_ca(), "sip.example.com", dns=["sip.example.com"])
    world.api.put_secret(
        "voip", "edge-tls", "kubernetes.io/tls", {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem}
    )
    await world.rec.store.ensure_schema()
    with sqlite3.connect(world.db) as conn:
        conn.execute("INSERT INTO tls_mgm (domain, type, match_ip_address) VALUES ('voip/edge', 2, '*')")
    edge = {"protocol": "tls", "address": "10.0.0.9", "port": 5061, "tls": {"secretName": "edge-tls"}}
    bodies = [
        born(world.body("a", udp("10.0.0.1", 5070)), 1),
        born(world.body("edge", edge), 2),
        born(world.body("c", udp("10.0.0.3", 5070)), 3),
    ]
    results = await in_one_batch(world, bodies)
    assert [conditions(r.status)["Programmed"][:2] for r in results] == [
        ("True", "Programmed"),
        ("False", "DomainConflict"),
        ("True", "Programmed"),
    ]
    assert world.table() == [("udp:10.0.0.1:5070", "a"), ("udp:10.0.0.3:5070", "c")]
    assert [conditions(r.status)["Ready"][:2] for r in (results[0], results[2])] == [
        ("True", "Listening")
    ] * 2
    assert "rows in one transaction failed" in caplog.text


async def test_finalizers_that_arrive_together_remove_their_rows_in_one_batch(world: World) -> None:
    names = ["a", "b", "c"]
    for i, name in enumerate(names):
        await world.rec.reconcile(born(world.body(name, udp(f"10.0.0.{i + 1}", 5070)), i))
    reloads = world.reloads()
    async with world.rec.table_lock:
        tasks = [asyncio.create_task(world.rec.finalize(f"uid-{n}")) for n in names]
        for _ in range(1000):
            if world.rec.steps_waiting() == len(names):
                break
            await asyncio.sleep(0.01)
        assert world.rec.steps_waiting() == len(names)
    assert await asyncio.gather(*tasks) == [{}, {}, {}]
    assert world.table() == []
    assert world.mi.listed == []
    assert world.reloads() - reloads <= 2  # coalesced: not one per SipSocket
