"""The general path: any message, parsed into header lines (message.py) and checked (validate.py); a
request is routed by the rules or by its Route set, then forwarded or answered by the proxy itself, a
response goes back by its Vias. It answers every message; the scanned path (scanned_path.py) only takes
the usual ones faster, with the same outcome."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sipproxy.sip.branch import OUR_BRANCH_PREFIX, loop_key, loop_part, make_branch, transaction_key
from sipproxy.sip.forwarding import (
    FLOW_REFUSALS,
    Back,
    FlowHop,
    Target,
    flow_hop,
    next_hop_of,
    our_lines,
    outbound,
    response_destination,
    stream_marks,
    tcp_instead,
)
from sipproxy.sip.headers import ValueSyntaxError, addr_uri, is_cseq_number, split_values
from sipproxy.sip.listeners import STREAM_PROTOS, Listener, parse_socket_key
from sipproxy.sip.message import SipMessage
from sipproxy.sip.outcome import Outcome, Send, drop
from sipproxy.sip.replies import OPTIONS_HEADERS, REASON_PHRASES, answer, header_name
from sipproxy.sip.routing import Route, select_route
from sipproxy.sip.state import EngineState
from sipproxy.sip.uri import SipUri, host_family, normalize_host, parse_sip_uri, port_or_default
from sipproxy.sip.validate import RequestFacts, inspect_request
from sipproxy.sip.via import Via, fix_received, parse_via


def request(
    state: EngineState, msg: SipMessage, listener: Listener, src: tuple[str, int], conn: object | None
) -> Outcome:
    """A request received on `listener` from `src` (on `conn`, a stream): rejected by the checks of RFC
    3261 16.3, answered by the proxy (OPTIONS to us, Max-Forwards 0, a reply rule, a loop), or forwarded by
    the rules, its Route set or its Request-URI."""
    in_wire = state.index.known_wire(listener)
    if in_wire is None:
        # A socket this snapshot has not seen: sockets were added since.
        state.refresh_if_stale()
        in_wire = state.index.wire(listener)
    facts = inspect_request(msg)
    headers = msg.headers
    src_ip = normalize_host(src[0])
    src_port = src[1]
    top = facts.top_via
    top_line: bytes | None = None
    if top is not None:
        first_value = facts.top_via_values[0]
        fixed = fix_received(first_value, top, src_ip, src_port)
        if fixed is not first_value:
            raw = headers[facts.via_positions[0]][2]
            top_line = header_name(raw) + b": " + b", ".join([fixed, *facts.top_via_values[1:]])
    is_ack = msg.method == b"ACK"

    def reply(status: int, phrase: str, reason: str | None, extra: Sequence[bytes] = ()) -> Outcome:
        if is_ack:  # an ACK is never answered
            return drop(reason or "ack_not_forwarded")
        return answer(msg, facts, listener, src_ip, src_port, conn, top_line, status, phrase, extra, reason)

    rejection = facts.rejection
    if rejection is not None:
        return reply(rejection.status, rejection.phrase, rejection.reason, rejection.extra_headers)

    index = state.index
    ruri_raw = msg.ruri
    ruri = facts.ruri
    route_pos = msg.index.get(b"route")
    routes: list[bytes] = []
    routes_changed = False
    hint: SipUri | None = None
    flow_tokens: list[bytes] = []  # the user parts of our entries removed: flow tokens (RFC 5626 5.2)
    if route_pos:
        try:
            for pos in route_pos:
                routes.extend(v for v in split_values(headers[pos][1]) if v)
        except ValueSyntaxError:
            return reply(400, "Bad Request (malformed Route)", "parse_error")
        # RFC 3261 16.4: an upstream strict router put our Record-Route URI into the Request-URI.
        if (
            routes
            and ruri is not None
            and ruri.param(b"lr") is not None
            and index.is_ours(ruri.host, port_or_default(ruri))
        ):
            ruri_raw = addr_uri(routes.pop())
            ruri = parse_sip_uri(ruri_raw)
            routes_changed = True
        removed = 0
        while routes and removed < 2:
            uri = parse_sip_uri(addr_uri(routes[0]))
            if uri is None or not index.is_ours(uri.host, port_or_default(uri)):
                break
            del routes[0]
            removed += 1
            routes_changed = True
            if uri.user is not None:
                flow_tokens.append(uri.user)
            if removed == 2:
                # Second of a double Record-Route (RFC 5658): the socket facing the next hop.
                hint = uri
            elif uri.param(b"r2") is None:
                break  # a single entry: a following one of ours belongs to a later spiral

    if (
        msg.method == b"OPTIONS"
        and not routes
        and ruri is not None
        and index.is_ours(ruri.host, port_or_default(ruri))
    ):
        return reply(200, "OK", None, OPTIONS_HEADERS)
    if facts.max_forwards == 0:
        return reply(483, "Too Many Hops", "max_forwards")

    # A flow token in our entry sends the request over the flow it names, unless it came over that flow.
    hop: FlowHop | None = None
    for token in flow_tokens:
        found = flow_hop(state, token, conn)
        if isinstance(found, str):
            status, phrase = FLOW_REFUSALS[found]
            return reply(status, phrase, found)
        if found is not None:
            hop = found
            break

    # Requests inside a dialog that were loose-routed to us follow their route set, not the rules.
    rule: Route | None = None
    if hop is None and not (route_pos and facts.to_tag is not None):
        rule = select_route(state.routes, listener.tag, ruri_raw.decode("latin-1"))
    target: Target
    out_tag: str | None = None
    if hop is not None:
        target = (hop.host, hop.port, hop.listener.proto)
    elif rule is not None and rule.reply is not None:
        code = rule.reply
        return reply(code, REASON_PHRASES.get(code, "Reply"), "route_reply")
    elif rule is not None and rule.forward is not None:
        fwd = rule.forward
        target = (fwd.host, fwd.port, fwd.transport)
        out_tag = rule.socket
    elif routes:
        first = parse_sip_uri(addr_uri(routes[0]))
        if first is None:
            return reply(400, "Bad Request (malformed Route)", "parse_error")
        if first.param(b"lr") is None:
            # RFC 3261 16.6 step 7: the next hop is a strict router.
            first_raw = addr_uri(routes[0])
            routes = [*routes[1:], b"<" + ruri_raw + b">"]
            ruri_raw = first_raw
            routes_changed = True
        target = next_hop_of(first)
    else:
        if ruri is None:
            return reply(416, "Unsupported URI Scheme", "unsupported_uri_scheme")
        target = next_hop_of(ruri)

    call_id = facts.call_id
    cseq_number = facts.cseq_number
    # The loop hash covers the request as received (RFC 3261 16.6 step 8): one that comes back through
    # an application server that added a Route to us differs, one bounced back unchanged does not.
    received_routes = b",".join([headers[p][1] for p in route_pos]) if route_pos else b""
    lp = loop_key(msg.ruri, facts.from_tag, call_id, cseq_number, received_routes)
    assert top is not None
    txn = transaction_key(top.branch, facts.top_via_values[0], facts.from_tag, call_id, cseq_number, msg.ruri)
    branch = make_branch(txn, lp)
    # Something we forwarded has at least two Vias (ours and the sender's): one alone cannot be a loop.
    via_positions = facts.via_positions
    if (
        (len(via_positions) > 1 or len(facts.top_via_values) > 1)
        and OUR_BRANCH_PREFIX in b"".join([headers[p][1] for p in via_positions])
        and _looped(state, msg, facts, loop_part(branch))
    ):
        return reply(482, "Loop Detected", "loop")

    sk, rr_token = stream_marks(state, in_wire.sk, listener, conn, src)
    start_line = msg.start_line if ruri_raw is msg.ruri else msg.method + b" " + ruri_raw + b" SIP/2.0"

    def build(sender: Listener) -> bytes:
        return _build_request(
            state,
            msg,
            facts,
            start_line,
            sender,
            listener,
            branch,
            sk,
            top_line,
            routes_changed,
            routes,
            rr_token,
        )

    if hop is not None:
        data = build(hop.listener)
        return Outcome([Send(data, hop.listener, hop.host, hop.port, hop.listener.proto, hop.conn)])
    family = host_family(target[0])
    want = target[2] or "udp"
    facing = (hint.host, hint.port, hint.transport) if hint is not None else None
    out = outbound(state, listener, out_tag, facing, want, family)
    if isinstance(out, str):
        return reply(503, out, "no_socket")
    return _send_request(state, build, out, listener, target, out_tag)


def _send_request(
    state: EngineState,
    build: Callable[[Listener], bytes],
    out: Listener,
    inbound: Listener,
    target: Target,
    out_tag: str | None,
) -> Outcome:
    data = build(out)
    tcp = tcp_instead(state, data, out, inbound, target, out_tag)
    if tcp is not None:
        out = tcp
        data = build(out)
    return Outcome([Send(data, out, target[0], target[1], out.proto)])


def _looped(state: EngineState, msg: SipMessage, facts: RequestFacts, lp: bytes | None) -> bool:
    """RFC 3261 16.3 step 4: one of our Vias carries the loop hash this request would get again."""
    index = state.index
    headers = msg.headers
    for pos in facts.via_positions:
        try:
            values = split_values(headers[pos][1])
        except ValueSyntaxError:
            continue
        for value in values:
            if OUR_BRANCH_PREFIX not in value:
                continue
            via = parse_via(value)
            if via is None or via.branch is None:
                continue
            if loop_part(via.branch) == lp and index.is_ours(via.host, via.port):
                return True
    return False


def _build_request(
    state: EngineState,
    msg: SipMessage,
    facts: RequestFacts,
    start_line: bytes,
    out: Listener,
    inbound: Listener,
    branch: bytes,
    sk: bytes,
    top_line: bytes | None,
    routes_changed: bool,
    routes: list[bytes],
    rr_token: bytes | None,
) -> bytes:
    headers = msg.headers
    hindex = msg.index
    proto = out.proto
    in_dialog = facts.to_tag is not None
    parts = [start_line, our_lines(state, out, inbound, branch, sk, msg.method, in_dialog, rr_token)]
    overrides: dict[int, bytes | None] = {}
    if top_line is not None:
        overrides[facts.via_positions[0]] = top_line
    mf_pos = hindex.get(b"max-forwards")
    if mf_pos:
        raw = headers[mf_pos[0]][2]
        mf = facts.max_forwards or 1
        overrides[mf_pos[0]] = header_name(raw) + b": %d" % (mf - 1)
    else:
        parts.append(b"Max-Forwards: 70")
    if routes_changed:
        route_pos = hindex.get(b"route", [])
        for pos in route_pos:
            overrides[pos] = None
        if routes:
            name = header_name(headers[route_pos[0]][2]) if route_pos else b"Route"
            line = name + b": " + b", ".join(routes)
            if route_pos:
                overrides[route_pos[0]] = line
            else:
                parts.append(line)
    if overrides:
        for i, header in enumerate(headers):
            if i in overrides:
                replacement = overrides[i]
                if replacement is not None:
                    parts.append(replacement)
            else:
                parts.append(header[2])
    else:
        parts.extend([header[2] for header in headers])
    body = facts.body
    if facts.content_length is None and proto in STREAM_PROTOS:
        parts.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(parts) + b"\r\n\r\n" + body


def response(state: EngineState, msg: SipMessage) -> Outcome:
    """A response whose top Via is ours goes back by the next Via without ours; any other is dropped."""
    if not msg.start_line_ok or msg.version.upper() != b"SIP/2.0":
        return drop("parse_error")
    headers = msg.headers
    via_pos = msg.index.get(b"via")
    if not via_pos:
        return drop("parse_error")
    try:
        values = split_values(headers[via_pos[0]][1])
    except ValueSyntaxError:
        return drop("parse_error")
    ours = parse_via(values[0])
    if ours is None:
        return drop("parse_error")
    branch = ours.branch
    if branch is None or not branch.startswith(OUR_BRANCH_PREFIX):
        return drop("response_not_ours")
    if not state.index.is_ours(ours.host, ours.port) and not (
        state.refresh_if_stale() and state.index.is_ours(ours.host, ours.port)
    ):
        return drop("response_not_ours")
    cseq = msg.first(b"cseq")
    if cseq is not None:
        number = cseq.split(None, 1)[0] if cseq.strip() else b""
        if not is_cseq_number(number):
            return drop("parse_error")
    body = msg.body
    cl_values = msg.values_of(b"content-length")
    has_cl = bool(cl_values)
    if cl_values:
        first = cl_values[0]
        if any(v != first for v in cl_values[1:]) or not first.isdigit() or len(first) > 10:
            return drop("bad_content_length")
        length = int(first)
        if length > len(body):
            return drop("bad_content_length")
        body = body[:length]

    # The next Via: the second value of our line, else the first value of the next Via line.
    if len(values) > 1:
        next_raw = values[1]
        our_line: bytes | None = header_name(headers[via_pos[0]][2]) + b": " + b", ".join(values[1:])
    else:
        if len(via_pos) < 2:
            return drop("no_next_via")
        try:
            next_raw = split_values(headers[via_pos[1]][1])[0]
        except ValueSyntaxError:
            return drop("parse_error")
        our_line = None
    nxt = parse_via(next_raw)
    if nxt is None:
        return drop("parse_error")

    target = _back_by_via(state, ours.params.get(b"sk"), nxt)
    if isinstance(target, str):
        return drop(target)
    inbound, host, port, proto, conn = target

    first_via = via_pos[0]
    if msg.terminated and body is msg.body and (has_cl or proto not in STREAM_PROTOS):
        # The message goes on unchanged but for our Via: splice the received bytes rather than joining
        # every header line again. The raw lines are the CRLF-separated pieces of the header block, so
        # the first line equal to ours, between CRLFs, is ours (earlier lines are not Via lines).
        raw = b"\r\n" + headers[first_via][2] + b"\r\n"
        received = msg.data
        at = received.find(raw)
        if at >= 0:
            keep = b"\r\n" + our_line + b"\r\n" if our_line is not None else b"\r\n"
            data = received[:at] + keep + received[at + len(raw) :]
            return Outcome([Send(data, inbound, host, port, proto, conn)])
    parts = [msg.start_line, *[header[2] for header in headers[:first_via]]]
    if our_line is not None:
        parts.append(our_line)
    parts.extend([header[2] for header in headers[first_via + 1 :]])
    if not has_cl and proto in STREAM_PROTOS:
        parts.append(b"Content-Length: %d" % len(body))
    data = b"\r\n".join(parts) + b"\r\n\r\n" + body
    return Outcome([Send(data, inbound, host, port, proto, conn)])


def _back_by_via(state: EngineState, sk: bytes | None, nxt: Via) -> Back | str:
    key, token = parse_socket_key(sk) if sk else (None, None)
    return response_destination(state, key, token, nxt.transport, nxt.host, nxt.port, nxt.received, nxt.rport)
