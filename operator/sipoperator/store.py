"""The proxy database: the OpenSIPS `sockets` rows and which SipSocket owns which row.

Ownership lives in a side table (`sipsockets_owners`: sockets.id -> namespace/name/uid/generation) that
OpenSIPS never reads. A row and its ownership are always written in one transaction, and a row without an
owner entry is never changed or deleted. So is the row's placement (free bind, the nodes that serve it) in the
proxy's side table `sipsockets_socket_options`, which only SipSockets that need it have an entry in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from sipoperator.placement import SocketOptions
from sipoperator.spec import Row, same_row
from sipproxy.shared.db_url import to_sqlalchemy_url
from sipproxy.shared.schema import init_db, options_table, sockets_table

OWNERS_TABLE = "sipsockets_owners"
log = logging.getLogger(__name__)
T = TypeVar("T")
NO_OPTIONS = SocketOptions()


class DatabaseUnavailable(Exception):
    """The database could not be reached or refused the statement; the message says why."""


@dataclass(frozen=True)
class TableRow:
    id: int
    socket: str | None
    advertised: str | None
    tag: str | None
    flags: str | None
    tos: str | None
    owner_uid: str | None = None
    owner_namespace: str | None = None
    owner_name: str | None = None
    freebind: bool = False  # the placement side table
    nodes: str | None = None
    node_advertised: str | None = None

    @property
    def options(self) -> SocketOptions:
        return SocketOptions(self.freebind, self.nodes, self.node_advertised)

    def columns(self) -> dict[str, Any]:
        return {
            "socket": self.socket,
            "advertised": self.advertised,
            "tag": self.tag,
            "flags": self.flags,
            "tos": self.tos,
        }


@dataclass(frozen=True)
class Written:
    row_id: int
    changed: bool  # False: the row was already exactly as wanted


def owners_table(metadata: MetaData) -> Table:
    return Table(
        OWNERS_TABLE,
        metadata,
        Column("socket_id", Integer, primary_key=True, autoincrement=False),
        Column("uid", String(64), nullable=False, unique=True),
        Column("namespace", String(253), nullable=False),
        Column("name", String(253), nullable=False),
        Column("generation", BigInteger, nullable=False, default=0),
    )


class Store:
    def __init__(self, db_url: str, table_name: str = "sockets", timeout: float = 10.0) -> None:
        url = to_sqlalchemy_url(db_url)
        connect_args: dict[str, Any] = {}
        if url.startswith("postgresql+asyncpg"):
            connect_args["timeout"] = timeout
        elif url.startswith("mysql+aiomysql"):
            connect_args["connect_timeout"] = timeout
        # NullPool: a connection killed by a database restart must not fail the next statement.
        self.engine: AsyncEngine = create_async_engine(url, poolclass=NullPool, connect_args=connect_args)
        self.table_name = table_name
        self.timeout = timeout
        metadata = MetaData()
        self.sockets = sockets_table(metadata, table_name)
        self.owners = owners_table(metadata)
        self.options = options_table(metadata)
        self._schema_ready = False

    async def close(self) -> None:
        await self.engine.dispose()

    async def _guard(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await asyncio.wait_for(fn(), self.timeout)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise DatabaseUnavailable(f"{what}: {detail[0] if detail else type(exc).__name__}") from exc

    async def ensure_schema(self) -> None:
        if self._schema_ready:
            return

        async def run() -> None:
            await init_db(self.engine, self.table_name)
            async with self.engine.begin() as conn:
                await conn.run_sync(lambda sync: self.owners.create(sync, checkfirst=True))

        await self._guard("creating the tables", run)
        self._schema_ready = True

    async def snapshot(self) -> list[TableRow]:
        """Every row of the sockets table with its owner, if any."""
        await self.ensure_schema()
        s, o, p = self.sockets, self.owners, self.options
        columns = (s.c.id, s.c.socket, s.c.advertised, s.c.tag, s.c.flags, s.c.tos)
        owner = (o.c.uid, o.c.namespace, o.c.name)
        joined = s.outerjoin(o, o.c.socket_id == s.c.id).outerjoin(p, p.c.socket_id == s.c.id)
        query = select(*columns, *owner, p.c.freebind, p.c.nodes, p.c.advertised).select_from(joined)

        async def run() -> list[TableRow]:
            async with self.engine.connect() as conn:
                result = await conn.execute(query)
                return [_table_row(r) for r in result]

        return await self._guard("reading the sockets table", run)

    async def owner_uids(self) -> dict[str, tuple[int, str, str]]:
        """uid -> (socket_id, namespace, name) for every owner entry, dangling ones included."""
        await self.ensure_schema()
        o = self.owners

        async def run() -> dict[str, tuple[int, str, str]]:
            async with self.engine.connect() as conn:
                result = await conn.execute(select(o.c.uid, o.c.socket_id, o.c.namespace, o.c.name))
                return {r[0]: (int(r[1]), r[2], r[3]) for r in result}

        return await self._guard("reading the owners table", run)

    async def write(
        self,
        uid: str,
        namespace: str,
        name: str,
        generation: int,
        row: Row,
        options: SocketOptions = NO_OPTIONS,
    ) -> Written:
        """Make the row owned by `uid` exactly `row`, placed as `options`: insert, repair (edited or deleted
        by hand) or keep."""
        await self.ensure_schema()

        async def run() -> Written:
            async with self.engine.begin() as conn:
                written = await self._write(conn, uid, namespace, name, generation, row)
                placed = await self._write_options(conn, written.row_id, options)
                return Written(written.row_id, written.changed or placed)

        return await self._guard("writing the socket row", run)

    async def _write(
        self, conn: AsyncConnection, uid: str, namespace: str, name: str, generation: int, row: Row
    ) -> Written:
        s, o = self.sockets, self.owners
        owner = (await conn.execute(select(o.c.socket_id).where(o.c.uid == uid))).first()
        if owner is not None:
            socket_id = int(owner[0])
            current = (
                await conn.execute(
                    select(s.c.socket, s.c.advertised, s.c.tag, s.c.flags, s.c.tos).where(s.c.id == socket_id)
                )
            ).first()
            if current is not None:
                if same_row(dict(current._mapping), row):
                    await conn.execute(
                        update(o)
                        .where(o.c.uid == uid)
                        .values(namespace=namespace, name=name, generation=generation)
                    )
                    return Written(socket_id, changed=False)
                await conn.execute(update(s).where(s.c.id == socket_id).values(**row.as_dict()))
                await conn.execute(update(o).where(o.c.uid == uid).values(generation=generation))
                return Written(socket_id, changed=True)
            # Our row was deleted behind our back: drop the dangling entry and insert anew.
            await conn.execute(delete(o).where(o.c.uid == uid))
        result = await conn.execute(insert(s).values(**row.as_dict()))
        new_id = result.inserted_primary_key
        if new_id is None or new_id[0] is None:  # pragma: no cover - every supported dialect returns it
            raise DatabaseUnavailable("the database did not return the new row's id")
        socket_id = int(new_id[0])
        await conn.execute(
            insert(o).values(
                socket_id=socket_id, uid=uid, namespace=namespace, name=name, generation=generation
            )
        )
        return Written(socket_id, changed=True)

    async def _write_options(self, conn: AsyncConnection, socket_id: int, options: SocketOptions) -> bool:
        """The row's placement entry as `options` (none for the default); True when it changed."""
        p = self.options
        query = select(p.c.freebind, p.c.nodes, p.c.advertised).where(p.c.socket_id == socket_id)
        current = (await conn.execute(query)).first()
        if (
            current is not None
            and SocketOptions(bool(current[0]), _clean(current[1]), _clean(current[2])) == options
        ):
            return False
        if current is not None:
            await conn.execute(delete(p).where(p.c.socket_id == socket_id))
        if not options.default:
            values = {
                "socket_id": socket_id,
                "freebind": int(options.freebind),
                "nodes": options.nodes,
                "advertised": options.advertised,
            }
            await conn.execute(insert(p).values(**values))
        return current is not None or not options.default

    async def remove(self, uid: str) -> bool:
        """Delete the row owned by `uid` and its owner entry; True when something was deleted."""
        await self.ensure_schema()
        s, o = self.sockets, self.owners

        async def run() -> bool:
            async with self.engine.begin() as conn:
                owner = (await conn.execute(select(o.c.socket_id).where(o.c.uid == uid))).first()
                if owner is None:
                    return False
                await conn.execute(delete(s).where(s.c.id == int(owner[0])))
                await conn.execute(delete(self.options).where(self.options.c.socket_id == int(owner[0])))
                await conn.execute(delete(o).where(o.c.uid == uid))
                return True

        return await self._guard("deleting the socket row", run)


def _table_row(r: Any) -> TableRow:
    c = [_clean(v) for v in r]
    return TableRow(r[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], bool(c[9]), c[10], c[11])


def _clean(value: Any) -> Any:
    # CHAR columns come back blank-padded from some dialects.
    return value.rstrip() if isinstance(value, str) else value
