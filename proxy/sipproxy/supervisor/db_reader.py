"""Reading the sockets table as OpenSIPS does: five columns, no WHERE, no ORDER BY."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from sqlalchemy import MetaData, Select, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sipproxy.shared.db_url import to_sqlalchemy_url
from sipproxy.shared.schema import sockets_table


@dataclass(frozen=True)
class Row:
    socket: str | None
    advertised: str | None
    tag: str | None
    flags: str | None
    tos: str | None


def make_engine(db_url: str) -> AsyncEngine:
    # One connection kept between reloads (opening one costs more than reading a thousand rows: for SQLite
    # a new thread, for a server a handshake), checked before each use so that one a database restart
    # killed is replaced instead of failing the reload.
    return create_async_engine(
        to_sqlalchemy_url(db_url), pool_size=1, max_overflow=4, pool_pre_ping=True, pool_recycle=600
    )


@functools.lru_cache(maxsize=8)
def _query(table_name: str) -> Select[tuple[str | None, str | None, str | None, str | None, str | None]]:
    """One statement per table name for the life of the process. A new Table per reload was a new entry of
    SQLAlchemy's compiled-statement cache each time: compiled anew, and about 45 KB more memory per reload
    until the cache's 500 entries were full (docs/reliability.md, the soak)."""
    table = sockets_table(MetaData(), table_name)
    return select(table.c.socket, table.c.advertised, table.c.tag, table.c.flags, table.c.tos)


async def read_rows(engine: AsyncEngine, table_name: str = "sockets") -> list[Row]:
    async with engine.connect() as conn:
        result = await conn.execute(_query(table_name))
        return [Row(*(None if v is None else str(v) for v in r)) for r in result]
