"""The reload diff matches rows on every compared column, as OpenSIPS, and updates a running socket in place
when only its advertised address, tag or ToS changed."""

from sipproxy.shared.socketspec import parse_row
from sipproxy.supervisor.reload_diff import Diff, diff_sockets


def test_identical_rows_are_kept_new_added_gone_removed() -> None:
    running = {1: parse_row("udp:10.0.0.1:5060"), 2: parse_row("udp:10.0.0.2:5060")}
    wanted = [parse_row("udp:10.0.0.1:5060"), parse_row("tcp:10.0.0.3:5060")]
    diff = diff_sockets(running, wanted)
    assert diff.kept == [1]
    assert diff.removed == [2]
    assert [s.socket_str for s in diff.added] == ["tcp:10.0.0.3:5060"]


def test_a_new_advertised_address_tag_or_tos_updates_the_running_socket() -> None:
    running = {7: parse_row("udp:10.0.0.1:5060", tag="a"), 8: parse_row("tcp:10.0.0.1:5060")}
    wanted = [
        parse_row("udp:10.0.0.1:5060", advertised="203.0.113.9", tag="b", tos="IPTOS_LOWDELAY"),
        parse_row("tcp:10.0.0.1:5060", tag="core"),
    ]
    diff = diff_sockets(running, wanted)
    assert diff.kept == [] and diff.removed == [] and diff.added == []
    assert [(ident, spec.tag, spec.advertised_host, spec.tos) for ident, spec in diff.updated] == [
        (7, "b", "203.0.113.9", 16),
        (8, "core", None, 0),
    ]


def test_another_protocol_address_port_or_flag_replaces_the_socket() -> None:
    running = {7: parse_row("udp:10.0.0.1:5060", tag="a")}
    for changed in ("tcp:10.0.0.1:5060", "udp:10.0.0.2:5060", "udp:10.0.0.1:5061"):
        diff = diff_sockets(running, [parse_row(changed, tag="a")])
        assert diff.removed == [7] and [s.socket_str for s in diff.added] == [changed] and diff.updated == []
    diff = diff_sockets(running, [parse_row("udp:10.0.0.1:5060", tag="a", flags="reuse_port")])
    assert diff.removed == [7] and len(diff.added) == 1 and diff.updated == []


def test_duplicate_rows_collapse() -> None:
    fresh: Diff[int] = diff_sockets({}, [parse_row("udp:10.0.0.1"), parse_row("UDP:10.0.0.1:5060")])
    assert len(fresh.added) == 1
    running = {3: parse_row("udp:10.0.0.1")}
    diff = diff_sockets(running, [parse_row("udp:10.0.0.1"), parse_row("udp:10.0.0.1:5060")])
    assert diff.kept == [3] and diff.added == [] and diff.removed == []


def test_flag_order_does_not_matter_but_flags_do() -> None:
    running = {1: parse_row("udp:10.0.0.1", flags="frag,anycast")}
    assert diff_sockets(running, [parse_row("udp:10.0.0.1", flags="anycast,frag")]).kept == [1]
    assert diff_sockets(running, [parse_row("udp:10.0.0.1", flags="anycast")]).removed == [1]


def test_empty_table_removes_everything() -> None:
    running = {1: parse_row("udp:10.0.0.1"), 2: parse_row("tcp:10.0.0.1")}
    diff = diff_sockets(running, [])
    assert sorted(diff.removed) == [1, 2] and diff.added == [] and diff.kept == []
