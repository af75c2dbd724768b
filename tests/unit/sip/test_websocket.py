"""SIP over WebSocket (RFC 7118) server side: the upgrade handshake, client frames in, server frames out.

Byte-level vectors come from RFC 6455 (1.3 and 5.7); the end-to-end tests run aiohttp's WebSocket client
against a small asyncio server made of nothing but the codec under test."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from sipproxy.sip.websocket import (
    CLOSE,
    HANDSHAKE_REFUSALS,
    MESSAGE,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    REPLY,
    FrameDecoder,
    HandshakeError,
    HandshakeParser,
    WsEvent,
    WsFramingError,
    accept_value,
    encode_close,
    encode_frame,
    encode_message,
)
from tests.unit.sip.support import request

MASK = bytes((0x37, 0xFA, 0x21, 0x3D))  # the masking key of RFC 6455 5.7's examples
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3

UPGRADE = (
    "GET / HTTP/1.1\r\n"
    "Host: sip-ws.example.com\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\n"
    "Origin: http://www.example.com\r\n"
    "Sec-WebSocket-Protocol: sip\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "\r\n"
).encode()


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return encode_frame(opcode, payload, fin=fin, mask=MASK)


def head_with(replace: tuple[str, str] | None = None, drop: str | None = None, add: str = "") -> bytes:
    text = UPGRADE.decode()
    if replace is not None:
        assert replace[0] in text
        text = text.replace(*replace)
    if drop is not None:
        lines = [line for line in text.split("\r\n") if not line.lower().startswith(drop.lower() + ":")]
        text = "\r\n".join(lines)
    if add:
        text = text.replace("\r\n\r\n", "\r\n" + add + "\r\n\r\n")
    return text.encode()


# ------------------------------------------------------------------------------------------- handshake


def test_accept_value_of_rfc6455() -> None:
    assert accept_value(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_the_rfc7118_request_is_answered_101_with_sip_whatever_the_chunking() -> None:
    first_frame = masked(OP_TEXT, b"x")
    data = UPGRADE + first_frame
    for size in (1, 3, 50, len(data)):
        parser = HandshakeParser()
        result = None
        for i in range(0, len(data), size):
            result = parser.feed(data[i : i + size])
            if result is not None:
                break
        assert result is not None
        # Bytes after the head that came in the same read are the first frames.
        taken = i + size
        assert result.rest + data[taken:] == first_frame
        assert result.response == (
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            b"Sec-WebSocket-Protocol: sip\r\n"
            b"\r\n"
        )
        assert (result.target, result.host, result.origin, result.key) == (
            "/",
            "sip-ws.example.com",
            "http://www.example.com",
            KEY,
        )


def test_lists_and_case_in_headers_are_understood() -> None:
    data = head_with(("Connection: Upgrade", "connection: keep-alive, Upgrade"))
    data = data.replace(b"Upgrade: websocket", b"UPGRADE: WebSocket")
    data = data.replace(b"Sec-WebSocket-Protocol: sip", b"Sec-WebSocket-Protocol: foo, sip")
    data = data.replace(b"GET / ", b"GET /ws?app=1 ")
    result = HandshakeParser().feed(b"\r\n" + data)
    assert result is not None
    assert result.target == "/ws?app=1"
    assert b"Sec-WebSocket-Protocol: sip\r\n" in result.response
    assert b"Sec-WebSocket-Extensions" not in result.response


REFUSED = [
    (b"X" * 9000, "head_too_large"),
    (UPGRADE.replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"p" * 9000 + b"\r\n\r\n"), "head_too_large"),
    (UPGRADE.replace(b"GET / HTTP/1.1", b"GET /  HTTP/1.1"), "bad_request_line"),
    (UPGRADE.replace(b"GET / HTTP/1.1", b"GET /"), "bad_request_line"),
    (UPGRADE.replace(b"GET ", b"POST "), "not_get"),
    (UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"), "not_http11"),
    (UPGRADE.replace(b"HTTP/1.1", b"HTTP/2.0"), "not_http11"),
    (head_with(add="NoColonHere"), "bad_header_line"),
    (head_with(add="X-Folded: a\r\n continued"), "bad_header_line"),
    (head_with(add="X-Space : a"), "bad_header_line"),
    (head_with(drop="Host"), "no_host"),
    (head_with(add="Host: other.example.com"), "no_host"),
    (head_with(drop="Upgrade"), "not_websocket"),
    (head_with(("Upgrade: websocket", "Upgrade: h2c")), "not_websocket"),
    (head_with(drop="Connection"), "no_connection_upgrade"),
    (head_with(("Connection: Upgrade", "Connection: keep-alive")), "no_connection_upgrade"),
    (head_with(("Version: 13", "Version: 8")), "bad_version"),
    (head_with(drop="Sec-WebSocket-Version"), "bad_version"),
    (head_with(drop="Sec-WebSocket-Key"), "bad_key"),
    (head_with((KEY, "not base64!")), "bad_key"),
    (head_with((KEY, base64.b64encode(b"fifteen bytes!!").decode())), "bad_key"),
    (head_with(add=f"Sec-WebSocket-Key: {KEY}"), "bad_key"),
    (head_with(drop="Sec-WebSocket-Protocol"), "no_sip_protocol"),
    (head_with(("Protocol: sip", "Protocol: xmpp, sip2")), "no_sip_protocol"),
]


@pytest.mark.parametrize(("data", "reason"), REFUSED, ids=[r for _, r in REFUSED])
def test_every_refusal_has_a_named_reason_and_an_http_answer(data: bytes, reason: str) -> None:
    parser = HandshakeParser()
    with pytest.raises(HandshakeError) as info:
        parser.feed(data)
    error = info.value
    assert error.reason == reason
    status, phrase = HANDSHAKE_REFUSALS[reason]
    assert error.status == status
    status_line = error.response.split(b"\r\n", 1)[0].decode()
    assert status_line.startswith(f"HTTP/1.1 {status} ")
    assert phrase in status_line  # the reason phrase names the problem
    assert b"Connection: close\r\n" in error.response
    if reason == "bad_version":
        assert status == 426
        assert b"\r\nSec-WebSocket-Version: 13\r\n" in error.response
    with pytest.raises(ValueError):
        parser.feed(b"more")  # nothing more is read on a refused connection


def test_every_named_refusal_is_exercised() -> None:
    assert {reason for _, reason in REFUSED} == set(HANDSHAKE_REFUSALS)


def test_a_head_is_awaited_until_it_ends() -> None:
    parser = HandshakeParser()
    assert parser.feed(UPGRADE[:-2]) is None
    assert parser.feed(b"\r\n") is not None


# ---------------------------------------------------------------------------------- frames: RFC vectors


def test_rfc6455_single_masked_text_frame() -> None:
    frame = bytes((0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58))
    assert masked(OP_TEXT, b"Hello") == frame
    assert FrameDecoder().feed(frame) == [WsEvent(MESSAGE, b"Hello")]


def test_rfc6455_server_frames_are_unmasked() -> None:
    assert encode_message(b"Hello") == bytes((0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F))
    pong = bytes((0x8A, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F))
    assert encode_frame(OP_PONG, b"Hello") == pong


def test_rfc6455_lengths_of_256_and_65536_bytes() -> None:
    body = bytes(range(256))  # not UTF-8: a binary frame
    assert encode_message(body) == bytes((0x82, 0x7E, 0x01, 0x00)) + body
    big = b"\xff" * 65536
    assert encode_message(big)[:10] == bytes((0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0))
    assert FrameDecoder(max_message=65536).feed(masked(OP_BINARY, big)) == [WsEvent(MESSAGE, big, True)]


def test_rfc6455_masked_ping_is_answered_with_an_unmasked_pong() -> None:
    ping = masked(OP_PING, b"Hello")
    assert FrameDecoder().feed(ping) == [WsEvent(REPLY, bytes((0x8A, 0x05)) + b"Hello")]


def test_rfc6455_fragmented_text_is_reassembled_around_a_ping() -> None:
    stream = masked(OP_TEXT, b"Hel", fin=False) + masked(OP_PING, b"") + masked(OP_CONTINUATION, b"lo")
    assert FrameDecoder().feed(stream) == [
        WsEvent(REPLY, bytes((0x8A, 0x00))),
        WsEvent(MESSAGE, b"Hello"),
    ]


# ------------------------------------------------------------------------------------ frames: behaviour

INVITE = request()


def test_sip_messages_whatever_the_chunking_text_or_binary() -> None:
    stream = (
        masked(OP_TEXT, INVITE)
        + masked(OP_BINARY, INVITE)
        + masked(OP_BINARY, INVITE[:100], fin=False)
        + masked(OP_CONTINUATION, INVITE[100:200], fin=False)
        + masked(OP_CONTINUATION, INVITE[200:])
        + masked(OP_PONG, b"unsolicited pongs are ignored")
        + masked(OP_TEXT, b"")  # an empty message carries no SIP message
    )
    for size in (1, 2, 5, 64, len(stream)):
        decoder = FrameDecoder()
        got: list[WsEvent] = []
        for i in range(0, len(stream), size):
            got += decoder.feed(stream[i : i + size])
        assert got == [
            WsEvent(MESSAGE, INVITE),
            WsEvent(MESSAGE, INVITE, True),
            WsEvent(MESSAGE, INVITE, True),
        ], size


def test_close_is_answered_with_the_same_code_and_ends_decoding() -> None:
    decoder = FrameDecoder()
    events = decoder.feed(masked(OP_CLOSE, (1001).to_bytes(2, "big") + b"bye") + masked(OP_TEXT, INVITE))
    assert events == [WsEvent(CLOSE, bytes((0x88, 0x02, 0x03, 0xE9)), code=1001)]
    assert decoder.closed
    assert decoder.feed(masked(OP_TEXT, INVITE)) == []


def test_close_without_a_code_is_answered_with_an_empty_close() -> None:
    assert FrameDecoder().feed(masked(OP_CLOSE, b"")) == [WsEvent(CLOSE, bytes((0x88, 0x00)), code=1005)]


def test_encode_close_fits_a_long_reason_into_a_control_frame() -> None:
    frame = encode_close(1000, "é" * 100)
    assert frame[0] == 0x88 and frame[1] == len(frame) - 2 <= 125
    assert frame[4:].decode("utf-8") == "é" * 61  # cut on a character boundary


VIOLATIONS = [
    ("unmasked", encode_frame(OP_TEXT, INVITE), 1002),
    ("reserved_bits", bytes((0xC1,)) + masked(OP_TEXT, INVITE)[1:], 1002),  # RSV1: no deflate agreed
    ("reserved_bits", bytes((0x91,)) + masked(OP_TEXT, INVITE)[1:], 1002),
    ("unknown_opcode", masked(0x3, b"x"), 1002),
    ("unknown_opcode", masked(0xB, b"x"), 1002),
    ("fragmented_control", masked(OP_PING, b"x", fin=False), 1002),
    ("control_too_long", masked(OP_PING, b"x" * 126), 1002),
    ("unexpected_continuation", masked(OP_CONTINUATION, b"x"), 1002),
    ("interleaved_message", masked(OP_TEXT, b"a", fin=False) + masked(OP_TEXT, b"b"), 1002),
    ("bad_length", bytes((0x82, 0xFF)) + b"\x80" + b"\x00" * 7 + MASK, 1002),
    ("bad_close", masked(OP_CLOSE, b"\x03"), 1002),
    ("bad_close", masked(OP_CLOSE, (1005).to_bytes(2, "big")), 1002),
    ("bad_close", masked(OP_CLOSE, (999).to_bytes(2, "big")), 1002),
    ("bad_close", masked(OP_CLOSE, (2000).to_bytes(2, "big")), 1002),
    ("invalid_utf8", masked(OP_TEXT, b"\xc3\x28"), 1007),
    ("invalid_utf8", masked(OP_TEXT, "é".encode()[:1], fin=False) + masked(OP_CONTINUATION, b"("), 1007),
    ("invalid_utf8", masked(OP_CLOSE, (1000).to_bytes(2, "big") + b"\xff"), 1007),
    ("message_too_big", masked(OP_TEXT, b"x" * 1025), 1009),
    ("message_too_big", masked(OP_TEXT, b"x" * 600, fin=False) + masked(OP_CONTINUATION, b"y" * 600), 1009),
]


@pytest.mark.parametrize(("reason", "data", "code"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_protocol_violations_fail_the_connection(reason: str, data: bytes, code: int) -> None:
    decoder = FrameDecoder(max_message=1024)
    with pytest.raises(WsFramingError) as info:
        decoder.feed(data)
    error = info.value
    assert (error.reason, error.code) == (reason, code)
    frame = error.close_frame
    assert frame[0] == 0x88 and int.from_bytes(frame[2:4], "big") == code
    assert frame[4:].decode() == error.message
    with pytest.raises(WsFramingError):
        decoder.feed(masked(OP_TEXT, b"ok"))  # broken for good


def test_an_oversized_message_is_refused_from_its_header_alone() -> None:
    decoder = FrameDecoder(max_message=1024)
    header = bytes((0x82, 0xFF)) + (1 << 40).to_bytes(8, "big")  # a terabyte announced, nothing sent
    with pytest.raises(WsFramingError) as info:
        decoder.feed(header)
    assert info.value.code == 1009


def test_client_side_close_codes_that_are_allowed() -> None:
    for code in (1000, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4999):
        events = FrameDecoder().feed(masked(OP_CLOSE, code.to_bytes(2, "big")))
        assert events[0].code == code


# ------------------------------------------------------------------------------- against aiohttp's client


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo server made of the codec alone: each SIP message comes back in its own frame."""
    try:
        parser = HandshakeParser()
        handshake = None
        while handshake is None:
            data = await reader.read(4096)
            if not data:
                return
            try:
                handshake = parser.feed(data)
            except HandshakeError as exc:
                writer.write(exc.response)
                return
        writer.write(handshake.response)
        decoder = FrameDecoder()
        data = handshake.rest
        while True:
            try:
                events = decoder.feed(data)
            except WsFramingError as exc:
                writer.write(exc.close_frame)
                return
            for event in events:
                if event.kind == MESSAGE:
                    writer.write(encode_message(event.data))
                else:
                    writer.write(event.data)
                if event.kind == CLOSE:
                    return
            await writer.drain()
            data = await reader.read(65536)
            if not data:
                return
    finally:
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()


@pytest.fixture
async def ws_url() -> AsyncIterator[str]:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/"


async def test_aiohttp_client_talks_sip_over_the_codec(ws_url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(ws_url, protocols=("sip",), autoping=False) as ws,
    ):
        assert ws.protocol == "sip"
        await ws.send_str(INVITE.decode())
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, INVITE.decode())
        body = INVITE.replace(b"Content-Length: 0", b"Content-Length: 2") + b"\xff\xfe"
        await ws.send_bytes(body)
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, body)  # not UTF-8: binary back
        await ws.ping(b"keepalive")
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"keepalive")
        await ws.close(code=1000, message=b"done")
        assert ws.close_code == 1000


async def test_aiohttp_client_without_the_sip_subprotocol_is_refused(ws_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(ws_url, protocols=("chat",))
        assert info.value.status == 400
        # The same request made by hand shows what a person debugging it sees.
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": KEY,
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Protocol": "chat",
        }
        async with session.get(ws_url, headers=headers) as resp:
            assert resp.status == 400
            assert resp.reason == "Bad Request (Sec-WebSocket-Protocol must list sip)"
            assert await resp.text() == "Sec-WebSocket-Protocol must list sip\n"


async def test_aiohttp_client_message_over_the_limit_gets_1009(ws_url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(ws_url, protocols=("sip",)) as ws,
    ):
        await ws.send_bytes(b"x" * 70000)
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 1009
