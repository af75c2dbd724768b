"""The database goes down and comes back (a real PostgreSQL server): conditions say so, then recover alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.databases import PostgresServer
from tests.e2e.operator_support import (
    Env,
    apply,
    condition,
    crd,
    env,
    init_db,
    sipsocket,
    wait_condition,
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
