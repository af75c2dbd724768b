"""The permissive-but-safe parser: start lines, header names and values, URIs and Via values."""

from __future__ import annotations

import pytest

from sipproxy.sip.headers import ValueSyntaxError, addr_uri, header_tag, split_values
from sipproxy.sip.message import ParseError, parse_message
from sipproxy.sip.uri import normalize_host, parse_sip_uri, uri_scheme
from sipproxy.sip.via import fix_received, parse_via


def test_compact_and_odd_case_names_map_to_long_forms() -> None:
    msg = parse_message(
        b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h\r\nf: <sip:x@y>;tag=1\r\nt: <sip:a@b>\r\n"
        b"i: c1\r\nMaX-fOrWaRdS: 5\r\nCSEQ: 1 OPTIONS\r\nl: 0\r\nk: path\r\n\r\n"
    )
    assert msg.is_request and msg.method == b"OPTIONS" and msg.ruri == b"sip:a@b"
    assert msg.first(b"via") == b"SIP/2.0/UDP h"
    assert msg.first(b"from") == b"<sip:x@y>;tag=1"
    assert msg.first(b"call-id") == b"c1"
    assert msg.first(b"max-forwards") == b"5"
    assert msg.first(b"content-length") == b"0"
    assert msg.first(b"supported") == b"path"


def test_folded_lines_and_space_before_colon_are_unfolded_but_raw_kept() -> None:
    raw_via = b"Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw"
    msg = parse_message(b"INVITE sip:a@b SIP/2.0\r\n" + raw_via + b"\r\nTo:\r\n sip:a@b\r\n\r\n")
    assert msg.first(b"via") == b"SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw"
    assert msg.raw_of(b"via") == [raw_via]
    assert msg.first(b"to") == b"sip:a@b"


def test_body_is_everything_after_the_empty_line_byte_exact() -> None:
    body = b"\x00\r\rbin\n\xff\r\n\r\nmore"
    msg = parse_message(b"MESSAGE sip:a@b SIP/2.0\r\nl: 22\r\n\r\n" + body)
    assert msg.body == body and msg.terminated


def test_status_line_with_empty_and_utf8_reason() -> None:
    assert parse_message(b"SIP/2.0 100 \r\n\r\n").reason == b""
    reason = "Привет".encode()
    msg = parse_message(b"SIP/2.0 200 " + reason + b"\r\n\r\n")
    assert not msg.is_request and msg.status == 200 and msg.reason == reason and msg.start_line_ok


@pytest.mark.parametrize(
    "data",
    [
        b"SIP/2.0 4294967301 Huge\r\n\r\n",
        b"\x00\x01garbage\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nno colon here\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\n continuation first\r\n\r\n",
    ],
)
def test_unparseable_messages_raise_parse_error(data: bytes) -> None:
    with pytest.raises(ParseError):
        parse_message(data)


@pytest.mark.parametrize(
    "line", [b"INVITE  sip:a@b SIP/2.0", b"INVITE sip:a@b SIP/2.0  ", b"INVITE sip:a@b; lr SIP/2.0"]
)
def test_extra_spaces_in_request_line_are_flagged(line: bytes) -> None:
    assert not parse_message(line + b"\r\n\r\n").start_line_ok


def test_split_values_respects_quotes_and_angle_brackets() -> None:
    assert split_values(b'"Watson, Thomas" <sip:t@x>, <sip:a,b@c>;p=1') == [
        b'"Watson, Thomas" <sip:t@x>',
        b"<sip:a,b@c>;p=1",
    ]
    assert split_values(b"SIP/2.0/UDP a;branch=1 , SIP/2.0/TCP b") == [
        b"SIP/2.0/UDP a;branch=1",
        b"SIP/2.0/TCP b",
    ]
    assert split_values(b'"a \\" , b" <sip:x@y>') == [b'"a \\" , b" <sip:x@y>']
    with pytest.raises(ValueSyntaxError):
        split_values(b'"Mr. J. User <sip:j.user@example.com>')


def test_tags_and_addr_uris() -> None:
    assert header_tag(b'"A;tag=no" <sip:a@b;tag=no>;tag=yes') == b"yes"
    assert header_tag(b"sip:a@b;tag=1") == b"1"
    assert header_tag(b"<sip:a@b>") is None
    assert header_tag(b"sip:a@b ;   tag    = 19n") == b"19n"
    assert addr_uri(b"<sip:p.example.com;lr>") == b"sip:p.example.com;lr"
    assert addr_uri(b"sip:a@b;tag=1") == b"sip:a@b"


def test_sip_uris_ipv6_ports_params_and_odd_user_parts() -> None:
    uri = parse_sip_uri(b"sip:alice@[2001:DB8::0:1]:5070;transport=TCP;lr")
    assert uri is not None
    assert (uri.host, uri.port, uri.transport) == ("2001:db8::1", 5070, "tcp")
    assert uri.param(b"lr") == b""
    odd = parse_sip_uri(
        b"sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d@example.com"
    )
    assert odd is not None and odd.host == "example.com" and odd.headers is None
    semi = parse_sip_uri(b"sip:user;par=u%40example.net@example.com")
    assert semi is not None and semi.host == "example.com" and semi.user == b"user;par=u%40example.net"
    with_headers = parse_sip_uri(b"sip:user@example.com?Route=%3Csip:example.com%3E")
    assert with_headers is not None and with_headers.headers == b"Route=%3Csip:example.com%3E"
    for bad in (
        b"<sip:user@example.com>",
        b"sip:user@example.com; lr",
        b"sip:@",
        b"sip:a@b:99999",
        b"sip:a@[::1",
    ):
        assert parse_sip_uri(bad) is None, bad
    assert uri_scheme(b"nobodyKnowsThisScheme:totallyopaquecontent") == "nobodyknowsthisscheme"
    assert uri_scheme(b"<sip:a@b>") is None
    assert normalize_host("[0:0:0:0:0:0:0:1]") == "::1"


def test_via_values_with_lws_ipv6_and_params() -> None:
    via = parse_via(b"SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8")
    assert via is not None
    assert (via.transport, via.host, via.port, via.branch) == (
        "TCP",
        "spindle.example.com",
        None,
        b"z9hG4bK9ikj8",
    )
    v6 = parse_via(b"SIP/2.0/UDP [2001:db8::9]:5062;rport;branch=z9hG4bKx")
    assert v6 is not None and (v6.host, v6.port) == ("2001:db8::9", 5062) and v6.params[b"rport"] is None
    for bad in (
        b"SIP/2.0/UDP 192.0.2.15;;",
        b"",
        b"SIP/2.0/UDP",
        b"SIP/2.0 192.0.2.1",
        b"SIP/2.0/UDP h;branch=",
    ):
        assert parse_via(bad) is None, bad


def test_received_fixup_appends_received_and_fills_empty_rport_only() -> None:
    raw = b"SIP/2.0/UDP client.example.com:5060;rport;branch=z9hG4bKa"
    via = parse_via(raw)
    assert via is not None
    assert fix_received(raw, via, "127.0.0.5", 40000) == (
        b"SIP/2.0/UDP client.example.com:5060;rport=40000;branch=z9hG4bKa;received=127.0.0.5"
    )
    same = b"SIP/2.0/UDP 127.0.0.5:5060;branch=z9hG4bKa"
    parsed_same = parse_via(same)
    assert parsed_same is not None
    assert fix_received(same, parsed_same, "127.0.0.5", 5060) is same
