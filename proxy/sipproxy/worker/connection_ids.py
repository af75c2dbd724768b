"""Connection ids unique across workers, so that a response can find the worker owning its connection."""

from __future__ import annotations

# Connection ids carry their owner: (worker index + 1) << CONN_ID_BITS, plus a per-worker counter.
CONN_ID_BITS = 20


class WorkerConnectionIds:
    """Connection ids unique across workers (the engine's `connections`).

    A response to a request that came over TCP may arrive at another process (on a shared UDP socket).
    Its Via names the connection id; the id tells which worker owns the connection, so the message is
    relayed there instead of being answered over a new connection."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._conn_base = (index + 1) << CONN_ID_BITS
        self._conn_count = 0
        self._conns: dict[int, object] = {}
        self._conn_ids: dict[int, int] = {}
        # Set by a lookup of a connection another worker owns; the worker reads and clears it after the engine
        # has run (see worker.Worker.deliver).
        self.relay_to: int | None = None

    def register(self, conn: object) -> int:
        cid = self._conn_ids.get(id(conn))
        if cid is None:
            self._conn_count = self._conn_count % ((1 << CONN_ID_BITS) - 1) + 1
            cid = self._conn_base + self._conn_count
            self._conn_ids[id(conn)] = cid
            self._conns[cid] = conn
        return cid

    def forget(self, conn: object) -> None:
        cid = self._conn_ids.pop(id(conn), None)
        if cid is not None:
            self._conns.pop(cid, None)

    def lookup(self, cid: int) -> object | None:
        conn = self._conns.get(cid)
        if conn is None:
            owner = (cid >> CONN_ID_BITS) - 1
            if owner >= 0 and owner != self.index:
                self.relay_to = owner
        return conn
