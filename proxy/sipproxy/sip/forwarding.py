"""What the general and the scanned path decide alike when they forward: the next hop of a URI, the socket
a request leaves from (and when it must take TCP instead), the Via and Record-Route lines we add, the
connection a flow token names, and where a response goes back to."""

from __future__ import annotations

import hmac

from sipproxy.sip.connections import listener_of, peer_of
from sipproxy.sip.flowtoken import check, conn_id_of
from sipproxy.sip.listeners import FLOW_PROTOS, Listener, fits
from sipproxy.sip.state import EngineState
from sipproxy.sip.uri import SipUri, host_family

# RFC 3261 18.1.1: above this size (path MTU unknown) a request should use a congestion-controlled transport.
UDP_SIZE_LIMIT = 1300

# Where a request goes: host (IP literal or name), port, the transport the URI or route names (None: UDP).
Target = tuple[str, int, str | None]
# Where a response goes: the socket to send from, host, port, transport, the stream connection (or None).
Back = tuple[Listener, str, int, str, object | None]


def next_hop(host: str, port: int | None, transport: str | None) -> Target:
    """Destination of a URI per RFC 3263 without DNS: its host, its port or the transport's default."""
    return host, port or (5061 if transport in ("tls", "wss") else 5060), transport


def next_hop_of(uri: SipUri) -> Target:
    transport = uri.transport if uri.params else None
    if transport is None and uri.scheme == "sips":
        transport = "tls"
    return next_hop(uri.host, uri.port, transport)


def outbound(
    state: EngineState,
    inbound: Listener,
    out_tag: str | None,
    hint: tuple[str, int | None, str | None] | None,
    want: str,
    family: int,
) -> Listener | str:
    """The socket a request leaves from (issue 3: the named one, else the inbound one when it fits,
    else the first that fits); a str is the phrase of the 503 that says why there is none."""
    if out_tag is not None:
        tagged = state.listeners.by_tag(out_tag)
        return tagged if tagged is not None else f"Service Unavailable (no socket tagged {out_tag})"
    index = state.index
    out: Listener | None = None
    if hint is not None:
        out = index.by_address(hint[0], hint[1], hint[2] or "udp")
        if out is not None and not fits(out, want, family):
            out = None
    if out is None:
        out = inbound if fits(inbound, want, family) else index.pick(want, family)
    if out is None and state.refresh_if_stale():
        out = state.index.pick(want, family)
    if out is None:
        return f"Service Unavailable (no {want} socket for the next hop)"
    return out


def tcp_instead(
    state: EngineState,
    data: bytes,
    out: Listener,
    inbound: Listener,
    target: Target,
    out_tag: str | None,
) -> Listener | None:
    """A TCP socket to send `data` from instead of UDP socket `out` when it is too big for UDP and
    neither the route nor the URI fixed the transport (RFC 3261 18.1.1)."""
    if len(data) <= UDP_SIZE_LIMIT or out.proto != "udp" or out_tag is not None or target[2] is not None:
        return None
    family = host_family(target[0])
    return inbound if fits(inbound, "tcp", family) else state.index.pick("tcp", family)


def stream_marks(
    state: EngineState, inbound_key: bytes, inbound: Listener, conn: object | None, src: tuple[str, int]
) -> tuple[bytes, bytes | None]:
    """The `sk` of our Via for a request received on `inbound` from `src`: the inbound socket, and for a
    stream the flow token of the connection to answer on (`<key>-<token>`, so that a forged response
    cannot name another client's connection); and the flow token the Record-Route facing back carries
    (TLS, WS and WSS clients only; None otherwise)."""
    if conn is None:
        return inbound_key, None
    token = state.flow_token(state.connections.register(conn), src)
    if token is None:
        return inbound_key, None
    return inbound_key + b"-" + token, token if inbound.proto in FLOW_PROTOS else None


def our_lines(
    state: EngineState,
    sender: Listener,
    inbound: Listener,
    branch: bytes,
    sk: bytes,
    method: bytes,
    in_dialog: bool,
    rr_token: bytes | None = None,
) -> bytes:
    """The lines we put on top of a request leaving from `sender`, CRLF between them and none after: our
    Via, then our Record-Route where it can matter (requests outside a dialog that may create one). The
    entry facing back towards the sender carries `rr_token` in its user part when given."""
    index = state.index
    wire = index.wire(sender)
    if not state.record_route or in_dialog or method == b"REGISTER":
        return b"".join([wire.via_head, branch, b";sk=", sk])
    if sender is not inbound and sender != inbound:
        # RFC 5658: one entry per side, the top one facing the next hop.
        back = index.wire(inbound)
        if rr_token is None:
            facing_back = back.rr_double
        else:
            facing_back = b"".join([b"Record-Route: <sip:", rr_token, b"@", back.rr_double_tail])
        return b"".join([wire.via_head, branch, b";sk=", sk, b"\r\n", wire.rr_double, b"\r\n", facing_back])
    if rr_token is not None:
        return b"".join(
            [wire.via_head, branch, b";sk=", sk, b"\r\nRecord-Route: <sip:", rr_token, b"@", wire.rr_tail]
        )
    return b"".join([wire.via_head, branch, b";sk=", sk, b"\r\n", wire.rr])


class FlowHop:
    """Where a flow token sends a request: its connection, the local socket and the peer at its ends."""

    __slots__ = ("conn", "host", "listener", "port")

    def __init__(self, conn: object, listener: Listener, host: str, port: int) -> None:
        self.conn = conn
        self.listener = listener
        self.host = host
        self.port = port


def flow_connection(state: EngineState, token: bytes) -> tuple[object | None, bool]:
    """The live connection a flow token names (None when it is gone or elsewhere), and whether the token
    is one this proxy made at all (False: forged, or made under another key).

    The usual case costs a lookup and one comparison: the token this connection would get now is made
    once per connection and remembered; it equals the one received only when the id still names a
    connection to the peer the token was made for."""
    cid = conn_id_of(token)
    if cid is None:
        return None, False
    conn = state.connection(cid)
    if conn is not None:
        peer = peer_of(conn)
        if peer is not None:
            expected = state.flow_token(cid, peer)
            if expected is not None and hmac.compare_digest(expected, token):
                return conn, True
    return None, check(state.flow_key, token) is not None


def flow_hop(state: EngineState, token: bytes, arrived_on: object | None) -> FlowHop | str | None:
    """What a flow token in one of our Route entries does to a request (RFC 5626 5.3): None when the request
    arrived over that very flow (it goes on as usual); the flow to send it over; else the drop reason of the
    refusal: `flow_token_forged` (403) for a token we did not make, `flow_failed` (430) for a flow that is
    gone."""
    conn, authentic = flow_connection(state, token)
    if not authentic:
        return "flow_token_forged"
    if conn is None:
        return "flow_failed"
    if conn is arrived_on:
        return None
    listener = listener_of(conn)
    peer = peer_of(conn)
    if listener is None or peer is None:
        return "flow_failed"
    return FlowHop(conn, listener, peer[0], peer[1])


# The refusal each flow_hop reason is answered with.
FLOW_REFUSALS = {
    "flow_token_forged": (403, "Forbidden (invalid flow token)"),
    "flow_failed": (430, "Flow Failed"),
}


def response_destination(
    state: EngineState,
    key: bytes | None,
    token: bytes | None,
    transport: str,
    via_host: str,
    via_port: int | None,
    received: str | None,
    rport: int | None,
) -> Back | str:
    """Where a response goes (RFC 3261 18.2.2, RFC 3581): the socket our Via's `sk` names (and the
    connection its flow token names, for streams), the next Via's received/rport or sent-by. A str is the
    drop reason: `flow_token_forged` when the token is not one we made (a forged response must never be
    written onto another client's connection)."""
    inbound: Listener | None = None
    conn: object | None = None
    if key:
        inbound = state.index.by_key(key)
        if inbound is None and state.refresh_if_stale():
            inbound = state.index.by_key(key)
    proto = inbound.proto if inbound is not None else transport.lower()
    host = received or via_host
    if proto == "udp":
        port = rport or via_port or 5060
    else:
        port = via_port or (5061 if proto in ("tls", "wss") else 5060)
        if token is not None:
            conn, authentic = flow_connection(state, token)
            if not authentic:
                return "flow_token_forged"
            if inbound is None and conn is not None:
                # The socket was removed; its established connections carry on (and answer on themselves).
                inbound = listener_of(conn)
    if inbound is None:
        inbound = state.index.pick(proto, host_family(host))
        if inbound is None:
            return "no_socket"
    return inbound, host, port, proto, conn
