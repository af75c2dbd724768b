"""What the stateless proxy decides every message by: the routing rules, a snapshot of the listeners, the
stream connection ids and the Record-Route setting.

Both paths (scanned_path.py, general_path.py) and forwarding.py read it; the engine (engine.py) owns it and
hands each message to a path. It lives apart from the engine so that the paths need not import the engine
that imports them."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sipproxy.sip.connections import ConnectionIds, LocalConnectionIds
from sipproxy.sip.listeners import Listener, ListenerIndex, ListenerView
from sipproxy.sip.routing import Route

# How often a lookup miss may trigger a rebuild of the listener snapshot (a stray packet must not cost
# a rebuild each time).
_REFRESH_INTERVAL = 1.0


# Compiled with mypyc (setup.py), like the engine: not meant to be subclassed.
class EngineState:
    def __init__(
        self,
        routes: Sequence[Route],
        listeners: ListenerView,
        record_route: bool,
        connections: ConnectionIds | None,
    ) -> None:
        self.routes = list(routes)
        self.listeners = listeners
        self.record_route = record_route
        # The listeners both paths look sockets up in: built whole at start (and after a lookup miss, at most
        # once a second), kept current socket by socket in between.
        self.index = ListenerIndex(listeners.all())
        self._index_time = time.monotonic()
        self.connections: ConnectionIds = connections if connections is not None else LocalConnectionIds()

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
