"""The stateless proxy: one received message in, the messages to send (or a drop reason) out.

`SipEngine.handle` is the only entry point of the hot path. It never performs I/O and never raises: the
runtime sends what the returned `Outcome` lists and counts its `drop_reason`.

The inbound socket of a request (and, on streams, the connection) is remembered statelessly in a
parameter of the Via we push: `sk=<proto code><packed IP hex>-<port hex>[-<connection id hex>]`, for
example `sk=u7f000001-13c4` or `sk=t7f000001-13c4-2a`. The response carries our Via back, so the engine
knows which socket to answer from and which connection to write on without keeping any state per
transaction. Connection ids come from `register_connection` and map back through a weak map.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sipproxy.sip.branch import (
    OUR_BRANCH_PREFIX,
    loop_key,
    loop_part,
    make_branch,
    reply_to_tag,
    transaction_key,
)
from sipproxy.sip.connections import ConnectionIds, LocalConnectionIds
from sipproxy.sip.headers import ValueSyntaxError, addr_uri, is_cseq_number, split_values
from sipproxy.sip.listeners import (
    STREAM_PROTOS,
    Listener,
    ListenerIndex,
    ListenerView,
    fits,
    parse_socket_key,
)
from sipproxy.sip.message import ParseError, SipMessage, parse_message
from sipproxy.sip.replies import OPTIONS_HEADERS, build_reply, header_name
from sipproxy.sip.routing import Route, select_route
from sipproxy.sip.scan import SCAN_REQUEST, SCAN_RESPONSE, ScannedRequest, ScannedResponse
from sipproxy.sip.uri import SipUri, host_family, ip_literal, normalize_host, parse_sip_uri, transport_param
from sipproxy.sip.validate import RequestFacts, inspect_request
from sipproxy.sip.via import Via, fix_received, parse_via

__all__ = ["Listener", "ListenerView", "Outcome", "Send", "SipEngine"]

# RFC 3261 18.1.1: above this size (path MTU unknown) a request should use a congestion-controlled transport.
UDP_SIZE_LIMIT = 1300
# How often a lookup miss may trigger a rebuild of the listener snapshot (a stray packet must not cost
# a rebuild each time).
_REFRESH_INTERVAL = 1.0
_INTERNAL_ERROR_LOG_INTERVAL = 10.0
log = logging.getLogger(__name__)

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


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes  # the full message to send
    listener: Listener  # local socket to send from
    host: str  # destination: IP literal or a hostname the runtime resolves
    port: int
    proto: str  # "udp" | "tcp" ...
    # stream only: the exact connection to write on (the one a request arrived on, for its responses);
    # None = the runtime picks or opens one to (host, port) from `listener`
    connection: object | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    sends: list[Send]
    drop_reason: str | None = None  # snake_case reason when something was dropped or answered with an error


def _drop(reason: str) -> Outcome:
    return Outcome([], reason)


# Compiled with mypyc (setup.py). Not meant to be subclassed: calls on an interpreted subclass would leave
# mypyc's direct calls for Python lookups; the runtime adapts it through `connections` instead.
class SipEngine:
    def __init__(
        self,
        routes: Sequence[Route],
        listeners: ListenerView,
        record_route: bool = True,
        scan: bool = True,
        connections: ConnectionIds | None = None,
    ) -> None:
        """`scan=False` leaves every message to the Python paths (tests compare the two)."""
        self.routes = list(routes)
        self.listeners = listeners
        self.record_route = record_route
        self._index = ListenerIndex(listeners.all())
        self._index_time = time.monotonic()
        self.connections: ConnectionIds = connections if connections is not None else LocalConnectionIds()
        self._last_internal_error_log = -_INTERNAL_ERROR_LOG_INTERVAL
        self._scan_request: Callable[[bytes, str, int], ScannedRequest | None] | None = None
        self._scan_response: Callable[[bytes], ScannedResponse | None] | None = None
        if scan:
            self._scan_request = SCAN_REQUEST
            self._scan_response = SCAN_RESPONSE

    # ----------------------------------------------------------------- runtime hooks

    def listeners_changed(self) -> None:
        """Rebuild the listener snapshot now (call after sockets were added or removed)."""
        self._index = ListenerIndex(self.listeners.all())
        self._index_time = time.monotonic()

    def _refresh_if_stale(self) -> bool:
        now = time.monotonic()
        if now - self._index_time < _REFRESH_INTERVAL:
            return False
        self._index = ListenerIndex(self.listeners.all())
        self._index_time = now
        return True

    def register_connection(self, conn: object) -> int:
        """Give a stream connection an id that our Via can carry; idempotent."""
        return self.connections.register(conn)

    def forget_connection(self, conn: object) -> None:
        """The connection closed: responses for it will go over a new connection instead."""
        self.connections.forget(conn)

    def connection(self, cid: int) -> object | None:
        return self.connections.lookup(cid)

    # ----------------------------------------------------------------- entry point

    def handle(
        self, data: bytes, listener: Listener, src: tuple[str, int], connection: object | None = None
    ) -> Outcome:
        """Process ONE complete message received on `listener` from `src`. Never raises."""
        try:
            return self.process(data, listener, src, connection)
        except Exception:
            # A bug, not bad input: say so, but at most every few seconds so a packet that triggers it
            # cannot flood the log.
            now = time.monotonic()
            if now - self._last_internal_error_log > _INTERNAL_ERROR_LOG_INTERVAL:
                self._last_internal_error_log = now
                log.exception("SIP engine failed on a %d-byte message from %s:%s", len(data), *src[:2])
            return _drop("internal_error")

    def process(
        self, data: bytes, listener: Listener, src: tuple[str, int], connection: object | None = None
    ) -> Outcome:
        """`handle` without the safety net (tests use it to see that no input reaches the net)."""
        if data[:1] in (b"\r", b"\n"):
            # RFC 3261 7.5: ignore CRLFs before the start line; on their own they are keep-alives.
            data = data.lstrip(b"\r\n")
            if not data:
                return _drop("keepalive")
        if data[:4] == b"SIP/":
            scan_response = self._scan_response
            if scan_response is not None:
                scanned = scan_response(data)
                if scanned is not None:
                    done = self._response_scanned(data, scanned)
                    if done is not None:
                        return done
        else:
            scan_request = self._scan_request
            if scan_request is not None:
                found = scan_request(data, normalize_host(src[0]), src[1])
                if found is not None:
                    done = self._request_scanned(data, found, listener, src, connection)
                    if done is not None:
                        return done
        try:
            msg = parse_message(data)
        except ParseError:
            return _drop("parse_error")
        if msg.is_request:
            return self._request(msg, listener, src, connection)
        return self._response(msg)

    # ----------------------------------------------------------------- requests

    def _request(
        self, msg: SipMessage, listener: Listener, src: tuple[str, int], conn: object | None
    ) -> Outcome:
        in_wire = self._index.known_wire(listener)
        if in_wire is None:
            # A socket this snapshot has not seen: sockets were added since.
            self._refresh_if_stale()
            in_wire = self._index.wire(listener)
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
                return _drop(reason or "ack_not_forwarded")
            return self._reply(
                msg, facts, listener, src_ip, src_port, conn, top_line, status, phrase, extra, reason
            )

        rejection = facts.rejection
        if rejection is not None:
            return reply(rejection.status, rejection.phrase, rejection.reason, rejection.extra_headers)

        index = self._index
        ruri_raw = msg.ruri
        ruri = facts.ruri
        route_pos = msg.index.get(b"route")
        routes: list[bytes] = []
        routes_changed = False
        hint: SipUri | None = None
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
                and index.is_ours(ruri.host, ruri.port)
            ):
                ruri_raw = addr_uri(routes.pop())
                ruri = parse_sip_uri(ruri_raw)
                routes_changed = True
            removed = 0
            while routes and removed < 2:
                uri = parse_sip_uri(addr_uri(routes[0]))
                if uri is None or not index.is_ours(uri.host, uri.port):
                    break
                del routes[0]
                removed += 1
                routes_changed = True
                if removed == 2:
                    # Second of a double Record-Route (RFC 5658): the socket facing the next hop.
                    hint = uri
                elif uri.param(b"r2") is None:
                    break  # a single entry: a following one of ours belongs to a later spiral

        if (
            msg.method == b"OPTIONS"
            and not routes
            and ruri is not None
            and index.is_ours(ruri.host, ruri.port)
        ):
            return reply(200, "OK", None, OPTIONS_HEADERS)
        if facts.max_forwards == 0:
            return reply(483, "Too Many Hops", "max_forwards")

        # Requests inside a dialog that were loose-routed to us follow their route set, not the rules.
        rule: Route | None = None
        if not (route_pos and facts.to_tag is not None):
            rule = select_route(self.routes, listener.tag, ruri_raw.decode("latin-1"))
        target: tuple[str, int, str | None]  # host, port, explicit transport
        out_tag: str | None = None
        if rule is not None and rule.reply is not None:
            code = rule.reply
            return reply(code, REASON_PHRASES.get(code, "Reply"), "route_reply")
        if rule is not None and rule.forward is not None:
            hop = rule.forward
            target = (hop.host, hop.port, hop.transport)
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
            target = _next_hop_of(first)
        else:
            if ruri is None:
                return reply(416, "Unsupported URI Scheme", "unsupported_uri_scheme")
            target = _next_hop_of(ruri)

        call_id = facts.call_id
        cseq_number = facts.cseq_number
        # The loop hash covers the request as received (RFC 3261 16.6 step 8): one that comes back through
        # an application server that added a Route to us differs, one bounced back unchanged does not.
        received_routes = b",".join([headers[p][1] for p in route_pos]) if route_pos else b""
        lp = loop_key(msg.ruri, facts.from_tag, call_id, cseq_number, received_routes)
        assert top is not None
        txn = transaction_key(
            top.branch, facts.top_via_values[0], facts.from_tag, call_id, cseq_number, msg.ruri
        )
        branch = make_branch(txn, lp)
        # Something we forwarded has at least two Vias (ours and the sender's): one alone cannot be a loop.
        via_positions = facts.via_positions
        if (
            (len(via_positions) > 1 or len(facts.top_via_values) > 1)
            and OUR_BRANCH_PREFIX in b"".join([headers[p][1] for p in via_positions])
            and self._looped(msg, facts, loop_part(branch))
        ):
            return reply(482, "Loop Detected", "loop")

        family = host_family(target[0])
        want = target[2] or "udp"
        facing = (hint.host, hint.port, hint.transport) if hint is not None else None
        out = self._outbound(listener, out_tag, facing, want, family)
        if isinstance(out, str):
            return reply(503, out, "no_socket")
        sk = self._sk(in_wire.sk, conn)
        start_line = msg.start_line if ruri_raw is msg.ruri else msg.method + b" " + ruri_raw + b" SIP/2.0"

        def build(sender: Listener) -> bytes:
            return self._build_request(
                msg, facts, start_line, sender, listener, branch, sk, top_line, routes_changed, routes
            )

        return self._send_request(build, out, listener, target, out_tag)

    def _outbound(
        self,
        inbound: Listener,
        out_tag: str | None,
        hint: tuple[str, int | None, str | None] | None,
        want: str,
        family: int,
    ) -> Listener | str:
        """The socket a request leaves from (issue 3: the named one, else the inbound one when it fits,
        else the first that fits); a str is the phrase of the 503 that says why there is none."""
        if out_tag is not None:
            tagged = self.listeners.by_tag(out_tag)
            return tagged if tagged is not None else f"Service Unavailable (no socket tagged {out_tag})"
        index = self._index
        out: Listener | None = None
        if hint is not None:
            out = index.by_address(hint[0], hint[1], hint[2] or "udp")
            if out is not None and not fits(out, want, family):
                out = None
        if out is None:
            out = inbound if fits(inbound, want, family) else index.pick(want, family)
        if out is None and self._refresh_if_stale():
            out = self._index.pick(want, family)
        if out is None:
            return f"Service Unavailable (no {want} socket for the next hop)"
        return out

    def _sk(self, inbound_key: bytes, conn: object | None) -> bytes:
        """The `sk` of our Via: the inbound socket, and for streams the connection to answer on."""
        if conn is None:
            return inbound_key
        return inbound_key + b"-%x" % self.register_connection(conn)

    def _send_request(
        self,
        build: Callable[[Listener], bytes],
        out: Listener,
        inbound: Listener,
        target: tuple[str, int, str | None],
        out_tag: str | None,
    ) -> Outcome:
        data = build(out)
        tcp = self._tcp_instead(data, out, inbound, target, out_tag)
        if tcp is not None:
            out = tcp
            data = build(out)
        return Outcome([Send(data, out, target[0], target[1], out.proto)])

    def _tcp_instead(
        self,
        data: bytes,
        out: Listener,
        inbound: Listener,
        target: tuple[str, int, str | None],
        out_tag: str | None,
    ) -> Listener | None:
        """A TCP socket to send `data` from instead of UDP socket `out` when it is too big for UDP and
        neither the route nor the URI fixed the transport (RFC 3261 18.1.1)."""
        if len(data) <= UDP_SIZE_LIMIT or out.proto != "udp" or out_tag is not None or target[2] is not None:
            return None
        family = host_family(target[0])
        return inbound if fits(inbound, "tcp", family) else self._index.pick("tcp", family)

    def _request_scanned(
        self,
        data: bytes,
        scanned: ScannedRequest,
        listener: Listener,
        src: tuple[str, int],
        conn: object | None,
    ) -> Outcome | None:
        """A request the C scanner read (scan.py): forwarded as `_request` would, without parsing it
        into header objects. None when it needs anything `_request` alone does (a reply, a route set not
        ours alone, an unknown socket): the general path then takes it."""
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
        index = self._index
        in_wire = index.known_wire(listener)
        if in_wire is None:
            return None
        if method == b"OPTIONS" and index.is_ours(ruri_host, ruri_port):
            return None
        out_tag: str | None = None
        facing: tuple[str, int | None, str | None] | None = None
        rule: Route | None = None
        if route_set:
            # Inside a dialog, loose-routed to us: our own entry (or our double Record-Route, RFC 5658) is
            # all the set may hold here, and the request goes on to its Request-URI.
            host, port, r2, _ = route_set[0]
            if not index.is_ours(host, port):
                return None
            if len(route_set) == 2:
                host, port, _, transport = route_set[1]
                if not r2 or not index.is_ours(host, port):
                    return None
                facing = (host, port, transport)
        else:
            rule = select_route(self.routes, listener.tag, ruri_raw.decode("latin-1"))
        if rule is None:
            target = _next_hop(ruri_host, ruri_port, transport_param(ruri_params) if ruri_params else None)
        elif rule.forward is not None:
            hop = rule.forward
            target = (hop.host, hop.port, hop.transport)
            out_tag = rule.socket
        else:
            return None
        out = self._outbound(listener, out_tag, facing, target[2] or "udp", host_family(target[0]))
        if isinstance(out, str):
            return None
        sk = self._sk(in_wire.sk, conn)
        body_at = head_end + 4
        body = data[body_at : body_at + content_length] if content_length >= 0 else data[body_at:]
        record = self.record_route and not has_to_tag and method != b"REGISTER"
        head = data[: start_end + 2]  # the start line, unchanged
        add_length = content_length < 0
        spliced = self._spliced(head, out, listener, branch, sk, record, lines, add_length, body)
        tcp = self._tcp_instead(spliced, out, listener, target, out_tag)
        if tcp is not None:
            out = tcp
            spliced = self._spliced(head, out, listener, branch, sk, record, lines, add_length, body)
        return Outcome([Send(spliced, out, target[0], target[1], out.proto)])

    def _spliced(
        self,
        head: bytes,
        sender: Listener,
        inbound: Listener,
        branch: bytes,
        sk: bytes,
        record: bool,
        lines: bytes,
        add_length: bool,
        body: bytes,
    ) -> bytes:
        """A scanned request as it leaves: its start line, our Via (and Record-Route), its own header lines,
        its body; one join, no line split out."""
        index = self._index
        wire = index.wire(sender)
        parts = [head, wire.via_head, branch, b";sk=", sk, b"\r\n"]
        if record:
            if sender is not inbound and sender != inbound:
                parts += [wire.rr_double, b"\r\n", index.wire(inbound).rr_double, b"\r\n"]
            else:
                parts += [wire.rr, b"\r\n"]
        parts.append(lines)
        if add_length and sender.proto in STREAM_PROTOS:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        parts += [b"\r\n", body]
        return b"".join(parts)

    def _looped(self, msg: SipMessage, facts: RequestFacts, lp: bytes | None) -> bool:
        """RFC 3261 16.3 step 4: one of our Vias carries the loop hash this request would get again."""
        index = self._index
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
        self,
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
    ) -> bytes:
        headers = msg.headers
        hindex = msg.index
        proto = out.proto
        index = self._index
        out_wire = index.wire(out)
        parts = [start_line, out_wire.via_head + branch + b";sk=" + sk]
        # Record-Route only where it can matter: requests outside a dialog (no To tag) that may create one.
        if self.record_route and facts.to_tag is None and msg.method != b"REGISTER":
            if out is not inbound and out != inbound:
                # RFC 5658: one entry per side, the top one facing the next hop.
                parts.append(out_wire.rr_double)
                parts.append(index.wire(inbound).rr_double)
            else:
                parts.append(out_wire.rr)
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

    def _reply(
        self,
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
        if not facts.via_positions:
            # Without a Via there is nowhere RFC 3261 lets us send a response.
            return _drop(reason or "parse_error")
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

    # ----------------------------------------------------------------- responses

    def _response(self, msg: SipMessage) -> Outcome:
        if not msg.start_line_ok or msg.version.upper() != b"SIP/2.0":
            return _drop("parse_error")
        headers = msg.headers
        via_pos = msg.index.get(b"via")
        if not via_pos:
            return _drop("parse_error")
        try:
            values = split_values(headers[via_pos[0]][1])
        except ValueSyntaxError:
            return _drop("parse_error")
        ours = parse_via(values[0])
        if ours is None:
            return _drop("parse_error")
        branch = ours.branch
        if branch is None or not branch.startswith(OUR_BRANCH_PREFIX):
            return _drop("response_not_ours")
        if not self._index.is_ours(ours.host, ours.port) and not (
            self._refresh_if_stale() and self._index.is_ours(ours.host, ours.port)
        ):
            return _drop("response_not_ours")
        cseq = msg.first(b"cseq")
        if cseq is not None:
            number = cseq.split(None, 1)[0] if cseq.strip() else b""
            if not is_cseq_number(number):
                return _drop("parse_error")
        body = msg.body
        cl_values = msg.values_of(b"content-length")
        has_cl = bool(cl_values)
        if cl_values:
            first = cl_values[0]
            if any(v != first for v in cl_values[1:]) or not first.isdigit() or len(first) > 10:
                return _drop("bad_content_length")
            length = int(first)
            if length > len(body):
                return _drop("bad_content_length")
            body = body[:length]

        # The next Via: the second value of our line, else the first value of the next Via line.
        if len(values) > 1:
            next_raw = values[1]
            our_line: bytes | None = header_name(headers[via_pos[0]][2]) + b": " + b", ".join(values[1:])
        else:
            if len(via_pos) < 2:
                return _drop("no_next_via")
            try:
                next_raw = split_values(headers[via_pos[1]][1])[0]
            except ValueSyntaxError:
                return _drop("parse_error")
            our_line = None
        nxt = parse_via(next_raw)
        if nxt is None:
            return _drop("parse_error")

        target = self._back_by_via(ours.params.get(b"sk"), nxt)
        if isinstance(target, str):
            return _drop(target)
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

    def _response_scanned(self, data: bytes, scanned: ScannedResponse) -> Outcome | None:
        """A response the C scanner read (scan.py): our Via cut out of the received bytes; None when the
        Via is not one we write (the general path decides)."""
        prefix, key, cid, forwarded, transport, host, port, received, rport = scanned
        if not self._index.is_our_via_prefix(prefix):
            return None
        received_ip = ip_literal(received) if received else None
        target = self._back_to(key, cid, transport, host, port, received_ip, rport)
        if isinstance(target, str):
            return _drop(target)
        inbound, to_host, to_port, proto, conn = target
        return Outcome([Send(forwarded, inbound, to_host, to_port, proto, conn)])

    def _back_by_via(self, sk: bytes | None, nxt: Via) -> tuple[Listener, str, int, str, object | None] | str:
        key, cid = parse_socket_key(sk) if sk else (None, None)
        return self._back_to(key, cid, nxt.transport, nxt.host, nxt.port, nxt.received, nxt.rport)

    def _back_to(
        self,
        key: bytes | None,
        cid: int | None,
        transport: str,
        via_host: str,
        via_port: int | None,
        received: str | None,
        rport: int | None,
    ) -> tuple[Listener, str, int, str, object | None] | str:
        """Where a response goes (RFC 3261 18.2.2, RFC 3581): the socket our Via's `sk` names (and the
        connection, for streams), the next Via's received/rport or sent-by. A str is the drop reason."""
        inbound: Listener | None = None
        conn: object | None = None
        if key:
            inbound = self._index.by_key(key)
            if inbound is None and self._refresh_if_stale():
                inbound = self._index.by_key(key)
            if cid is not None:
                conn = self.connection(cid)
        proto = inbound.proto if inbound is not None else transport.lower()
        host = received or via_host
        if proto == "udp":
            port = rport or via_port or 5060
            conn = None
        else:
            port = via_port or (5061 if proto in ("tls", "wss") else 5060)
        if inbound is None:
            inbound = self._index.pick(proto, host_family(host))
            if inbound is None:
                return "no_socket"
        return inbound, host, port, proto, conn


def _next_hop_of(uri: SipUri) -> tuple[str, int, str | None]:
    transport = uri.transport if uri.params else None
    if transport is None and uri.scheme == "sips":
        transport = "tls"
    return _next_hop(uri.host, uri.port, transport)


def _next_hop(host: str, port: int | None, transport: str | None) -> tuple[str, int, str | None]:
    """Destination of a URI per RFC 3263 without DNS: its host, its port or the transport's default."""
    return host, port or (5061 if transport in ("tls", "wss") else 5060), transport
