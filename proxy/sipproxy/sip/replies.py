"""Stateless responses built by the proxy itself (RFC 3261 8.2.6, 16.3, 16.11), and where they go."""

from __future__ import annotations

from collections.abc import Sequence

from sipproxy.sip.branch import reply_to_tag, transaction_key
from sipproxy.sip.headers import header_tag
from sipproxy.sip.listeners import STREAM_PROTOS, Listener
from sipproxy.sip.message import SipMessage
from sipproxy.sip.outcome import Outcome, Send, drop
from sipproxy.sip.validate import RequestFacts

ALLOW = (
    b"INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, PRACK, SUBSCRIBE, NOTIFY, PUBLISH, INFO, REFER, MESSAGE, "
    b"UPDATE"
)
OPTIONS_HEADERS = (b"Allow: " + ALLOW, b"Accept: */*", b"Supported: ")

REASON_PHRASES = {
    200: "OK",
    202: "Accepted",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    410: "Gone",
    480: "Temporarily Unavailable",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
}


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


def answer(
    msg: SipMessage,
    facts: RequestFacts,
    listener: Listener,
    src_ip: str,
    src_port: int,
    conn: object | None,
    top_line: bytes | None,
    status: int,
    phrase: str,
    extra: Sequence[bytes],
    reason: str | None,
) -> Outcome:
    """Our answer to a request received on `listener` from `src_ip`:`src_port` (on `conn`, a stream), with
    `reason` as the outcome's drop reason; `top_line` as in `build_reply`."""
    if not facts.via_positions:
        # Without a Via there is nowhere RFC 3261 lets us send a response.
        return drop(reason or "parse_error")
    top = facts.top_via
    txn = transaction_key(
        top.branch if top is not None else None,
        facts.top_via_values[0] if facts.top_via_values else b"",
        facts.from_tag,
        facts.call_id,
        facts.cseq_number,
        msg.ruri,
    )
    data = build_reply(msg, status, phrase, top_line, reply_to_tag(txn), list(extra))
    if listener.proto in STREAM_PROTOS:
        return Outcome([Send(data, listener, src_ip, src_port, listener.proto, conn)], reason)
    # RFC 3261 18.2.2 with RFC 3581: to the source address; to the source port when rport was asked,
    # else to the sent-by port.
    port = src_port
    if top is not None and b"rport" not in top.params:
        port = top.port or 5060
    return Outcome([Send(data, listener, src_ip, port, "udp")], reason)
