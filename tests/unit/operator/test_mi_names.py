"""OpenSIPS after 3.6 names the sockets_mgm MI commands `sockets_mgm:reload` and `sockets_mgm:list`: the
operator serves a proxy that knows only those, asking it by the 3.6 name once and then by the name that
worked, and a proxy that knows the 3.6 names is never asked anything else."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sipoperator.kube import KubeClient
from sipoperator.metrics import Metrics
from sipoperator.proxies import Fleet
from sipoperator.reconciler import Reconciler
from sipoperator.settings import Settings
from sipoperator.status import StatusWriter
from sipoperator.store import Store
from tests.unit.operator.servers import FakeAPI, FakeMI


@pytest.fixture
async def operator(tmp_path: Path) -> AsyncIterator[tuple[Reconciler, FakeAPI, Fleet, Store]]:
    db = tmp_path / "sockets.db"
    settings = Settings(namespace="voip", db_url=f"sqlite:///{db}")
    store = Store(settings.db_url)
    async with FakeAPI() as api:
        kube = KubeClient(api.login())
        metrics = Metrics()
        fleet = Fleet(settings, metrics)
        try:
            yield Reconciler(settings, store, fleet, metrics, StatusWriter(kube), kube), api, fleet, store
        finally:
            await kube.close()
            await fleet.client.close()
            await store.close()


def table_sockets(rec: Reconciler) -> Callable[[], list[str]]:
    def sockets() -> list[str]:
        path = rec.settings.db_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            return [str(r[0]) for r in conn.execute("SELECT socket FROM sockets")]

    return sockets


def body(api: FakeAPI, name: str, port: int, generation: int = 1) -> dict[str, Any]:
    api.objects.setdefault(("voip", name), {})
    return {
        "metadata": {"uid": f"uid-{name}", "namespace": "voip", "name": name, "generation": generation},
        "spec": {"protocol": "udp", "address": "10.0.0.1", "port": port},
        "status": dict(api.objects[("voip", name)]),
    }


def ready(status: dict[str, Any]) -> tuple[str, str]:
    [cond] = [c for c in status["conditions"] if c["type"] == "Ready"]
    return cond["status"], cond["reason"]


async def test_a_proxy_with_only_the_new_names_is_served_and_asked_by_them_from_then_on(
    operator: tuple[Reconciler, FakeAPI, Fleet, Store],
) -> None:
    rec, api, fleet, _ = operator
    calls: list[str] = []
    mi = FakeMI(table_sockets(rec), calls.append, new_names_only=True)
    fleet.observe("proxy-0", "uid-p", "127.0.0.1", True, await mi.start())
    try:
        first = await rec.reconcile(body(api, "a", 5070))
        assert ready(first.status) == ("True", "Listening")
        sockets_mgm = [m for m in calls if m not in ("list_sockets", "sockets_capacity")]
        assert sockets_mgm == ["sockets_reload", "sockets_mgm:reload", "sockets_list", "sockets_mgm:list"]

        calls.clear()
        second = await rec.reconcile(body(api, "b", 5071))  # a new row: reload and list again
        assert ready(second.status) == ("True", "Listening")
        assert calls == ["sockets_mgm:reload", "sockets_mgm:list"]
        assert mi.listed == ["udp:10.0.0.1:5070", "udp:10.0.0.1:5071"]
    finally:
        await mi.close()


async def test_a_restarted_pod_is_asked_afresh(operator: tuple[Reconciler, FakeAPI, Fleet, Store]) -> None:
    """The names a pod answers to belong to its process: a new process may be another OpenSIPS version."""
    rec, api, fleet, _ = operator
    calls: list[str] = []
    old = FakeMI(table_sockets(rec), calls.append, new_names_only=True)
    fleet.observe("proxy-0", "uid-1", "127.0.0.1", True, await old.start())
    new = FakeMI(table_sockets(rec), calls.append)
    try:
        await rec.reconcile(body(api, "a", 5070))
        fleet.observe("proxy-0", "uid-2", "127.0.0.1", True, await new.start())
        calls.clear()
        again = await rec.reconcile(body(api, "a", 5070, generation=2))
        assert ready(again.status) == ("True", "Listening")
        assert [m for m in calls if m.startswith("sockets_mgm:")] == []
        assert "sockets_list" in calls
    finally:
        await old.close()
        await new.close()


async def test_a_proxy_with_the_36_names_is_only_asked_by_them(
    operator: tuple[Reconciler, FakeAPI, Fleet, Store],
) -> None:
    rec, api, fleet, _ = operator
    calls: list[str] = []
    mi = FakeMI(table_sockets(rec), calls.append)
    fleet.observe("proxy-0", "uid-p", "127.0.0.1", True, await mi.start())
    try:
        result = await rec.reconcile(body(api, "a", 5070))
        assert ready(result.status) == ("True", "Listening")
        assert [m for m in calls if m.startswith("sockets")] == [
            "sockets_capacity",
            "sockets_reload",
            "sockets_list",
        ]
    finally:
        await mi.close()
