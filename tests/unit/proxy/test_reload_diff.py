"""The reload diff matches rows on every compared column, as OpenSIPS."""

from sipproxy.shared.socketspec import parse_row
from sipproxy.supervisor.reload_diff import Diff, diff_sockets


def test_identical_rows_are_kept_new_added_gone_removed() -> None:
    running = {1: parse_row("udp:10.0.0.1:5060"), 2: parse_row("udp:10.0.0.2:5060")}
    wanted = [parse_row("udp:10.0.0.1:5060"), parse_row("tcp:10.0.0.3:5060")]
    diff = diff_sockets(running, wanted)
    assert diff.kept == [1]
    assert diff.removed == [2]
    assert [s.socket_str for s in diff.added] == ["tcp:10.0.0.3:5060"]


def test_changed_row_is_removed_and_added() -> None:
    running = {7: parse_row("udp:10.0.0.1:5060", tag="a")}
    diff = diff_sockets(running, [parse_row("udp:10.0.0.1:5060", tag="b")])
    assert diff.kept == [] and diff.removed == [7]
    assert [s.tag for s in diff.added] == ["b"]


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
