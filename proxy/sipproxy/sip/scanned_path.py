"""The scanned path: a message the C scanner read (scan.py) forwarded from the values the scan returned,
without parsing it into header lines. It gives the outcome the general path (general_path.py) would give,
and None whenever it would need anything only the general path does: the general path then answers."""

from __future__ import annotations

from sipproxy.sip.forwarding import (
    FlowHop,
    flow_hop,
    next_hop,
    our_lines,
    outbound,
    response_destination,
    stream_marks,
    tcp_instead,
)
from sipproxy.sip.listeners import STREAM_PROTOS, Listener
from sipproxy.sip.outcome import Outcome, Send, drop
from sipproxy.sip.routing import Route, select_route
from sipproxy.sip.scan import ScannedRequest, ScannedResponse
from sipproxy.sip.state import EngineState
from sipproxy.sip.uri import host_family, ip_literal, transport_param


def request(
    state: EngineState,
    data: bytes,
    scanned: ScannedRequest,
    listener: Listener,
    src: tuple[str, int],
    conn: object | None,
) -> Outcome | None:
    """A request forwarded as the general path would. None when it needs anything only that path does
    (a reply, a route set not ours alone, an unknown socket, a flow token to refuse)."""
    (
        method,
        ruri_raw,
        ruri_host,
        ruri_port,
        ruri_params,
        has_to_tag,
        branch,
        lines,
        content_length,
        start_end,
        head_end,
        route_set,
    ) = scanned
    index = state.index
    in_wire = index.known_wire(listener)
    if in_wire is None:
        return None
    if method == b"OPTIONS" and (ruri_port is None or index.is_ours(ruri_host, ruri_port)):
        return None  # ours to answer, or a port the transport's default gives: the general path decides
    out_tag: str | None = None
    facing: tuple[str, int | None, str | None] | None = None
    rule: Route | None = None
    hop: FlowHop | None = None
    if route_set:
        # Inside a dialog, loose-routed to us: our own entry (or our double Record-Route, RFC 5658) is
        # all the set may hold here, and the request goes on to its Request-URI, or over the flow a token
        # in our entry names.
        host, port, r2, _, user = route_set[0]
        if port is None or not index.is_ours(host, port):
            return None  # not ours, or a port-less entry (its transport's default port): the general path
        tokens = [user] if user is not None else []
        if len(route_set) == 2:
            host, port, _, transport, user = route_set[1]
            if not r2 or port is None or not index.is_ours(host, port):
                return None
            facing = (host, port, transport)
            if user is not None:
                tokens.append(user)
        for token in tokens:
            found = flow_hop(state, token, conn)
            if isinstance(found, str):
                return None  # refused: the general path answers
            if found is not None:
                hop = found
                break
    else:
        rule = select_route(state.routes, listener.tag, ruri_raw.decode("latin-1"))
    sk, rr_token = stream_marks(state, in_wire.sk, listener, conn, src)
    body_at = head_end + 4
    body = data[body_at : body_at + content_length] if content_length >= 0 else data[body_at:]
    head = data[: start_end + 2]  # the start line, unchanged
    add_length = content_length < 0
    if hop is not None:
        flow_out = hop.listener
        spliced = _spliced(
            state, head, flow_out, listener, branch, sk, method, has_to_tag, lines, add_length, body, rr_token
        )
        return Outcome([Send(spliced, flow_out, hop.host, hop.port, flow_out.proto, hop.conn)])
    if rule is None:
        target = next_hop(ruri_host, ruri_port, transport_param(ruri_params) if ruri_params else None)
    elif rule.forward is not None:
        fwd = rule.forward
        target = (fwd.host, fwd.port, fwd.transport)
        out_tag = rule.socket
    else:
        return None
    out = outbound(state, listener, out_tag, facing, target[2] or "udp", host_family(target[0]))
    if isinstance(out, str):
        return None
    spliced = _spliced(
        state, head, out, listener, branch, sk, method, has_to_tag, lines, add_length, body, rr_token
    )
    tcp = tcp_instead(state, spliced, out, listener, target, out_tag)
    if tcp is not None:
        out = tcp
        spliced = _spliced(
            state, head, out, listener, branch, sk, method, has_to_tag, lines, add_length, body, rr_token
        )
    return Outcome([Send(spliced, out, target[0], target[1], out.proto)])


def _spliced(
    state: EngineState,
    head: bytes,
    sender: Listener,
    inbound: Listener,
    branch: bytes,
    sk: bytes,
    method: bytes,
    in_dialog: bool,
    lines: bytes,
    add_length: bool,
    body: bytes,
    rr_token: bytes | None,
) -> bytes:
    """A scanned request as it leaves: its start line, our Via (and Record-Route), its own header lines,
    its body; no line split out."""
    ours = our_lines(state, sender, inbound, branch, sk, method, in_dialog, rr_token)
    if add_length and sender.proto in STREAM_PROTOS:
        return b"".join([head, ours, b"\r\n", lines, b"Content-Length: %d\r\n\r\n" % len(body), body])
    return b"".join([head, ours, b"\r\n", lines, b"\r\n", body])


def response(state: EngineState, scanned: ScannedResponse) -> Outcome | None:
    """A response with our Via already cut out by the scan, sent back by the next Via; None when the Via
    the scan cut is not one we write."""
    prefix, key, token, forwarded, transport, host, port, received, rport = scanned
    if not state.index.is_our_via_prefix(prefix):
        return None
    received_ip = ip_literal(received) if received else None
    back = response_destination(state, key, token, transport, host, port, received_ip, rport)
    if isinstance(back, str):
        return drop(back)
    inbound, to_host, to_port, proto, conn = back
    return Outcome([Send(forwarded, inbound, to_host, to_port, proto, conn)])
