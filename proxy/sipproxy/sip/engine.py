"""The stateless proxy: one received message in, the messages to send (or a drop reason) out.

`SipEngine.handle` is the only entry point of the hot path. It never performs I/O and never raises: the
runtime sends what the returned `Outcome` lists and counts its `drop_reason`.

The engine holds what every message is decided by (the routing rules, a snapshot of the listeners, the
stream connection ids, the Record-Route setting) and hands each message to a path: the scanned path
(scanned_path.py) when the C scanner (scan.py) read it and it needs nothing else, else the general path
(general_path.py), which answers every message. What both paths decide alike is in forwarding.py, the
proxy's own responses in replies.py.

The inbound socket of a request (and, on streams, the connection) is remembered statelessly in a
parameter of the Via we push: `sk=<proto code><packed IP hex>-<port hex>[-<flow token>]`, for
example `sk=u7f000001-13c4` or `sk=t7f000001-13c4-<48 hex digits>`. The response carries our Via back, so
the engine knows which socket to answer from and which connection to write on without keeping any state per
transaction. The flow token (flowtoken.py) names the connection by its id and peer under a key of this
proxy, so a forged response cannot be written onto another client's connection. Connection ids come from
`register_connection` and map back through the runtime's registry. The Record-Route facing a TLS, WS or
WSS client carries the same token in its user part: an in-dialog request arriving with it goes over that
connection (RFC 5626 5.3), a token we did not make is refused with 403, a flow that is gone with 430.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from sipproxy.sip import general_path, scanned_path
from sipproxy.sip.connections import ConnectionIds
from sipproxy.sip.listeners import Listener, ListenerView
from sipproxy.sip.message import ParseError, parse_message
from sipproxy.sip.outcome import Outcome, Send, drop
from sipproxy.sip.routing import Route
from sipproxy.sip.scan import SCAN_REQUEST, SCAN_RESPONSE, ScannedRequest, ScannedResponse
from sipproxy.sip.state import EngineState
from sipproxy.sip.uri import normalize_host

__all__ = ["Listener", "ListenerView", "Outcome", "Send", "SipEngine"]

_INTERNAL_ERROR_LOG_INTERVAL = 10.0
log = logging.getLogger(__name__)


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
        flow_key: bytes | None = None,
    ) -> None:
        """`scan=False` leaves every message to the general path (tests compare the two). `flow_key` signs
        the flow tokens (flowtoken.py): every worker of one proxy gets the same; None makes one."""
        self.state = EngineState(routes, listeners, record_route, connections, flow_key)
        self._last_internal_error_log = -_INTERNAL_ERROR_LOG_INTERVAL
        self._scan_request: Callable[[bytes, str, int], ScannedRequest | None] | None = None
        self._scan_response: Callable[[bytes], ScannedResponse | None] | None = None
        if scan:
            self._scan_request = SCAN_REQUEST
            self._scan_response = SCAN_RESPONSE

    # ----------------------------------------------------------------- runtime hooks

    def listeners_changed(self) -> None:
        """Rebuild the listener snapshot now (call after sockets were added or removed)."""
        self.state.listeners_changed()

    def listener_added(self, listener: Listener) -> None:
        """A socket was added: its listener joins the lookups at once."""
        self.state.listener_added(listener)

    def listener_removed(self, listener: Listener) -> None:
        self.state.listener_removed(listener)

    def register_connection(self, conn: object) -> int:
        """Give a stream connection an id that our Via can carry; idempotent."""
        return self.state.connections.register(conn)

    def forget_connection(self, conn: object) -> None:
        """The connection closed: responses for it will go over a new connection instead."""
        self.state.connections.forget(conn)

    def connection(self, cid: int) -> object | None:
        return self.state.connection(cid)

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
            return drop("internal_error")

    def process(
        self, data: bytes, listener: Listener, src: tuple[str, int], connection: object | None = None
    ) -> Outcome:
        """`handle` without the safety net (tests use it to see that no input reaches the net)."""
        if data[:1] in (b"\r", b"\n"):
            # RFC 3261 7.5: ignore CRLFs before the start line; on their own they are keep-alives.
            data = data.lstrip(b"\r\n")
            if not data:
                return drop("keepalive")
        if data[:4] == b"SIP/":
            scan_response = self._scan_response
            if scan_response is not None:
                scanned = scan_response(data)
                if scanned is not None:
                    done = scanned_path.response(self.state, scanned)
                    if done is not None:
                        return done
        else:
            scan_request = self._scan_request
            if scan_request is not None:
                found = scan_request(data, normalize_host(src[0]), src[1])
                if found is not None:
                    done = scanned_path.request(self.state, data, found, listener, src, connection)
                    if done is not None:
                        return done
        try:
            msg = parse_message(data)
        except ParseError:
            return drop("parse_error")
        if msg.is_request:
            return general_path.request(self.state, msg, listener, src, connection)
        return general_path.response(self.state, msg)
