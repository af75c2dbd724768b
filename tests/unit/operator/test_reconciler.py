"""Whole passes of the reconciler against a real SQLite table, proxy MIs and a Kubernetes API on loopback.

What the chain must keep: no MI call while the table lock is held (every other object would wait behind MI
timeouts), reloads after removals included; the status written once per change, its port from the spec."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sipoperator.kube import KubeClient
from sipoperator.metrics import Metrics
from sipoperator.proxies import Fleet
from sipoperator.reconciler import Reconciler
from sipoperator.settings import Settings
from sipoperator.spec import Row
from sipoperator.status import StatusWriter
from sipoperator.store import Store
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
    db = tmp_path / "sockets.db"
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
