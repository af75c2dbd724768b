"""Shared pieces for the SIP core tests: a static listener set and message builders."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sipproxy.sip.engine import Listener, Outcome, Send, SipEngine
from sipproxy.sip.message import SipMessage, parse_message
from sipproxy.sip.routing import parse_routes

UDP4 = Listener("udp", "127.0.0.1", 5060)
TCP4 = Listener("tcp", "127.0.0.1", 5060)
UDP6 = Listener("udp", "::1", 5060)
TCP6 = Listener("tcp", "::1", 5062)
CORE = Listener("udp", "127.0.0.2", 5070, tag="core")
PUBLIC = Listener(
    "udp", "127.0.0.3", 5060, advertised_host="sbc.example.net", advertised_port=5099, tag="pub"
)

UAC = ("127.0.0.10", 5061)


class StaticListeners:
    """The runtime's ListenerView, reduced to a fixed list (the real one changes on reload)."""

    def __init__(self, listeners: Iterable[Listener]) -> None:
        self.listeners = list(listeners)

    def all(self) -> Iterable[Listener]:
        return list(self.listeners)

    def by_tag(self, tag: str) -> Listener | None:
        return next((lst for lst in self.listeners if lst.tag == tag), None)


def engine(
    listeners: Sequence[Listener] = (UDP4, TCP4, UDP6, TCP6, CORE, PUBLIC),
    routes: object = None,
    record_route: bool = True,
) -> SipEngine:
    return SipEngine(parse_routes(routes), StaticListeners(listeners), record_route=record_route)


def request(
    method: str = "INVITE",
    ruri: str = "sip:bob@127.0.0.1:5080",
    *,
    via: str = "SIP/2.0/UDP 127.0.0.10:5061;branch=z9hG4bK-uac-1",
    extra: Sequence[str] = (),
    body: bytes = b"",
    cseq: int = 1,
    cseq_method: str | None = None,
    max_forwards: int | None = 70,
    to_tag: str | None = None,
    content_length: bool = True,
) -> bytes:
    lines = [f"{method} {ruri} SIP/2.0", f"Via: {via}"]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines += [
        "From: Alice <sip:alice@127.0.0.10>;tag=from-1",
        "To: <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        "Call-ID: call-1@127.0.0.10",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:alice@127.0.0.10:5061>",
        *extra,
    ]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def one(outcome: Outcome) -> Send:
    assert outcome.drop_reason is None, outcome.drop_reason
    assert len(outcome.sends) == 1, outcome
    return outcome.sends[0]


def parsed(send: Send) -> SipMessage:
    return parse_message(send.data)


def vias(msg: SipMessage) -> list[bytes]:
    from sipproxy.sip.headers import split_values

    return [v for value in msg.values_of(b"via") for v in split_values(value)]


def answer(forwarded: bytes, status: int = 200, phrase: str = "OK", body: bytes = b"") -> bytes:
    """What a UAS sends back for `forwarded`: its Via, From, To (tagged), Call-ID and CSeq lines."""
    msg = parse_message(forwarded)
    lines = [f"SIP/2.0 {status} {phrase}".encode()]
    for name in (b"via", b"from", b"to", b"call-id", b"cseq"):
        lines += msg.raw_of(name)
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
