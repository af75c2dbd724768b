"""Ids for stream connections, so that our Via can name the connection a response must go back on."""

from __future__ import annotations

import weakref
from typing import Any, Protocol


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
