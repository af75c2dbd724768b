"""Owned rows in a real SQLite database: written once, repaired, removed; other rows never touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import insert, select, update

from sipoperator.lease import NotLeader
from sipoperator.spec import Row
from sipoperator.store import Store


def make(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'db.sqlite'}")


async def test_write_is_idempotent_and_records_the_owner(tmp_path: Path) -> None:
    store = make(tmp_path)
    row = Row(socket="udp:10.0.0.1:5060", tag="a")
    first = await store.write("uid-1", "voip", "a", 1, row)
    again = await store.write("uid-1", "voip", "a", 1, row)
    assert first.changed and not again.changed
    assert first.row_id == again.row_id
    rows = await store.snapshot()
    assert [(r.socket, r.tag, r.owner_uid, r.owner_name) for r in rows] == [
        ("udp:10.0.0.1:5060", "a", "uid-1", "a")
    ]
    await store.close()


async def test_spec_change_replaces_the_row_in_place(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.write("uid-1", "voip", "a", 1, Row(socket="udp:10.0.0.1:5060"))
    changed = await store.write("uid-1", "voip", "a", 2, Row(socket="udp:10.0.0.1:5070"))
    assert changed.changed
    assert [r.socket for r in await store.snapshot()] == ["udp:10.0.0.1:5070"]
    await store.close()


async def test_hand_edits_and_deletes_are_repaired(tmp_path: Path) -> None:
    store = make(tmp_path)
    row = Row(socket="udp:10.0.0.1:5060")
    written = await store.write("uid-1", "voip", "a", 1, row)
    async with store.engine.begin() as conn:
        await conn.execute(update(store.sockets).values(socket="udp:10.0.0.1:9999"))
    assert (await store.write("uid-1", "voip", "a", 1, row)).changed
    assert [r.socket for r in await store.snapshot()] == ["udp:10.0.0.1:5060"]
    async with store.engine.begin() as conn:
        await conn.execute(store.sockets.delete())
    repaired = await store.write("uid-1", "voip", "a", 1, row)
    assert repaired.changed and repaired.row_id != written.row_id
    assert [(r.socket, r.owner_uid) for r in await store.snapshot()] == [("udp:10.0.0.1:5060", "uid-1")]
    await store.close()


async def test_rows_it_does_not_own_are_never_changed(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.ensure_schema()
    async with store.engine.begin() as conn:
        await conn.execute(insert(store.sockets).values(socket="tcp:10.0.0.9:5060", tag="by-hand"))
    await store.write("uid-1", "voip", "a", 1, Row(socket="udp:10.0.0.1:5060"))
    assert await store.remove("uid-1")
    assert not await store.remove("uid-1")
    assert not await store.remove("uid-unknown")
    async with store.engine.connect() as conn:
        left = (await conn.execute(select(store.sockets.c.socket, store.sockets.c.tag))).all()
    assert [tuple(r) for r in left] == [("tcp:10.0.0.9:5060", "by-hand")]
    owners = await store.owner_uids()
    assert owners == {}
    await store.close()


async def test_unreachable_database_is_reported_not_raised_raw(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'no-such-dir' / 'db.sqlite'}")
    try:
        await store.snapshot()
    except Exception as exc:
        assert type(exc).__name__ == "DatabaseUnavailable"
        assert "creating the tables" in str(exc)
    else:
        raise AssertionError("expected DatabaseUnavailable")
    await store.close()


class Closed:
    def budget(self) -> float:
        raise NotLeader("not the leader")


class Short:
    """A leader with this little time left before the Lease could pass to another replica."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def budget(self) -> float:
        return self.seconds


async def test_a_replica_without_the_lease_writes_nothing_and_still_reads(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.write("uid-1", "voip", "a", 1, Row(socket="udp:10.0.0.1:5060"))
    store.fence = Closed()
    with pytest.raises(NotLeader):
        await store.write("uid-2", "voip", "b", 1, Row(socket="udp:10.0.0.2:5060"))
    with pytest.raises(NotLeader):
        await store.remove("uid-1")
    assert [r.owner_uid for r in await store.snapshot()] == ["uid-1"]  # reads are not fenced (the webhook)
    await store.close()


async def test_a_write_that_would_outlive_the_lease_is_abandoned(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.ensure_schema()
    store.fence = Short(0.0)
    with pytest.raises(NotLeader, match="abandoned"):
        await store.write("uid-1", "voip", "a", 1, Row(socket="udp:10.0.0.1:5060"))
    store.fence = Short(30.0)
    assert await store.snapshot() == []  # nothing of the abandoned write was committed
    await store.close()
