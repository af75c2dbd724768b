"""What makes a reload cheap with many sockets must not change what it says: the listing's remembered texts
always show the socket as it is now, the answer assembled from them is the JSON a client reads, and the table
reader sees every change of the table (also when its file is replaced)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sipproxy.shared.schema import init_db
from sipproxy.shared.socketspec import parse_row
from sipproxy.supervisor.db_reader import Row, TableReader, make_engine
from sipproxy.supervisor.entries import Entry, ReloadResult
from sipproxy.supervisor.mi.listing import UNSEEN, Listing, entry_dict
from sipproxy.supervisor.mi.rpc import Params, RawJson
from sipproxy.supervisor.mi.server import make_app
from sipproxy.supervisor.traffic import RECEIVING_SECONDS, Traffic


class World:
    """A few sockets, their traffic and the TLS generation, listed through one `Listing`."""

    def __init__(self) -> None:
        self.traffic = Traffic()
        self.generation = 1
        self.entries = [
            Entry(1, "dynamic", parse_row("udp:10.0.0.1:5060"), slot=0, sock=object(), address_local=True),
            Entry(2, "dynamic", parse_row("tls:10.0.0.2:5061"), slot=1, sock=object(), address_local=True),
        ]
        self.listing = Listing(self.traffic, self.warning, lambda: self.generation, self.live)

    def warning(self, entry: Entry) -> str | None:
        assert entry.spec is not None
        return f"no domain in generation {self.generation}" if entry.spec.proto == "tls" else None

    def live(self) -> list[int]:
        return [e.sid for e in self.entries]

    def fresh(self, now: float) -> list[dict[str, object]]:
        """How each entry is listed when built anew."""
        out = []
        for e in self.entries:
            assert e.spec is not None
            seen = self.traffic.of(e.spec.socket_str)
            out.append(entry_dict(e, False, self.warning(e), seen or UNSEEN, now))
        return out

    def listed(self, now: float) -> list[dict[str, object]]:
        listed = json.loads(self.listing.array(self.entries, now))
        assert isinstance(listed, list)
        return listed


def test_a_remembered_listing_shows_every_change_of_what_it_shows() -> None:
    world = World()
    udp, tls = world.entries
    assert udp.spec is not None and tls.spec is not None
    now = 1000.0

    def check() -> None:
        assert world.listed(now) == world.fresh(now)

    check()
    world.traffic.observe({udp.spec.socket_str: 5}, now)
    check()
    assert world.listed(now)[0]["received"] == 5 and world.listed(now)[0]["receiving"] is True
    now += RECEIVING_SECONDS + 1  # nothing arrived for a while (and nothing else changed): not receiving
    check()
    assert world.listed(now)[0]["receiving"] is False
    udp.lagging["udp-pool#3"] = "worker udp-pool#3 (pid 7) did not apply the change within 10 s"
    check()
    assert world.listed(now)[0]["state"] == "partial"
    udp.lagging.clear()
    udp.address_local = False
    check()
    assert world.listed(now)[0]["state"] == "absent"
    udp.note = "placed on some nodes"
    check()
    udp.spec = parse_row("udp:10.0.0.1:5060", advertised="203.0.113.1")  # an update: same socket
    udp.row = Row("udp:10.0.0.1:5060", "203.0.113.1", None, None, None)
    check()
    assert world.listed(now)[0]["advertised"] == "203.0.113.1:5060"
    world.generation = 2  # new TLS domains: the TLS socket's warning is looked at again
    check()
    assert world.listed(now)[1]["warning"] == "no domain in generation 2"
    # `kind` is listed by list_sockets only: the same entry is remembered both ways.
    kinded = json.loads(world.listing.array(world.entries, now, with_kind=True))
    assert [e["kind"] for e in kinded] == ["dynamic", "dynamic"]
    check()


def test_the_reload_answer_has_every_field_and_forgets_sockets_gone() -> None:
    world = World()
    udp, tls = world.entries
    failed = Entry(9, "dynamic", None, row=Row("udp:x", None, None, None, None), state="failed", error="bad")
    result = ReloadResult([tls], [], [udp], [failed])
    answer = json.loads(world.listing.reload_answer(result, 5.0))
    assert list(answer) == ["added", "removed", "kept", "updated", "failed", "absent", "unselected"]
    assert answer["added"] == world.fresh(5.0)[1:] and answer["kept"] == world.fresh(5.0)[:1]
    assert answer["failed"] == [{"socket": "udp:x", "error": "bad"}]
    assert answer["removed"] == answer["updated"] == answer["absent"] == answer["unselected"] == []
    # Sockets come and go: the texts of those gone do not pile up.
    for sid in range(100, 400):
        entry = Entry(sid, "dynamic", parse_row(f"udp:10.0.{sid // 250}.{sid % 250}:5060"), sock=object())
        world.entries[1:] = [entry]
        world.listing.array(world.entries, 5.0)
    assert world.listing.remembered() <= 2 * len(world.entries) + 64


async def raw_answer(params: Params) -> RawJson:
    return RawJson('{"kept":[{"socket":"udp:10.0.0.1:5060"}]}')


@pytest.mark.parametrize("ident", [7, 'a"b\\c', "ünïcode", None, 2.5])
async def test_an_answer_written_ahead_is_sent_as_json_with_the_request_id(ident: object) -> None:
    app = make_app("mi", {"sockets_reload": raw_answer}, None, ready=lambda: True, metrics=_no_metrics)
    async with TestClient(TestServer(app)) as client:
        body = {"jsonrpc": "2.0", "method": "sockets_reload", "id": ident}
        resp = await client.post("/mi", data=json.dumps(body), headers={"Content-Type": "application/json"})
        assert json.loads(await resp.text()) == {
            "jsonrpc": "2.0",
            "result": {"kept": [{"socket": "udp:10.0.0.1:5060"}]},
            "id": ident,
        }


async def _no_metrics() -> str:
    return ""


async def test_the_table_reader_sees_each_change_and_a_replaced_file(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    engine = make_engine(f"sqlite:///{db}")
    try:
        await init_db(engine)
        reader = TableReader(engine)
        assert await reader.read() == []
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO sockets (socket) VALUES ('udp:10.0.0.1:5060')")
        assert [r.socket for r in await reader.read()] == ["udp:10.0.0.1:5060"]
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO sockets (socket, tag) VALUES ('udp:10.0.0.2:5060', 'b')")
            conn.execute("UPDATE sockets SET tag = 'a' WHERE socket = 'udp:10.0.0.1:5060'")
        assert sorted((r.socket, r.tag) for r in await reader.read()) == [
            ("udp:10.0.0.1:5060", "a"),
            ("udp:10.0.0.2:5060", "b"),
        ]
        # The file replaced by another (a restore, a new volume): the new one is read.
        other = tmp_path / "other.db"
        other_engine = make_engine(f"sqlite:///{other}")
        await init_db(other_engine)
        await other_engine.dispose()
        with sqlite3.connect(other) as conn:
            conn.execute("INSERT INTO sockets (socket) VALUES ('tcp:10.0.0.3:5060')")
        other.replace(db)
        assert [r.socket for r in await reader.read()] == ["tcp:10.0.0.3:5060"]
        # A file that is gone is an error (a reload answers 500 and changes nothing), not an empty table.
        db.unlink()
        with pytest.raises(FileNotFoundError):
            await reader.read()
        assert not db.exists()
    finally:
        reader.close()
        await engine.dispose()
