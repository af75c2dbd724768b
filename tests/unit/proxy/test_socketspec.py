"""Row and static-socket parsing, as the proxy and the operator both see it."""

import pytest

from sipproxy.shared.socketspec import (
    RowError,
    format_socket,
    parse_row,
    parse_static_socket,
    transport_layer,
)


def no_dns(name: str) -> list[str]:
    raise AssertionError(f"unexpected DNS lookup of {name}")


def test_plain_udp_row() -> None:
    spec = parse_row("udp:10.0.5.20:5060", resolve=no_dns)
    assert (spec.proto, spec.host, spec.port) == ("udp", "10.0.5.20", 5060)
    assert spec.socket_str == "udp:10.0.5.20:5060"
    assert spec.advertised_host is None and spec.tag is None and spec.flags == frozenset() and spec.tos == 0


def test_proto_is_case_insensitive_and_port_defaults_per_protocol() -> None:
    assert parse_row("TCP:10.0.0.1", resolve=no_dns).port == 5060
    assert parse_row("tls:10.0.0.1", resolve=no_dns).port == 5061
    assert parse_row("ws:10.0.0.1", resolve=no_dns).port == 80
    assert parse_row("wss:10.0.0.1", resolve=no_dns).port == 443


def test_ipv6_in_brackets_formats_back_with_brackets() -> None:
    spec = parse_row("udp:[::1]:5070", resolve=no_dns)
    assert spec.host == "::1" and spec.port == 5070
    assert spec.socket_str == "udp:[::1]:5070"
    assert format_socket("UDP", "2001:db8::1", 5060) == "udp:[2001:db8::1]:5060"


def test_full_row_fields() -> None:
    spec = parse_row(
        "udp:10.0.0.1:5060", "203.0.113.1:5080", "carrier-a", "reuse_port,anycast", "IPTOS_LOWDELAY"
    )
    assert spec.advertised_str == "203.0.113.1:5080"
    assert spec.tag == "carrier-a"
    assert spec.flags_tuple == ("anycast", "reuse_port")
    assert spec.tos == 16


def test_advertised_without_port_takes_the_socket_port_and_accepts_bracketed_v6() -> None:
    assert parse_row("udp:10.0.0.1:5070", "sip.example.com").advertised_str == "sip.example.com:5070"
    assert parse_row("udp:10.0.0.1:5070", "[2001:db8::5]:5090").advertised_str == "[2001:db8::5]:5090"


def test_empty_optional_columns_mean_none() -> None:
    spec = parse_row("udp:10.0.0.1", "", "", "", "")
    assert spec.advertised_host is None and spec.tag is None and not spec.flags and spec.tos == 0


def test_tos_accepts_numbers_in_range() -> None:
    assert parse_row("udp:10.0.0.1", tos="184").tos == 184
    assert parse_row("udp:10.0.0.1", tos="0x10").tos == 16


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"socket": "10.0.0.1:5060"}, "proto"),
        ({"socket": "foo:10.0.0.1:5060"}, "unknown protocol"),
        ({"socket": "sctp:10.0.0.1:5060"}, "not supported"),
        ({"socket": "udp:10.0.0.1:0"}, "out of range"),
        ({"socket": "udp:10.0.0.1:65536"}, "out of range"),
        ({"socket": "udp:10.0.0.1:abc"}, "not a number"),
        ({"socket": "udp:10.0.0.1", "flags": "reuse_port,turbo"}, "unknown flag 'turbo'"),
        ({"socket": "udp:10.0.0.1", "flags": "REUSE_PORT"}, "unknown flag"),
        ({"socket": "udp:10.0.0.1", "tos": "IPTOS_FAST"}, "bad tos"),
        ({"socket": "udp:10.0.0.1", "tos": "256"}, "bad tos"),
        ({"socket": ""}, "empty"),
        ({"socket": None}, "empty"),
    ],
)
def test_bad_rows_say_why(row: dict[str, str | None], reason: str) -> None:
    with pytest.raises(RowError, match=reason):
        parse_row(row.pop("socket"), **row)  # type: ignore[arg-type]


def test_hostname_must_resolve_to_exactly_one_address() -> None:
    with pytest.raises(RowError, match="resolves to 2 addresses"):
        parse_row("udp:sip.example:5060", resolve=lambda name: ["10.0.0.1", "10.0.0.2"])
    spec = parse_row("udp:sip.example:5060", resolve=lambda name: ["10.0.0.9"])
    assert spec.host == "10.0.0.9" and spec.raw == "udp:sip.example:5060"


def test_key_ignores_raw_text_but_not_any_compared_column() -> None:
    a = parse_row("UDP:10.0.0.1:5060")
    b = parse_row("udp:10.0.0.1")
    assert a.key == b.key and a == b
    assert parse_row("udp:10.0.0.1", tag="x").key != a.key
    assert parse_row("udp:10.0.0.1", tos="1").key != a.key
    assert parse_row("udp:10.0.0.1", flags="frag").key != a.key
    assert parse_row("udp:10.0.0.1", advertised="1.2.3.4").key != a.key


def test_static_socket_syntax() -> None:
    spec = parse_static_socket("tcp:10.0.0.1:5060 as 203.0.113.1:5060 tag core use_workers 2 reuse_port")
    assert spec.socket_str == "tcp:10.0.0.1:5060"
    assert spec.advertised_str == "203.0.113.1:5060"
    assert spec.tag == "core"
    assert spec.use_workers == 2
    assert spec.flags == frozenset({"reuse_port"})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("udp:127.0.0.1:5060 use_workers 0", "use_workers"),
        ("udp:127.0.0.1:5060 tag", "needs a value"),
        ("udp:127.0.0.1:5060 bogus", "unexpected 'bogus'"),
    ],
)
def test_bad_static_sockets(text: str, reason: str) -> None:
    with pytest.raises(RowError, match=reason):
        parse_static_socket(text)


def test_transport_layer_groups_stream_protocols() -> None:
    assert transport_layer("udp") == "udp"
    assert {transport_layer(p) for p in ("tcp", "tls", "ws", "wss")} == {"tcp"}


@pytest.mark.parametrize(
    ("socket", "advertised", "reason"),
    [
        ("udp:10.0.0.1:700\u00b2", None, "not a number"),  # superscript two: isdigit() but not int()
        ("udp:10.0.0.1:\u0661\u0662\u0663", None, "not a number"),  # Arabic-Indic 123: int() reads it
        ("udp:10.0.0.1", "1.2.3.4:\u2075", "not a number"),
        ("udp:10.0.0.1:" + "9" * 5000, None, "out of range"),  # more digits than int() converts
        ("udp:10.0.0.1:" + "0" * 5000 + "5060", None, None),  # leading zeros were always accepted
    ],
)
def test_ports_are_ascii_numbers_and_any_other_text_is_a_row_error(
    socket: str, advertised: str | None, reason: str | None
) -> None:
    """Found by the rows fuzz harness (fuzz/socket_rows.py): these raised ValueError, not RowError, which
    the supervisor's reload does not catch per row (one such row failed the whole reload)."""
    if reason is None:
        assert parse_row(socket, advertised).port == 5060
        return
    with pytest.raises(RowError, match=reason):
        parse_row(socket, advertised)


@pytest.mark.parametrize("workers", ["\u00b3", "\u0662", "9" * 5000, "0"])
def test_use_workers_is_an_ascii_number(workers: str) -> None:
    with pytest.raises(RowError, match="use_workers must be an integer >= 1"):
        parse_static_socket(f"udp:127.0.0.1:5060 use_workers {workers}")


@pytest.mark.parametrize("socket", ["udp:[fe80::1%eth0]:5060", "udp:::%[::]", "tcp:fe80::1%1"])
def test_ipv6_zone_ids_are_refused(socket: str) -> None:
    """Found by the rows fuzz harness: `udp:::%[::]` parsed to a host that its own socket string
    (`udp:[::%[::]]:5060`) could not be read back from; SIP has no syntax for a zone in any case."""
    with pytest.raises(RowError, match="zone ids"):
        parse_row(socket)
