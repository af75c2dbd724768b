"""What the stateless proxy decides every message by: the routing rules, a snapshot of the listeners, the
stream connection ids and the flow tokens naming them, and the Record-Route setting.

Both paths (scanned_path.py, general_path.py) and forwarding.py read it; the engine (engine.py) owns it and
hands each message to a path. It lives apart from the engine so that the paths need not import the engine
that imports them."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sipproxy.sip.connections import ConnectionIds, LocalConnectionIds
from sipproxy.sip.flowtoken import make, new_key
from sipproxy.sip.listeners import Listener, ListenerIndex, ListenerView
from sipproxy.sip.routing import Route

# How often a lookup miss may trigger a rebuild of the listener snapshot (a stray packet must not cost
# a rebuild each time).
_REFRESH_INTERVAL = 1.0
# Flow tokens made, by (connection id, peer): one per connection, so a bound is only a guard against growth.
_TOKEN_CACHE_MAX = 1 << 16


# Compiled with mypyc (setup.py), like the engine: not meant to be subclassed.
class EngineState:
    def __init__(
        self,
        routes: Sequence[Route],
        listeners: ListenerView,
        record_route: bool,
        connections: ConnectionIds | None,
        flow_key: bytes | None = None,
    ) -> None:
        self.routes = list(routes)
        self.listeners = listeners
        self.record_route = record_route
        # The listeners both paths look sockets up in: built whole at start (and after a lookup miss, at most
        # once a second), kept current socket by socket in between.
        self.index = ListenerIndex(listeners.all())
        self._index_time = time.monotonic()
        self.connections: ConnectionIds = connections if connections is not None else LocalConnectionIds()
        # The key of our flow tokens (flowtoken.py): the runtime gives every worker of a proxy the same one;
        # without one, tokens are this engine's own.
        self.flow_key = flow_key if flow_key is not None else new_key()
        self._tokens: dict[tuple[int, str, int], bytes] = {}

    def listeners_changed(self) -> None:
        """Rebuild the listener snapshot now (call after sockets were added or removed)."""
        self.index = ListenerIndex(self.listeners.all())
        self._index_time = time.monotonic()

    def listener_added(self, listener: Listener) -> None:
        self.index.add(listener)

    def listener_removed(self, listener: Listener) -> None:
        self.index.remove(listener)

    def refresh_if_stale(self) -> bool:
        """Rebuild the listener snapshot after a lookup missed, at most once per interval; True if rebuilt."""
        now = time.monotonic()
        if now - self._index_time < _REFRESH_INTERVAL:
            return False
        self.index = ListenerIndex(self.listeners.all())
        self._index_time = now
        return True

    def connection(self, cid: int) -> object | None:
        return self.connections.lookup(cid)

    def flow_token(self, cid: int, peer: tuple[str, int]) -> bytes | None:
        """The flow token of connection `cid` to `peer` (made once, then remembered); None when the peer
        is not an IP address and port a token can name."""
        key = (cid, peer[0], peer[1])
        token = self._tokens.get(key)
        if token is None:
            try:
                token = make(self.flow_key, cid, peer)
            except ValueError:
                return None
            if len(self._tokens) >= _TOKEN_CACHE_MAX:
                self._tokens.clear()
            self._tokens[key] = token
        return token
