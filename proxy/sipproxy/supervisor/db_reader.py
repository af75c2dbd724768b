"""Reading the sockets table as OpenSIPS does (five columns, no WHERE, no ORDER BY), with the placement of
each row from our side table when the database has it (`sipsockets_socket_options`, shared/placement.py)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import MetaData, Select, inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sipproxy.shared.db_url import to_sqlalchemy_url
from sipproxy.shared.schema import OPTIONS_TABLE, options_table, sockets_table


@dataclass(frozen=True)
class Row:
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


async def read_rows(engine: AsyncEngine, table_name: str = "sockets") -> list[Row]:
    plain, joined = _queries(table_name)
    async with engine.connect() as conn:
        # Asked at every reload: the operator creates the side table after the proxies may have started
        # (a database made by OpenSIPS' tools has none), and one catalog lookup costs less than the read.
        if await conn.run_sync(_has_options):
            result = await conn.execute(joined)
            return [
                Row(
                    _text(r[0]),
                    _text(r[1]),
                    _text(r[2]),
                    _text(r[3]),
                    _text(r[4]),
                    freebind=bool(r[5]),
                    nodes=_text(r[6]),
                    node_advertised=_text(r[7]),
                )
                for r in result
            ]
        result = await conn.execute(plain)
        return [Row(_text(r[0]), _text(r[1]), _text(r[2]), _text(r[3]), _text(r[4])) for r in result]


def _text(value: object) -> str | None:
    return None if value is None else str(value)
