"""The database goes down and comes back (a real PostgreSQL server): conditions say so, then recover alone;
a deletion meanwhile waits for it, saying why."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.databases import PostgresServer
from sipoperator.store import Store
from tests.e2e.operator_support import (
    Env,
    apply,
    condition,
    crd,
    env,
    events,
    get,
    init_db,
    sipsocket,
    wait_condition,
    wait_for,
)

__all__ = ["crd", "env"]  # fixtures


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    pg = PostgresServer(tmp_path / "pg")
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


def test_database_stopped_and_restarted(env: Env, postgres: PostgresServer) -> None:
    cp, ns = env.cp, env.namespace
    db_url = postgres.create_database("sockets_e2e")
    init_db(db_url)
    env.pod("sipproxy-0", db_url=db_url)
    env.operator(db_url=db_url)
    addr = env.addresses.next()
    apply(cp, ns, sipsocket("before", "udp", addr, 5070))
    wait_condition(cp, ns, "before", "Ready", "True")

    postgres.halt()
    try:
        obj = wait_condition(cp, ns, "before", "Programmed", "False", "DatabaseUnavailable")
        assert condition(obj, "Ready")["reason"] == "DatabaseUnavailable"
        # The proxy keeps serving what it has; the listener still says so.
        assert [e["state"] for e in obj["status"]["listeners"]] == ["Listening"]
        apply(cp, ns, sipsocket("during", "udp", addr, 5071))
        wait_condition(cp, ns, "during", "Programmed", "False", "DatabaseUnavailable")
        events = cp.kubectl("get", "events", "-n", ns, "-o", "jsonpath={.items[*].reason}").stdout.split()
        assert "DatabaseUnavailable" in events
    finally:
        postgres.resume()

    wait_condition(cp, ns, "before", "Ready", "True", timeout=120)
    wait_condition(cp, ns, "during", "Ready", "True", timeout=120)


def table(db_url: str) -> list[str]:
    async def read() -> list[str]:
        store = Store(db_url)
        try:
            return sorted(str(r.socket) for r in await store.snapshot())
        finally:
            await store.close()

    return asyncio.run(read())


def test_deletion_while_the_database_is_down_waits_and_says_why(env: Env, postgres: PostgresServer) -> None:
    """The finalizer stays while the row cannot be removed; Programmed (and Ready) say DatabaseUnavailable
    with a message saying the deletion waits; once the server is back the row goes, then the object."""
    cp, ns = env.cp, env.namespace
    db_url = postgres.create_database("sockets_e2e")
    init_db(db_url)
    env.pod("sipproxy-0", db_url=db_url)
    env.operator(db_url=db_url)
    addr = env.addresses.next()
    apply(cp, ns, sipsocket("doomed", "udp", addr, 5070))
    wait_condition(cp, ns, "doomed", "Ready", "True")
    assert table(db_url) == [f"udp:{addr}:5070"]

    postgres.halt()
    try:
        cp.kubectl("delete", "sipsocket", "doomed", "-n", ns, "--wait=false")
        obj = wait_condition(cp, ns, "doomed", "Programmed", "False", "DatabaseUnavailable")
        assert obj["metadata"]["deletionTimestamp"]
        assert obj["metadata"]["finalizers"] == ["sipsockets.io/finalizer"]
        programmed = condition(obj, "Programmed")
        assert programmed["message"].startswith("deleting: the row cannot be removed"), programmed
        assert condition(obj, "Ready")["reason"] == "DatabaseUnavailable"
        warnings = [e for e in events(cp, ns, "doomed") if e["reason"] == "DatabaseUnavailable"]
        assert warnings and warnings[0]["type"] == "Warning"
        # The object stays while the database is down (the keeper retries with backoff meanwhile).
        assert get(cp, ns, "doomed") is not None
    finally:
        postgres.resume()

    wait_for(lambda: get(cp, ns, "doomed") is None, "the deletion completed", timeout=120)
    assert table(db_url) == []
