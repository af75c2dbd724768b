"""Reading the sockets table as OpenSIPS does: five columns, no WHERE, no ORDER BY."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

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
    # NullPool: a reload is rare, and a pooled connection killed by a DB restart would fail the next one.
    return create_async_engine(to_sqlalchemy_url(db_url), poolclass=NullPool)


async def read_rows(engine: AsyncEngine, table_name: str = "sockets") -> list[Row]:
    table = sockets_table(MetaData(), table_name)
    query = select(table.c.socket, table.c.advertised, table.c.tag, table.c.flags, table.c.tos)
    async with engine.connect() as conn:
        result = await conn.execute(query)
        return [Row(*(None if v is None else str(v) for v in r)) for r in result]
