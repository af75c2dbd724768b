"""Requests the proxy refuses (RFC 3261 16.3) and how its stateless replies are built and sent (18.2.2)."""

from __future__ import annotations

import pytest

from sipproxy.sip.headers import header_tag
from sipproxy.sip.message import parse_message
from tests.unit.sip.support import TCP4, UAC, UDP4, engine, parsed, request, vias


def _reply(data: bytes, listener=UDP4, src=UAC, connection: object | None = None):  # type: ignore[no-untyped-def]
    out = engine().handle(data, listener, src, connection)
    assert len(out.sends) == 1, out
    return out, out.sends[0], parsed(out.sends[0])


@pytest.mark.parametrize("missing", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header(missing: str) -> None:
    lines = request().split(b"\r\n")
    data = b"\r\n".join(line for line in lines if not line.startswith(missing.encode() + b":"))
    out = engine().handle(data, UDP4, UAC)
    if missing == "Via":
        # nowhere to send a response to: dropped
        assert out.sends == [] and out.drop_reason == "parse_error"
        return
    assert out.drop_reason == "parse_error"
    msg = parsed(out.sends[0])
    assert msg.status == 400 and missing.encode() in msg.reason


def test_error_reply_copies_headers_adds_to_tag_and_goes_to_sent_by_port() -> None:
    data = request(max_forwards=0, via="SIP/2.0/UDP uac.example.com:5099;branch=z9hG4bK-1")
    out, send, msg = _reply(data)
    assert out.drop_reason == "max_forwards"
    assert (send.host, send.port, send.proto, send.listener) == ("127.0.0.10", 5099, "udp", UDP4)
    original = parse_message(data)
    assert msg.start_line == b"SIP/2.0 483 Too Many Hops"
    assert vias(msg) == [b"SIP/2.0/UDP uac.example.com:5099;branch=z9hG4bK-1;received=127.0.0.10"]
    for name in (b"from", b"call-id", b"cseq"):
        assert msg.raw_of(name) == original.raw_of(name)
    to = msg.first(b"to")
    assert to is not None and to.startswith(b"<sip:bob@example.com>;tag=")
    # the same tag for a retransmission
    assert parsed(engine().handle(data, UDP4, UAC).sends[0]).first(b"to") == to
    assert msg.values_of(b"content-length") == [b"0"]


def test_error_reply_honours_rport_and_keeps_an_existing_to_tag() -> None:
    data = request(max_forwards=0, via="SIP/2.0/UDP 10.1.1.1:5060;rport;branch=z9hG4bK-1", to_tag="abc")
    _, send, msg = _reply(data, src=("127.0.0.10", 41000))
    assert (send.host, send.port) == ("127.0.0.10", 41000)
    assert vias(msg) == [b"SIP/2.0/UDP 10.1.1.1:5060;rport=41000;branch=z9hG4bK-1;received=127.0.0.10"]
    to = msg.first(b"to")
    assert to is not None and header_tag(to) == b"abc"


def test_error_reply_on_a_stream_goes_back_on_the_same_connection() -> None:
    conn = object()
    _, send, msg = _reply(
        request(max_forwards=0, via="SIP/2.0/TCP 127.0.0.10:5061;branch=z9hG4bK-1"),
        listener=TCP4,
        src=("127.0.0.10", 40123),
        connection=conn,
    )
    assert send.connection is conn and send.listener == TCP4 and send.proto == "tcp"
    assert (send.host, send.port) == ("127.0.0.10", 40123)
    assert msg.status == 483


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (request(ruri="mailto:bob@example.com"), 416, "unsupported_uri_scheme"),
        (request(extra=["Proxy-Require: foo, bar", "Proxy-Require: baz"]), 420, "bad_extension"),
        (request().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505, "version_not_supported"),
        (request(cseq_method="OPTIONS"), 400, "parse_error"),
        (request("FOO", cseq_method="INVITE"), 501, "method_mismatch"),
        (request(cseq=2**32), 400, "parse_error"),
        (request(max_forwards=None, extra=["Max-Forwards: many"]), 400, "parse_error"),
        (request(extra=["Call-ID: second"]), 400, "parse_error"),
        (request(extra=["Content-Length: 9"]), 400, "bad_content_length"),
        (
            request(body=b"abc").replace(b"Content-Length: 3", b"Content-Length: 30"),
            400,
            "bad_content_length",
        ),
        (
            request(body=b"abc").replace(b"Content-Length: 3", b"Content-Length: -3"),
            400,
            "bad_content_length",
        ),
        (request(ruri="sip:bob@example.com?Subject=hi"), 400, "parse_error"),
        (request(extra=["Via: SIP/2.0/UDP h;;"]), 400, "parse_error"),
        (request(extra=["Route: <sip:127.0.0.1;lr"]), 400, "parse_error"),
    ],
)
def test_invalid_requests_are_answered_with_the_matching_error(data: bytes, status: int, reason: str) -> None:
    out, _, msg = _reply(data)
    assert (msg.status, out.drop_reason) == (status, reason)


def test_bad_extension_lists_every_proxy_require_option() -> None:
    _, _, msg = _reply(request(extra=["Proxy-Require: foo, bar", "Proxy-Require: baz"]))
    assert msg.values_of(b"unsupported") == [b"foo, bar, baz"]


def test_an_invalid_ack_is_dropped_without_reply() -> None:
    out = engine().handle(request("ACK", max_forwards=0), UDP4, UAC)
    assert out.sends == [] and out.drop_reason == "max_forwards"
    out = engine().handle(request("ACK", cseq_method="INVITE"), UDP4, UAC)
    assert out.sends == [] and out.drop_reason == "parse_error"


def test_garbage_and_keepalives_are_dropped_quietly() -> None:
    eng = engine()
    assert eng.handle(b"\r\n\r\n", UDP4, UAC).drop_reason == "keepalive"
    assert eng.handle(b"\x16\x03\x01\x02\x00\x01\x00", UDP4, UAC).drop_reason == "parse_error"
    assert eng.handle(b"", UDP4, UAC).sends == []
