"""Splitting a stream (TCP, TLS) into SIP messages by Content-Length (RFC 3261 7.5, 18.3)."""

from __future__ import annotations

from typing import NoReturn

from sipproxy.sip.message import ParseError, parse_message
from sipproxy.sip.replies import build_reply

_PHRASES = {
    "missing_content_length": "Bad Request (missing Content-Length)",
    "bad_content_length": "Bad Request (bad Content-Length)",
    "headers_too_large": "Bad Request (header block too large)",
    "message_too_large": "Bad Request (message too large)",
}


class FramingError(ValueError):
    """The stream cannot be split any further; the connection must be closed.

    `reason` is a snake_case word for metrics: missing_content_length, bad_content_length,
    headers_too_large or message_too_large. `messages` holds the complete messages that the same
    `feed` call split off before the error: the runtime should still handle them before closing.
    """

    def __init__(self, reason: str, messages: list[bytes] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.messages: list[bytes] = messages if messages is not None else []


class StreamFramer:
    """One per stream connection: feed received bytes, get complete messages back."""

    __slots__ = ("_broken", "_buf", "max_headers", "max_message")

    def __init__(self, max_headers: int = 16384, max_message: int = 65536) -> None:
        self.max_headers = max_headers
        self.max_message = max_message
        self._buf = bytearray()
        self._broken: str | None = None

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet part of a complete message (for error_reply_for_stream)."""
        return bytes(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Complete messages found so far; skips CRLF keep-alives (RFC 5626) between messages.

        Raises FramingError on missing or bad Content-Length and on oversized headers or messages (with
        the messages completed before the error in `messages`); once it raised, every later call raises
        the same reason again.
        """
        if self._broken is not None:
            raise FramingError(self._broken)
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            skip = 0
            n = len(buf)
            while skip < n and buf[skip] in (0x0D, 0x0A):
                skip += 1
            if skip:
                del buf[:skip]
                if not buf:
                    break
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_headers:
                    self._fail("headers_too_large", out)
                break
            if end + 4 > self.max_headers:
                self._fail("headers_too_large", out)
            length = _content_length(bytes(buf[:end]))
            if length is None:
                self._fail("missing_content_length", out)
            if length < 0:
                self._fail("bad_content_length", out)
            total = end + 4 + length
            if total > self.max_message:
                self._fail("message_too_large", out)
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out

    def _fail(self, reason: str, messages: list[bytes]) -> NoReturn:
        self._broken = reason
        raise FramingError(reason, messages)


def _content_length(head: bytes) -> int | None:
    """Content-Length of a header block: None when absent, -1 when malformed or conflicting."""
    found: int | None = None
    lower = head.lower()
    if b"content-length" not in lower and b"\nl" not in lower:
        return None
    lines = head.split(b"\r\n")
    for n in range(1, len(lines)):
        line = lines[n]
        colon = line.find(b":")
        if colon <= 0 or line[:1] in (b" ", b"\t"):
            continue
        name = line[:colon].rstrip().lower()
        if name not in (b"content-length", b"l"):
            continue
        value = line[colon + 1 :]
        # A folded value continues on the following lines.
        k = n + 1
        while k < len(lines) and lines[k][:1] in (b" ", b"\t"):
            value += b" " + lines[k]
            k += 1
        value = value.strip()
        if not value.isdigit() or len(value) > 10:
            return -1
        number = int(value)
        if found is not None and found != number:
            return -1
        found = number
    return found


def error_reply_for_stream(partial: bytes, reason: str) -> bytes | None:
    """A 400 for a request whose framing failed, when enough of its headers parsed; else None.

    `partial` is what was buffered (StreamFramer.pending). The reply is sent on the same connection just
    before closing it, so it copies the headers as they are (no received fix-up is needed).
    """
    try:
        data = partial.lstrip(b"\r\n")
        end = data.find(b"\r\n\r\n")
        head = data if end < 0 else data[: end + 4]
        msg = parse_message(head)
    except ParseError:
        return None
    except Exception:
        return None
    if not msg.is_request or msg.method == b"ACK":
        return None
    index = msg.index
    if not all(name in index for name in (b"via", b"from", b"to", b"call-id", b"cseq")):
        return None
    return build_reply(msg, 400, _PHRASES.get(reason, "Bad Request"), None, b"spsframing")
