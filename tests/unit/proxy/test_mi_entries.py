"""The sockets_list entry shape: OpenSIPS fields first (empty ones left out), then ours."""

from sipproxy.shared.socketspec import parse_row
from sipproxy.supervisor.db_reader import Row
from sipproxy.supervisor.entries import Entry
from sipproxy.supervisor.mi.listing import entry_dict


def test_listening_entry_field_order_and_values() -> None:
    row = Row("UDP:10.0.0.1:5060", "203.0.113.1", "carrier-a", "reuse_port,anycast", "IPTOS_LOWDELAY")
    spec = parse_row(row.socket, row.advertised, row.tag, row.flags, row.tos)
    entry = entry_dict(Entry(7, "dynamic", spec, row=row, slot=3))
    assert list(entry) == [
        "socket", "advertised", "tag", "flags", "tos", "proto", "address", "port", "slot", "state",
    ]  # fmt: skip
    assert entry["socket"] == "UDP:10.0.0.1:5060"  # the DB text as written
    assert entry["advertised"] == "203.0.113.1:5060"
    assert entry["flags"] == "anycast,reuse_port"
    assert entry["tos"] == 16
    assert (entry["proto"], entry["address"], entry["port"], entry["slot"], entry["state"]) == (
        "udp", "10.0.0.1", 5060, 3, "listening",
    )  # fmt: skip


def test_empty_fields_are_left_out_and_ipv6_is_bracketed() -> None:
    spec = parse_row("tcp:[2001:db8::1]:5070", "", "", "", "0")
    entry = entry_dict(Entry(1, "dynamic", spec, row=Row("tcp:[2001:db8::1]:5070", "", "", "", "0"), slot=0))
    assert entry == {
        "socket": "tcp:[2001:db8::1]:5070",
        "proto": "tcp",
        "address": "2001:db8::1",
        "port": 5070,
        "slot": 0,
        "state": "listening",
    }


def test_failed_rows_show_what_they_say_and_why() -> None:
    row = Row("udp:10.0.0.1:5060", None, None, "turbo", None)
    entry = entry_dict(Entry(2, "dynamic", None, row=row, state="failed", error="unknown flag 'turbo'"))
    assert entry == {
        "socket": "udp:10.0.0.1:5060",
        "flags": "turbo",
        "state": "failed",
        "error": "unknown flag 'turbo'",
    }
    spec = parse_row("tls:10.0.0.1")
    row = Row("tls:10.0.0.1", None, None, None, None)
    unsupported = Entry(3, "dynamic", spec, row=row, state="failed", error="transport not supported yet")
    failed = entry_dict(unsupported, with_kind=True)
    assert failed["port"] == 5061 and failed["state"] == "failed" and failed["kind"] == "dynamic"
    assert "slot" not in failed
