"""WebSocket (RFC 6455) for SIP over WebSocket (RFC 7118), server side: the upgrade handshake and frames.

Pure: bytes in, bytes and decisions out; the runtime does the reading, writing and closing.

Handshake. `HandshakeParser.feed` takes what a new connection sent and returns None until the request head
is complete, then a `Handshake` holding the `101 Switching Protocols` answer to write (with
`Sec-WebSocket-Accept` and `Sec-WebSocket-Protocol: sip`) and `rest`, the bytes that followed the head
(the first frames, when the client did not wait). It raises `HandshakeError` when the request is not one
we accept; its `response` is the HTTP answer to write before closing (400 with a reason phrase naming the
problem, or 426 with `Sec-WebSocket-Version: 13` for another protocol version) and `reason` is one of
HANDSHAKE_REFUSALS. Refused: a head over `max_head` bytes, a request line that is not `GET <target>
HTTP/1.x` (x >= 1), a malformed or folded header line, no Host, no `Upgrade: websocket`, no `upgrade` in
Connection, a version other than 13, a Sec-WebSocket-Key that is not one base64 value of 16 bytes, and a
Sec-WebSocket-Protocol that does not list `sip` (RFC 7118 5: the sip subprotocol is what we speak).
Extensions (Sec-WebSocket-Extensions, permessage-deflate) are never accepted, so no reserved bit may be
set in any frame afterwards. The request target and Origin are passed on, not judged.

Frames. `FrameDecoder.feed` takes the bytes received after the handshake and returns `WsEvent`s in order:
MESSAGE (one complete SIP message: the payload of a text or binary message, fragments reassembled; empty
messages are skipped), REPLY (a frame to write back: the pong answering a ping), CLOSE (the peer closed:
write `data`, the close answer echoing its code, then close the connection; nothing after it is read).
Pongs are accepted and ignored. It raises `WsFramingError` on a protocol violation: an unmasked frame, a
reserved bit, an unknown opcode, a fragmented or over-125-byte control frame, a continuation with no
message to continue or a new message before the last one ended, a 64-bit length with its top bit set, a
bad close frame (1002); a text message that is not UTF-8 (1007); a message over `max_message` bytes
(1009, raised as soon as a frame header announces it, before any of it is buffered). The error's
`close_frame` is what to write before closing; once it raised, every later call raises it again. Lengths
are accepted in any encoding, minimal or not.

Encoding. `encode_message` makes the server frame for one SIP message (unmasked, RFC 6455 5.1);
`encode_frame` makes any frame, masked when given a key (a client's, for tests); `encode_close` a close.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Final, NoReturn

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

MESSAGE: Final = "message"
REPLY: Final = "reply"
CLOSE: Final = "close"

# Close codes (RFC 6455 7.4.1).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_NO_STATUS: Final = 1005  # never sent: what a close frame without a code means
CLOSE_INVALID_DATA: Final = 1007
CLOSE_TOO_BIG: Final = 1009

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_CONTROL_PAYLOAD: Final = 125
_MAX_CLOSE_REASON: Final = 123  # a close payload is at most 125 bytes, 2 of them the code

# reason -> (HTTP status, what the reason phrase says)
HANDSHAKE_REFUSALS: Final = {
    "head_too_large": (400, "request head too large"),
    "bad_request_line": (400, "malformed request line"),
    "not_get": (400, "method must be GET"),
    "not_http11": (400, "HTTP/1.1 or later required"),
    "bad_header_line": (400, "malformed header line"),
    "no_host": (400, "missing Host"),
    "not_websocket": (400, "Upgrade must be websocket"),
    "no_connection_upgrade": (400, "Connection must include upgrade"),
    "bad_version": (426, "Sec-WebSocket-Version must be 13"),
    "bad_key": (400, "Sec-WebSocket-Key must be one base64 value of 16 bytes"),
    "no_sip_protocol": (400, "Sec-WebSocket-Protocol must list sip"),
}


class HandshakeError(ValueError):
    """The upgrade request is refused: write `response`, then close the connection.

    `reason` is a key of HANDSHAKE_REFUSALS (snake_case, for metrics), `status` 400 or 426."""

    def __init__(self, reason: str) -> None:
        status, phrase = HANDSHAKE_REFUSALS[reason]
        super().__init__(phrase)
        self.reason = reason
        self.status = status
        self.phrase = phrase
        self.response: bytes = _refusal(status, phrase)


def _refusal(status: int, phrase: str) -> bytes:
    standard = "Upgrade Required" if status == 426 else "Bad Request"
    body = (phrase + "\n").encode()
    head = f"HTTP/1.1 {status} {standard} ({phrase})\r\n"
    if status == 426:
        head += "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    head += f"Connection: close\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def accept_value(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


@dataclass(frozen=True, slots=True)
class Handshake:
    """An accepted upgrade request: write `response`, then decode `rest` and what follows as frames."""

    target: str  # the request target, e.g. "/" or "/ws?x=1"
    host: str
    origin: str | None
    key: str
    response: bytes
    rest: bytes


class HandshakeParser:
    """One per new WebSocket connection, until the handshake is done."""

    __slots__ = ("_buf", "_done", "max_head")

    def __init__(self, max_head: int = 8192) -> None:
        self.max_head = max_head
        self._buf = bytearray()
        self._done = False

    def feed(self, data: bytes) -> Handshake | None:
        """The accepted handshake once the request head is complete, else None (send more).

        Raises HandshakeError for a refused request; feeding after a result or an error is a bug
        (ValueError)."""
        if self._done:
            raise ValueError("the handshake is already complete")
        buf = self._buf
        buf += data
        # RFC 9112 2.2: empty lines before the request line are ignored.
        skip = 0
        while skip < len(buf) and buf[skip] in (0x0D, 0x0A):
            skip += 1
        if skip:
            del buf[:skip]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self.max_head:
                self._fail("head_too_large")
            return None
        if end + 4 > self.max_head:
            self._fail("head_too_large")
        head = bytes(buf[:end])
        rest = bytes(buf[end + 4 :])
        self._done = True
        self._buf = bytearray()
        return _handshake(head, rest)

    def _fail(self, reason: str) -> NoReturn:
        self._done = True
        self._buf = bytearray()
        raise HandshakeError(reason)


def _handshake(head: bytes, rest: bytes) -> Handshake:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HandshakeError("bad_request_line")
    method, target, version = parts
    if method != "GET":
        raise HandshakeError("not_get")
    if not _http11_or_later(version):
        raise HandshakeError("not_http11")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        colon = line.find(":")
        # No white space before the colon, no obsolete line folding (RFC 9112 5.1, 5.2).
        if colon <= 0 or line[0] in " \t" or line[colon - 1] in " \t":
            raise HandshakeError("bad_header_line")
        headers.setdefault(line[:colon].lower(), []).append(line[colon + 1 :].strip(" \t"))
    hosts = headers.get("host", [])
    if len(hosts) != 1 or not hosts[0]:
        raise HandshakeError("no_host")
    if "websocket" not in _tokens(headers.get("upgrade", [])):
        raise HandshakeError("not_websocket")
    if "upgrade" not in _tokens(headers.get("connection", [])):
        raise HandshakeError("no_connection_upgrade")
    if headers.get("sec-websocket-version", []) != ["13"]:
        raise HandshakeError("bad_version")
    keys = headers.get("sec-websocket-key", [])
    if len(keys) != 1 or not _valid_key(keys[0]):
        raise HandshakeError("bad_key")
    if "sip" not in _tokens(headers.get("sec-websocket-protocol", [])):
        raise HandshakeError("no_sip_protocol")
    key = keys[0]
    origins = headers.get("origin", [])
    response = (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_value(key)}\r\n"
        "Sec-WebSocket-Protocol: sip\r\n"
        "\r\n"
    ).encode()
    return Handshake(target, hosts[0], origins[0] if origins else None, key, response, rest)


def _http11_or_later(version: str) -> bool:
    if not version.startswith("HTTP/1.") or len(version) < 8:
        return False
    minor = version[7:]
    return minor.isdigit() and minor.isascii() and int(minor) >= 1


def _tokens(values: list[str]) -> set[str]:
    out: set[str] = set()
    for value in values:
        for item in value.split(","):
            token = item.strip(" \t").lower()
            if token:
                out.add(token)
    return out


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, UnicodeEncodeError):
        return False


# ------------------------------------------------------------------------------------------ frames


@dataclass(frozen=True, slots=True)
class WsEvent:
    """What one decoded frame asks of the runtime; see the module docstring."""

    kind: str  # MESSAGE | REPLY | CLOSE
    data: bytes  # MESSAGE: the SIP message; REPLY and CLOSE: the frame to write
    binary: bool = False  # MESSAGE: it came in binary frames
    code: int = 0  # CLOSE: the code the peer sent (CLOSE_NO_STATUS when none)


class WsFramingError(ValueError):
    """The peer broke the protocol: write `close_frame`, then close the connection.

    `code` is the close code (1002, 1007, 1009), `reason` a snake_case word for metrics, `message` the
    text sent in the close frame."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    @property
    def close_frame(self) -> bytes:
        return encode_close(self.code, self.message)


class FrameDecoder:
    """One per WebSocket connection after the handshake: client frames in, events out."""

    __slots__ = ("_broken", "_buf", "_closed", "_frag_binary", "_frag_open", "_parts", "_size", "max_message")

    def __init__(self, max_message: int = 65536) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._parts: list[bytes] = []  # fragments of the message being reassembled
        self._size = 0
        self._frag_open = False
        self._frag_binary = False
        self._closed = False
        self._broken: WsFramingError | None = None

    @property
    def closed(self) -> bool:
        """The peer's close frame was decoded."""
        return self._closed

    @property
    def partial(self) -> bool:
        """Part of a frame or of a fragmented message is buffered, waiting for the rest."""
        return bool(self._buf) or self._frag_open

    def feed(self, data: bytes) -> list[WsEvent]:
        """Events for every complete frame so far (see the module docstring); raises WsFramingError."""
        if self._broken is not None:
            raise self._broken
        if self._closed:
            return []
        buf = self._buf
        buf += data
        events: list[WsEvent] = []
        while True:
            n = len(buf)
            if n < 2:
                break
            b0 = buf[0]
            b1 = buf[1]
            fin = (b0 & 0x80) != 0
            opcode = b0 & 0x0F
            if b0 & 0x70:
                self._fail(CLOSE_PROTOCOL_ERROR, "reserved_bits", "reserved bits set without an extension")
            if not b1 & 0x80:
                self._fail(CLOSE_PROTOCOL_ERROR, "unmasked", "client frames must be masked")
            control = opcode >= 0x8
            if control:
                if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                    self._fail(CLOSE_PROTOCOL_ERROR, "unknown_opcode", f"unknown opcode {opcode:#x}")
                if not fin:
                    self._fail(CLOSE_PROTOCOL_ERROR, "fragmented_control", "fragmented control frame")
            elif opcode not in (OP_CONTINUATION, OP_TEXT, OP_BINARY):
                self._fail(CLOSE_PROTOCOL_ERROR, "unknown_opcode", f"unknown opcode {opcode:#x}")
            length = b1 & 0x7F
            pos = 2
            if length == 126:
                if n < 4:
                    break
                length = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif length == 127:
                if n < 10:
                    break
                length = int.from_bytes(buf[2:10], "big")
                if length >> 63:
                    self._fail(CLOSE_PROTOCOL_ERROR, "bad_length", "64-bit length with its top bit set")
                pos = 10
            if control:
                if length > _MAX_CONTROL_PAYLOAD:
                    self._fail(CLOSE_PROTOCOL_ERROR, "control_too_long", "control frame over 125 bytes")
            elif self._size + length > self.max_message:
                self._fail(CLOSE_TOO_BIG, "message_too_big", f"message over {self.max_message} bytes")
            end = pos + 4 + length
            if n < end:
                break
            payload = _unmask(bytes(buf[pos + 4 : end]), bytes(buf[pos : pos + 4]))
            del buf[:end]
            if opcode == OP_PING:
                events.append(WsEvent(REPLY, encode_frame(OP_PONG, payload)))
            elif opcode == OP_PONG:
                pass
            elif opcode == OP_CLOSE:
                events.append(self._close(payload))
                self._buf = bytearray()
                break
            elif opcode == OP_CONTINUATION:
                if not self._frag_open:
                    self._fail(CLOSE_PROTOCOL_ERROR, "unexpected_continuation", "continuation of no message")
                self._parts.append(payload)
                self._size += length
                if fin:
                    message = b"".join(self._parts)
                    binary = self._frag_binary
                    self._parts = []
                    self._size = 0
                    self._frag_open = False
                    self._deliver(events, message, binary)
            else:
                if self._frag_open:
                    self._fail(CLOSE_PROTOCOL_ERROR, "interleaved_message", "new message before last ended")
                if fin:
                    self._deliver(events, payload, opcode == OP_BINARY)
                else:
                    self._frag_open = True
                    self._frag_binary = opcode == OP_BINARY
                    self._parts = [payload]
                    self._size = length
        return events

    def _deliver(self, events: list[WsEvent], message: bytes, binary: bool) -> None:
        if not binary and not _is_utf8(message):
            self._fail(CLOSE_INVALID_DATA, "invalid_utf8", "text message is not valid UTF-8")
        if message:
            events.append(WsEvent(MESSAGE, message, binary))

    def _close(self, payload: bytes) -> WsEvent:
        self._closed = True
        if not payload:
            return WsEvent(CLOSE, encode_frame(OP_CLOSE, b""), code=CLOSE_NO_STATUS)
        if len(payload) == 1:
            self._fail(CLOSE_PROTOCOL_ERROR, "bad_close", "close frame with a 1-byte payload")
        code = int.from_bytes(payload[:2], "big")
        if not _valid_close_code(code):
            self._fail(CLOSE_PROTOCOL_ERROR, "bad_close", f"close code {code} is not allowed")
        if not _is_utf8(payload[2:]):
            self._fail(CLOSE_INVALID_DATA, "invalid_utf8", "close reason is not valid UTF-8")
        # RFC 6455 5.5.1: the answer typically echoes the code received.
        return WsEvent(CLOSE, encode_frame(OP_CLOSE, payload[:2]), code=code)

    def _fail(self, code: int, reason: str, message: str) -> NoReturn:
        error = WsFramingError(code, reason, message)
        self._broken = error
        self._buf = bytearray()
        self._parts = []
        raise error


def _valid_close_code(code: int) -> bool:
    # RFC 6455 7.4: 1004-1006 and 1015 must never be sent; 1016-2999 are reserved; 3000-4999 are for
    # libraries and applications. 1012-1014 were registered after the RFC (IANA registry).
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return payload
    # One XOR of two big integers instead of a Python-level loop per byte.
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"") -> bytes:
    """One frame; masked with `mask` (4 bytes) when given, as a client must, unmasked otherwise."""
    if mask and len(mask) != 4:
        raise ValueError("a masking key is 4 bytes")
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 0x10000:
        head = bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")
    if mask:
        return head + mask + _unmask(payload, mask)
    return head + payload


def encode_message(message: bytes) -> bytes:
    """The server frame carrying one SIP message.

    A text frame when the message is UTF-8 (every SIP message we relay normally is): browser SIP stacks
    (JsSIP, SIP.js) receive a text message as a string and parse it at once, while a binary one arrives as
    a Blob or ArrayBuffer they handle less uniformly. A message that is not valid UTF-8 (a binary body)
    goes in a binary frame: in a text frame it would make the browser fail the connection (1007)."""
    return encode_frame(OP_TEXT if _is_utf8(message) else OP_BINARY, message)


def encode_close(code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
    """A server close frame with `code` and `reason` (cut to the 123 bytes a close frame has room for)."""
    text = reason.encode()[:_MAX_CLOSE_REASON].decode("utf-8", "ignore").encode()
    return encode_frame(OP_CLOSE, code.to_bytes(2, "big") + text)
