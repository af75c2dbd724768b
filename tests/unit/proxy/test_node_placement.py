"""Sockets that live on some nodes, the proxy's side: the placement side table (nodes, free bind), how a bind
that finds no address is told apart, what sockets_list says of absent, unselected and free-bind sockets, and
where traffic arrives."""

from __future__ import annotations

import errno
import socket
import sqlite3
from pathlib import Path

import pytest

from sipproxy.shared.placement import (
    NodesError,
    advertised_here,
    format_node_advertised,
    format_nodes,
    parse_node_advertised,
    parse_nodes,
    serves_here,
)
from sipproxy.shared.schema import init_db
from sipproxy.shared.socketspec import SocketSpec, parse_row
from sipproxy.supervisor.binding import address_absent, address_present, bind_socket
from sipproxy.supervisor.config import load_config, parse_config
from sipproxy.supervisor.db_reader import Row, TableReader, make_engine
from sipproxy.supervisor.entries import Entry
from sipproxy.supervisor.mi.listing import entry_dict
from sipproxy.supervisor.reload_diff import diff_sockets
from sipproxy.supervisor.supervisor import judge_rows
from sipproxy.supervisor.traffic import RECEIVING_SECONDS, Seen, Traffic, receiving

# TEST-NET-1 (RFC 5737): on no host.
NOT_HERE = "192.0.2.77"


def test_the_nodes_column_is_every_node_when_empty_and_a_set_otherwise() -> None:
    assert parse_nodes(None) is None and parse_nodes("  ") is None
    assert parse_nodes("node-b, node-a") == frozenset({"node-a", "node-b"})
    assert parse_nodes(",") == frozenset()  # placed on no node at all
    assert format_nodes(frozenset({"node-b", "node-a"})) == "node-a,node-b"
    assert format_nodes(frozenset()) == "," and format_nodes(None) is None
    for nodes in (None, frozenset(), frozenset({"a"}), frozenset({"sbc-1.example", "sbc-2"})):
        assert parse_nodes(format_nodes(nodes)) == nodes
    with pytest.raises(NodesError, match="'Node_A' is not a node name"):
        parse_nodes("node-b,Node_A")


def test_a_proxy_serves_a_row_placed_on_its_node_and_one_that_does_not_know_its_node_serves_all() -> None:
    assert serves_here(None, "node-a") and serves_here(None, None)
    assert serves_here(frozenset({"node-a"}), "node-a")
    assert not serves_here(frozenset({"node-b"}), "node-a")
    assert not serves_here(frozenset(), "node-a")
    assert serves_here(frozenset({"node-b"}), None)


def test_the_node_name_comes_from_the_config_else_from_node_name_in_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    # Any valid config: only node_name is read here.
    path.write_text("udp_workers: 1\n")
    assert load_config(path, env={}).node_name is None
    assert load_config(path, env={"NODE_NAME": "sbc-1"}).node_name == "sbc-1"
    path.write_text("node_name: sbc-2\n")
    assert load_config(path, env={"NODE_NAME": "sbc-1"}).node_name == "sbc-2"
    with pytest.raises(ValueError, match="node_name: must be a non-empty string"):
        parse_config({"node_name": ""})


def test_an_address_not_on_the_host_is_told_apart_from_other_bind_errors() -> None:
    assert address_present("127.0.0.1") and address_present("127.31.7.9")  # a local route covers 127/8
    assert address_present("0.0.0.0") and address_present("::")
    assert not address_present(NOT_HERE)
    with pytest.raises(OSError) as absent:
        bind_socket(parse_row(f"udp:{NOT_HERE}:5060"))
    assert address_absent(absent.value)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as in_use:
            bind_socket(parse_row(f"udp:127.0.0.1:{port}"))
    assert in_use.value.errno == errno.EADDRINUSE and not address_absent(in_use.value)


@pytest.mark.parametrize("row", [f"udp:{NOT_HERE}:5060", f"tcp:{NOT_HERE}:5060", "udp:[2001:db8::77]:5060"])
def test_freebind_binds_an_address_the_host_does_not_have(row: str) -> None:
    sock = bind_socket(parse_row(row, freebind=True))
    try:
        assert sock.getsockname()[:2] == (parse_row(row).host, 5060)
    finally:
        sock.close()


def test_a_change_of_freebind_replaces_the_socket() -> None:
    running = {1: parse_row(f"udp:{NOT_HERE}:5060", tag="a")}
    diff = diff_sockets(running, [parse_row(f"udp:{NOT_HERE}:5060", tag="a", freebind=True)])
    assert diff.removed == [1] and [s.freebind for s in diff.added] == [True] and diff.updated == []
    diff = diff_sockets(running, [parse_row(f"udp:{NOT_HERE}:5060", tag="a")])
    assert diff.kept == [1]


async def test_rows_come_with_their_placement_when_the_side_table_exists(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    engine = make_engine(f"sqlite:///{db}")
    try:
        await init_db(engine)
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO sockets (id, socket) VALUES (1, 'udp:10.0.0.1:5060')")
            conn.execute("INSERT INTO sockets (id, socket, tag) VALUES (2, 'udp:10.0.0.2:5060', 'b')")
            conn.execute("INSERT INTO sipsockets_socket_options VALUES (2, 1, 'node-a', NULL)")
        reader = TableReader(engine)  # as a reload reads: it remembers that the side table exists
        rows = sorted(await reader.read(), key=lambda r: str(r.socket))
        assert rows == [
            Row("udp:10.0.0.1:5060", None, None, None, None),
            Row("udp:10.0.0.2:5060", None, "b", None, None, freebind=True, nodes="node-a"),
        ]
        # A database made by OpenSIPS' tools has no side table: the rows as OpenSIPS reads them, by a new
        # reader and by one that saw the side table before it went.
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TABLE sipsockets_socket_options")
        for each in (TableReader(engine), reader):
            sockets = sorted(r.socket or "" for r in await each.read())
            assert sockets == ["udp:10.0.0.1:5060", "udp:10.0.0.2:5060"]
            each.close()
    finally:
        await engine.dispose()


def test_an_absent_row_says_why_and_is_not_failed() -> None:
    spec = parse_row(f"udp:{NOT_HERE}:5060")
    error = (
        f"address {NOT_HERE} is not on this host ([Errno 99] Cannot assign requested address); "
        "the socket is bound when the address appears"
    )
    entry = Entry(3, "dynamic", spec, row=Row(f"udp:{NOT_HERE}:5060", None, None, None, None), state="absent")
    entry.error = error
    assert entry_dict(entry) == {
        "socket": f"udp:{NOT_HERE}:5060",
        "proto": "udp",
        "address": NOT_HERE,
        "port": 5060,
        "state": "absent",
        "error": error,
    }


def test_a_bound_socket_whose_address_left_is_absent_unless_it_has_freebind() -> None:
    spec = parse_row("udp:10.0.0.1:5060")
    gone = Entry(1, "dynamic", spec, slot=0, address_local=False)
    listed = entry_dict(gone)
    assert (listed["state"], listed["address_local"]) == ("absent", False)
    assert listed["error"].startswith("address 10.0.0.1 has left this host; the socket stays bound")
    assert entry_dict(Entry(1, "dynamic", spec, slot=0, address_local=True))["state"] == "listening"
    floating = Entry(2, "dynamic", parse_row("udp:10.0.0.1:5060", freebind=True), slot=1, address_local=False)
    listed = entry_dict(floating)
    assert (listed["state"], listed["freebind"], listed["address_local"]) == ("listening", True, False)
    assert "error" not in listed
    # Static sockets are not looked at.
    assert entry_dict(Entry(3, "static", spec, address_local=False))["state"] == "listening"


def test_a_listed_socket_says_what_it_received_and_whether_lately() -> None:
    spec = parse_row("udp:10.0.0.1:5060")
    entry = Entry(1, "dynamic", spec, slot=0)
    listed = entry_dict(entry, traffic=Seen(12, grew_at=100.0), now=100.0 + RECEIVING_SECONDS)
    assert (listed["received"], listed["receiving"]) == (12, True)
    listed = entry_dict(entry, traffic=Seen(12, grew_at=100.0), now=101.0 + RECEIVING_SECONDS)
    assert (listed["received"], listed["receiving"]) == (12, False)
    assert entry_dict(entry, traffic=Seen(0, None), now=5.0)["receiving"] is False


def test_traffic_is_when_the_count_was_first_seen_higher() -> None:
    traffic = Traffic()
    traffic.observe({"udp:10.0.0.1:5060": 0, "udp:10.0.0.2:5060": 4}, now=10.0)
    assert traffic.of("udp:10.0.0.1:5060") == Seen(0, None)
    assert traffic.of("udp:10.0.0.2:5060") == Seen(4, 10.0)
    traffic.observe({"udp:10.0.0.1:5060": 0, "udp:10.0.0.2:5060": 4}, now=20.0)
    assert traffic.of("udp:10.0.0.2:5060") == Seen(4, 10.0)  # nothing new
    traffic.observe({"udp:10.0.0.1:5060": 3, "udp:10.0.0.2:5060": 4}, now=30.0)
    assert traffic.of("udp:10.0.0.1:5060") == Seen(3, 30.0)
    # A worker that died took its share of the count with it: lower, but nothing arrived.
    traffic.observe({"udp:10.0.0.1:5060": 1}, now=40.0)
    assert traffic.of("udp:10.0.0.1:5060") == Seen(1, 30.0)
    assert receiving(Seen(1, 30.0), now=30.0 + RECEIVING_SECONDS) and not receiving(Seen(0, None), now=1.0)
    assert traffic.of("udp:10.0.0.9:5060") is None


def test_a_note_on_an_entry_is_a_warning_of_the_listing() -> None:
    entry = Entry(1, "dynamic", parse_row("udp:10.0.0.1:5060"), slot=0, note="placed on some nodes")
    assert entry_dict(entry)["warning"] == "placed on some nodes"
    assert entry_dict(entry, warning="no TLS domain")["warning"] == "no TLS domain; placed on some nodes"


def test_each_node_advertises_its_own_address_when_the_side_table_says() -> None:
    text = "sbc-1=203.0.113.1:5060,sbc-2=[2001:db8::2]:5060"
    assert parse_node_advertised(text) == {"sbc-1": "203.0.113.1:5060", "sbc-2": "[2001:db8::2]:5060"}
    assert format_node_advertised(parse_node_advertised(text)) == text
    assert parse_node_advertised(None) == {} and format_node_advertised({}) is None
    with pytest.raises(NodesError, match="is not node=host:port"):
        parse_node_advertised("sbc-1:203.0.113.1")
    assert advertised_here("lb.example.com:5060", text, "sbc-2") == "[2001:db8::2]:5060"
    assert advertised_here("lb.example.com:5060", text, "sbc-3") == "lb.example.com:5060"
    assert advertised_here(None, text, None) is None  # a proxy that does not know its node: the column


def test_rows_parse_with_the_advertised_address_of_this_node() -> None:
    row = Row("udp:0.0.0.0:5060", None, None, None, None, node_advertised="sbc-1=203.0.113.1:5060")
    [(_, here)], _ = judge_rows([row], node_name="sbc-1")
    assert here.state == "listening" and isinstance(here.spec, SocketSpec)
    assert here.spec.advertised_str == "203.0.113.1:5060"
    [(_, elsewhere)], _ = judge_rows([row], node_name="sbc-2")
    assert isinstance(elsewhere.spec, SocketSpec) and elsewhere.spec.advertised_host is None
    assert elsewhere.state == "failed" and elsewhere.unreachable  # refused as unreachable
    bad = Row("udp:10.0.0.1:5060", None, None, None, None, node_advertised="garbage")
    [(_, refused)], _ = judge_rows([bad], node_name="sbc-1")
    assert (refused.state, refused.spec) == ("failed", None) and "is not node=host:port" in str(refused.error)
