"""What the general and the scanned path decide alike when they forward: the next hop of a URI, the socket
a request leaves from (and when it must take TCP instead), the Via and Record-Route lines we add, and
where a response goes back to."""

from __future__ import annotations

from sipproxy.sip.listeners import Listener, fits
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


def via_sk(state: EngineState, inbound_key: bytes, conn: object | None) -> bytes:
    """The `sk` of our Via: the inbound socket, and for streams the connection to answer on."""
    if conn is None:
        return inbound_key
    return inbound_key + b"-%x" % state.connections.register(conn)


def our_lines(
    state: EngineState,
    sender: Listener,
    inbound: Listener,
    branch: bytes,
    sk: bytes,
    method: bytes,
    in_dialog: bool,
) -> bytes:
    """The lines we put on top of a request leaving from `sender`, CRLF between them and none after: our
    Via, then our Record-Route where it can matter (requests outside a dialog that may create one)."""
    index = state.index
    wire = index.wire(sender)
    if not state.record_route or in_dialog or method == b"REGISTER":
        return b"".join([wire.via_head, branch, b";sk=", sk])
    if sender is not inbound and sender != inbound:
        # RFC 5658: one entry per side, the top one facing the next hop.
        facing_back = index.wire(inbound).rr_double
        return b"".join([wire.via_head, branch, b";sk=", sk, b"\r\n", wire.rr_double, b"\r\n", facing_back])
    return b"".join([wire.via_head, branch, b";sk=", sk, b"\r\n", wire.rr])


def response_destination(
    state: EngineState,
    key: bytes | None,
    cid: int | None,
    transport: str,
    via_host: str,
    via_port: int | None,
    received: str | None,
    rport: int | None,
) -> Back | str:
    """Where a response goes (RFC 3261 18.2.2, RFC 3581): the socket our Via's `sk` names (and the
    connection, for streams), the next Via's received/rport or sent-by. A str is the drop reason."""
    inbound: Listener | None = None
    conn: object | None = None
    if key:
        inbound = state.index.by_key(key)
        if inbound is None and state.refresh_if_stale():
            inbound = state.index.by_key(key)
        if cid is not None:
            conn = state.connection(cid)
    proto = inbound.proto if inbound is not None else transport.lower()
    host = received or via_host
    if proto == "udp":
        port = rport or via_port or 5060
        conn = None
    else:
        port = via_port or (5061 if proto in ("tls", "wss") else 5060)
    if inbound is None:
        inbound = state.index.pick(proto, host_family(host))
        if inbound is None:
            return "no_socket"
    return inbound, host, port, proto, conn
