"""Via header values: sent-protocol, sent-by and parameters (RFC 3261 20.42, RFC 3581)."""

from __future__ import annotations

from dataclasses import dataclass

from sipproxy.sip.headers import TOKEN_CHARS, is_token, unquote
from sipproxy.sip.uri import ip_literal, parse_hostport

BRANCH_COOKIE = b"z9hG4bK"


@dataclass(slots=True)  # not frozen: built per message, frozen init costs ~1 us
class Via:
    raw: bytes  # the value as received (unfolded, stripped)
    transport: str  # uppercase: "UDP", "TCP", "TLS", "SCTP", "WS", ... any token
    host: str  # normalized (lowercase, IPv6 compressed, no brackets)
    port: int | None
    params: dict[bytes, bytes | None]  # lowercase names -> value (None for a flag)

    @property
    def branch(self) -> bytes | None:
        return self.params.get(b"branch")

    @property
    def received(self) -> str | None:
        # Only an IP literal: the sender never gets to make us resolve a name of its choice.
        value = self.params.get(b"received")
        return ip_literal(value.decode("latin-1")) if value else None

    @property
    def rport(self) -> int | None:
        value = self.params.get(b"rport")
        if value and value.isdigit() and len(value) <= 5 and 0 < int(value) <= 65535:
            return int(value)
        return None


_TRANSPORTS = {t.encode(): t for t in ("UDP", "TCP", "TLS", "SCTP", "WS", "WSS", "TLS-SCTP")}


def parse_via(value: bytes) -> Via | None:
    """Parse one Via value (a single comma-separated element); None when malformed."""
    semi = value.find(b";")
    head = value if semi < 0 else value[:semi]
    if head[:8] == b"SIP/2.0/":
        tail = head[8:].split(None, 1)
    else:
        # LWS is allowed around the slashes (RFC 4475 3.1.1.1)
        parts = head.split(b"/")
        if len(parts) != 3:
            return None
        if parts[0].strip().upper() != b"SIP" or not is_token(parts[1].strip()):
            return None
        tail = parts[2].split(None, 1)
    if len(tail) != 2:
        return None
    transport_raw = tail[0].upper()
    transport = _TRANSPORTS.get(transport_raw)
    if transport is None:
        if not is_token(transport_raw):
            return None
        transport = transport_raw.decode("ascii")
    sent_by = tail[1].rstrip()
    if b" " in sent_by or b"\t" in sent_by:
        # sent-by allows LWS around the colon (COLON = SWS ":" SWS)
        sent_by = b"".join(sent_by.split())
    hp = parse_hostport(sent_by)
    if hp is None:
        return None
    params: dict[bytes, bytes | None] = {}
    if semi >= 0:
        for piece in value[semi + 1 :].split(b";"):
            name, eq, pvalue = piece.partition(b"=")
            name = name.strip()
            if not name or name.translate(None, TOKEN_CHARS):
                return None
            if eq:
                pvalue = pvalue.strip()
                if pvalue[:1] == b'"':
                    pvalue = unquote(pvalue)
                if not pvalue:
                    return None
                params[name.lower()] = pvalue
            else:
                params[name.lower()] = None
    return Via(value, transport, hp[0], hp[1], params)


def fix_received(value: bytes, via: Via, src_ip: str, src_port: int) -> bytes:
    """The top Via value with `received` / `rport` filled in per RFC 3261 18.2.1 and RFC 3581.

    Only appends or fills parameters; the rest of the value is kept byte for byte.
    """
    has_rport = b"rport" in via.params
    needs_received = via.host != src_ip or has_rport
    if not needs_received and not has_rport:
        return value
    pieces = value.split(b";")
    out = [pieces[0]]
    received_done = False
    for piece in pieces[1:]:
        eq = piece.find(b"=")
        name = (piece if eq < 0 else piece[:eq]).strip().lower()
        if name == b"rport" and eq < 0:
            out.append(b"rport=" + str(src_port).encode())
            continue
        if name == b"received":
            # A stale received from the sender is replaced rather than duplicated.
            out.append(b"received=" + src_ip.encode())
            received_done = True
            continue
        out.append(piece)
    if needs_received and not received_done:
        out.append(b"received=" + src_ip.encode())
    return b";".join(out)
