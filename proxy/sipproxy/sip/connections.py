"""Ids for stream connections, so that our Via can name the connection a response must go back on, and
what the engine reads of a connection.

A stream connection the runtime hands the engine is any object; the engine reads two attributes of it when
it has them: `peer`, the (IP, port) of the other end, and `listener`, the local socket it belongs to (a
`Listener`). Flow tokens (flowtoken.py) are bound to the peer, so that an id reused by a newer connection
never lets an older token reach it; a connection without a `peer` is never reached by a token."""

from __future__ import annotations

import weakref
from typing import Any, Protocol

from sipproxy.sip.listeners import Listener


class ConnectionIds(Protocol):
    """What the engine needs of an id registry; the runtime passes its own (ids unique across workers)."""

    def register(self, conn: object) -> int:
        """The id of `conn`, given on first sight; idempotent."""
        ...

    def forget(self, conn: object) -> None:
        """The connection closed: its id maps to nothing any more."""
        ...

    def lookup(self, cid: int) -> object | None: ...


class LocalConnectionIds:
    """Ids of one process, held weakly: a connection that is gone cannot be kept alive by its id."""

    def __init__(self) -> None:
        self._conn_by_id: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._id_by_conn: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        # Connections that cannot be weakly referenced are held strongly until forget.
        self._strong_by_id: dict[int, object] = {}
        self._strong_ids: dict[int, int] = {}
        self._next_id = 1

    def register(self, conn: object) -> int:
        try:
            cid = self._id_by_conn.get(conn)
            if cid is not None:
                return cid
            cid = self._next_id
            self._next_id += 1
            self._conn_by_id[cid] = conn
            self._id_by_conn[conn] = cid
            return cid
        except TypeError:
            cid = self._strong_ids.get(id(conn))
            if cid is not None:
                return cid
            cid = self._next_id
            self._next_id += 1
            self._strong_by_id[cid] = conn
            self._strong_ids[id(conn)] = cid
            return cid

    def forget(self, conn: object) -> None:
        try:
            cid = self._id_by_conn.pop(conn, None)
        except TypeError:
            cid = self._strong_ids.pop(id(conn), None)
            if cid is not None:
                self._strong_by_id.pop(cid, None)
            return
        if cid is not None:
            self._conn_by_id.pop(cid, None)

    def lookup(self, cid: int) -> object | None:
        conn = self._conn_by_id.get(cid)
        return conn if conn is not None else self._strong_by_id.get(cid)


def peer_of(conn: object) -> tuple[str, int] | None:
    """The (IP, port) at the other end of a stream connection, None when it does not say."""
    peer = getattr(conn, "peer", None)
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        port = peer[1]
        if isinstance(host, str) and isinstance(port, int) and host:
            return host, port
    return None


def listener_of(conn: object) -> Listener | None:
    """The local socket a stream connection belongs to, None when it does not say."""
    listener = getattr(conn, "listener", None)
    return listener if isinstance(listener, Listener) else None
