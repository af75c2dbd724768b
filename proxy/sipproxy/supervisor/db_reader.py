"""Reading the sockets table as OpenSIPS does (five columns, no WHERE, no ORDER BY), with the placement of
each row from our side table when the database has it (`sipsockets_socket_options`, shared/placement.py)."""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from sqlalchemy import MetaData, Select, inspect, select
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sipproxy.shared.db_url import to_sqlalchemy_url
from sipproxy.shared.schema import OPTIONS_TABLE, options_table, sockets_table


class Row(NamedTuple):
    """A row as read. (A named tuple: hashed and compared in C, for the thousand rows of every reload.)"""

    socket: str | None
    advertised: str | None
    tag: str | None
    flags: str | None
    tos: str | None
    # From the side table; a row without an entry there: every node, no free bind.
    freebind: bool = False
    nodes: str | None = None
    node_advertised: str | None = None  # per node, replacing `advertised` on that node


def make_engine(db_url: str) -> AsyncEngine:
    # One connection kept between reloads (opening one costs more than reading a thousand rows: for SQLite
    # a new thread, for a server a handshake), checked before each use so that one a database restart
    # killed is replaced instead of failing the reload.
    return create_async_engine(
        to_sqlalchemy_url(db_url), pool_size=1, max_overflow=4, pool_pre_ping=True, pool_recycle=600
    )


@functools.lru_cache(maxsize=8)
def _queries(table_name: str) -> tuple[Select[Any], Select[Any]]:
    """The plain read and the read joined with the side table, built once per table name for the life of the
    process. A new Table per reload was a new entry of SQLAlchemy's compiled-statement cache each time:
    compiled anew, and about 45 KB more memory per reload until the cache's 500 entries were full
    (docs/reliability.md, the soak)."""
    metadata = MetaData()
    table = sockets_table(metadata, table_name)
    columns = (table.c.socket, table.c.advertised, table.c.tag, table.c.flags, table.c.tos)
    options = options_table(metadata)
    placed = (options.c.freebind, options.c.nodes, options.c.advertised)
    joined = select(*columns, *placed).select_from(
        table.outerjoin(options, options.c.socket_id == table.c.id)
    )
    return select(*columns), joined


def _has_options(conn: Connection) -> bool:
    return bool(inspect(conn).has_table(OPTIONS_TABLE))


class TableReader:
    """Reads the table for each reload. What a reload costs per row is kept small, since every row is read
    each time (OpenSIPS' table has nothing that says what changed): the rows come as plain tuples, and a row
    read before is not converted again but looked up (only the last read's rows are remembered). SQLite is
    read on a thread of the reader's own in one hop (`SqliteReads`); a database server through the engine."""

    def __init__(self, engine: AsyncEngine, table_name: str = "sockets") -> None:
        self.engine = engine
        self.table_name = table_name
        # Once the side table is seen it is used without asking again (one catalog lookup per reload while
        # it is missing: the operator creates it after the proxies may have started, and a database made by
        # OpenSIPS' tools has none). Should it go away, the joined read fails and the plain one is used.
        self._has_options = False
        self._rows: dict[tuple[Any, ...], Row] = {}
        database = engine.url.database
        self._sqlite = SqliteReads(database) if engine.dialect.name == "sqlite" and database else None

    async def read(self) -> list[Row]:
        if self._sqlite is not None:
            plain, joined = _sql(self.table_name, self.engine.dialect)
            raw, self._has_options = await self._sqlite.read(plain, joined, self._has_options)
        else:
            raw = await self._read_server()
        known = self._rows
        seen: dict[tuple[Any, ...], Row] = {}
        rows: list[Row] = []
        for values in raw:
            row = known.get(values)
            if row is None:
                row = seen.get(values) or _row(values)
            seen[values] = row
            rows.append(row)
        self._rows = seen
        return rows

    async def _read_server(self) -> list[tuple[Any, ...]]:
        plain, joined = _queries(self.table_name)
        async with self.engine.connect() as conn:
            if not self._has_options:
                self._has_options = await conn.run_sync(_has_options)
            if self._has_options:
                try:
                    return [tuple(r) for r in (await conn.execute(joined)).all()]
                except DBAPIError:
                    await conn.rollback()
                    if await conn.run_sync(_has_options):
                        raise
                    self._has_options = False
            return [(*r, None, None, None) for r in (await conn.execute(plain)).all()]

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()


@functools.lru_cache(maxsize=8)
def _sql(table_name: str, dialect: Dialect) -> tuple[str, str]:
    plain, joined = _queries(table_name)
    return str(plain.compile(dialect=dialect)), str(joined.compile(dialect=dialect))


class SqliteReads:
    """The SQLite table read with the standard library's driver on one thread of its own, with a connection
    of its own kept open: one hop to that thread per reload. (aiosqlite under the engine makes four hops, a
    pre-ping, the query, the fetch and the rollback, which together cost more than reading a thousand rows.)
    The file is looked at first: one replaced (a new inode) is opened anew, and one that does not exist is an
    error, not an empty database made in its place."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sockets-table")
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None

    async def read(self, plain: str, joined: str, has_options: bool) -> tuple[list[tuple[Any, ...]], bool]:
        """The rows (eight values each), and whether the side table was there."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._read, plain, joined, has_options)

    def _read(self, plain: str, joined: str, has_options: bool) -> tuple[list[tuple[Any, ...]], bool]:
        conn = self._connection()
        if has_options or self._has_options(conn):
            try:
                return conn.execute(joined).fetchall(), True
            except sqlite3.OperationalError:
                if self._has_options(conn):
                    raise
        return [(*r, None, None, None) for r in conn.execute(plain).fetchall()], False

    @staticmethod
    def _has_options(conn: sqlite3.Connection) -> bool:
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (OPTIONS_TABLE,)
        ).fetchone()
        return found is not None

    def _connection(self) -> sqlite3.Connection:
        stat = os.stat(self.path)
        inode = (stat.st_dev, stat.st_ino)
        if self._conn is None or inode != self._inode:
            if self._conn is not None:
                self._conn.close()
            self._conn = sqlite3.connect(self.path)
            self._inode = inode
        return self._conn

    def close(self) -> None:
        def close_connection() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._thread.submit(close_connection)
        self._thread.shutdown(wait=True)


def _row(values: tuple[Any, ...]) -> Row:
    socket, advertised, tag, flags, tos, freebind, nodes, node_advertised = values
    return Row(
        _text(socket),
        _text(advertised),
        _text(tag),
        _text(flags),
        _text(tos),
        freebind=bool(freebind),
        nodes=_text(nodes),
        node_advertised=_text(node_advertised),
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)
