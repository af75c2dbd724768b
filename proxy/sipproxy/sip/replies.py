"""Stateless responses built by the proxy itself (RFC 3261 8.2.6, 16.3, 16.11)."""

from __future__ import annotations

from sipproxy.sip.headers import header_tag
from sipproxy.sip.message import SipMessage

ALLOW = (
    b"INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, PRACK, SUBSCRIBE, NOTIFY, PUBLISH, INFO, REFER, MESSAGE, "
    b"UPDATE"
)
OPTIONS_HEADERS = (b"Allow: " + ALLOW, b"Accept: */*", b"Supported: ")


def header_name(raw: bytes) -> bytes:
    """The header name as the sender wrote it (case and compact form kept)."""
    return raw[: raw.find(b":")].rstrip()


def build_reply(
    msg: SipMessage,
    status: int,
    phrase: str,
    top_via_line: bytes | None,
    to_tag: bytes,
    extra_headers: tuple[bytes, ...] | list[bytes] = (),
) -> bytes:
    """A response to `msg` copying its Via, From, To (with a tag added), Call-ID and CSeq lines.

    `top_via_line`, when given, replaces the first Via line (it carries the received/rport fix-up).
    """
    out = [b"SIP/2.0 %d %s" % (status, phrase.encode("utf-8", "replace"))]
    headers = msg.headers
    index = msg.index
    for n, pos in enumerate(index.get(b"via", ())):
        out.append(top_via_line if n == 0 and top_via_line is not None else headers[pos][2])
    for pos in index.get(b"from", ()):
        out.append(headers[pos][2])
    for n, pos in enumerate(index.get(b"to", ())):
        name, value, raw = headers[pos]
        if n == 0 and header_tag(value) is None:
            raw = raw + b";tag=" + to_tag
        out.append(raw)
    for name in (b"call-id", b"cseq"):
        for pos in index.get(name, ()):
            out.append(headers[pos][2])
    out.extend(extra_headers)
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"
