"""Splitting TCP byte streams into SIP messages (RFC 3261 7.5, 18.3; RFC 5626 keep-alives)."""

from __future__ import annotations

import pytest

from sipproxy.sip.framing import FramingError, StreamFramer, error_reply_for_stream
from sipproxy.sip.message import parse_message
from tests.unit.sip.support import request

INVITE = request(body=b"v=0\r\no=- 1 1 IN IP4 127.0.0.10\r\n")


def test_messages_split_by_content_length_whatever_the_chunking() -> None:
    stream = b"\r\n\r\n" + INVITE + b"\r\n" + INVITE + INVITE
    for size in (1, 2, 7, 64, len(stream)):
        framer = StreamFramer()
        got: list[bytes] = []
        for i in range(0, len(stream), size):
            got += framer.feed(stream[i : i + size])
        assert got == [INVITE, INVITE, INVITE], size
        assert framer.pending == b""


def test_keepalive_pings_only_yield_nothing() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == []
    assert framer.feed(b"\r\n") == []
    assert framer.feed(INVITE) == [INVITE]


def test_compact_folded_content_length() -> None:
    msg = b"OPTIONS sip:a@b SIP/2.0\r\nl :\r\n  3\r\n\r\nabc"
    assert StreamFramer().feed(msg + msg) == [msg, msg]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (request(content_length=False), "missing_content_length"),
        (request().replace(b"Content-Length: 0", b"Content-Length: -1"), "bad_content_length"),
        (request().replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 4"), "bad_content_length"),
        (request(body=b"x" * 70000), "message_too_large"),
        (request(extra=["X-Pad: " + "p" * 20000]), "headers_too_large"),
        (b"INVITE sip:a@b SIP/2.0\r\nX: " + b"y" * 17000, "headers_too_large"),
    ],
)
def test_framing_errors_close_the_connection(data: bytes, reason: str) -> None:
    framer = StreamFramer()
    with pytest.raises(FramingError) as info:
        framer.feed(INVITE + data)
    assert info.value.reason == reason
    assert info.value.messages == [INVITE]  # what came before the error is still delivered
    with pytest.raises(FramingError):
        framer.feed(INVITE)  # broken for good


def test_error_reply_for_a_stream_request_with_enough_headers() -> None:
    framer = StreamFramer()
    data = request(content_length=False)
    with pytest.raises(FramingError) as info:
        framer.feed(data)
    reply = error_reply_for_stream(framer.pending, info.value.reason)
    assert reply is not None
    msg = parse_message(reply)
    assert msg.status == 400 and b"Content-Length" in msg.reason
    original = parse_message(data)
    for name in (b"via", b"from", b"call-id", b"cseq"):
        assert msg.raw_of(name) == original.raw_of(name)
    to = msg.first(b"to")
    assert to is not None and b";tag=" in to
    assert error_reply_for_stream(b"INVITE sip:a@b SIP/2.0\r\nX: " + b"y" * 100, "headers_too_large") is None
    assert error_reply_for_stream(b"\x00\x01\x02", "headers_too_large") is None
    response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h\r\n\r\n"
    assert error_reply_for_stream(response, "missing_content_length") is None
