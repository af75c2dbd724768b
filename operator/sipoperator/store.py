"""The proxy database: the OpenSIPS `sockets` rows, the `tls_mgm` server domains of TLS sockets, and which
SipSocket owns which row.

Ownership lives in side tables that OpenSIPS never reads (`sipsockets_owners`: sockets.id ->
namespace/name/uid/generation; `sipsockets_tls_owners`: tls_mgm.id -> namespace/name/uid). A SipSocket's
socket row, its domain row and their ownership are always written in one transaction, and a row without an
owner entry is never changed or deleted. So is the row's placement (free bind, the nodes that serve it) in the
proxy's side table `sipsockets_socket_options`, which only SipSockets that need it have an entry in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from sipoperator.domains import DomainRow
from sipoperator.lease import UNFENCED, Fence, NotLeader
from sipoperator.placement import SocketOptions
from sipoperator.spec import Row, same_row
from sipproxy.shared.db_url import to_sqlalchemy_url
from sipproxy.shared.schema import init_db, options_table, sockets_table
from sipproxy.shared.tls_domains import SERVER_DOMAIN
from sipproxy.shared.tls_table import init_tls_mgm, tls_mgm_table

OWNERS_TABLE = "sipsockets_owners"
TLS_OWNERS_TABLE = "sipsockets_tls_owners"
TLS_TABLE = "tls_mgm"
log = logging.getLogger(__name__)
T = TypeVar("T")
NO_OPTIONS = SocketOptions()


class DatabaseUnavailable(Exception):
    """The database could not be reached or refused the statement; the message says why."""

    reason = "DatabaseUnavailable"


class DomainTaken(DatabaseUnavailable):
    """tls_mgm has a server domain of the name this SipSocket's domain needs, not owned by the operator."""

    reason = "DomainConflict"


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
class DomainOwner:
    """An owner entry of a tls_mgm row (no certificate: cheap to read with the sockets table)."""

    domain_id: int
    owner_uid: str
    owner_namespace: str
    owner_name: str


@dataclass(frozen=True)
class Written:
    row_id: int
    changed: bool  # False: the row was already exactly as wanted
    domain_changed: bool = False  # the domain row was inserted, changed or removed
    domain_id: int | None = None  # the tls_mgm row's id, when there is one


@dataclass(frozen=True)
class Removed:
    """What `remove` deleted; true when anything was."""

    socket: bool
    domain: bool

    def __bool__(self) -> bool:
        return self.socket or self.domain


@dataclass(frozen=True)
class WriteOp:
    """`Store.write`'s arguments, for `Store.apply`."""

    uid: str
    namespace: str
    name: str
    generation: int
    row: Row
    domain: DomainRow | None = None
    options: SocketOptions = NO_OPTIONS


@dataclass(frozen=True)
class RemoveOp:
    """`Store.remove`'s argument, for `Store.apply`."""

    uid: str


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


def tls_owners_table(metadata: MetaData) -> Table:
    return Table(
        TLS_OWNERS_TABLE,
        metadata,
        Column("domain_id", Integer, primary_key=True, autoincrement=False),
        Column("uid", String(64), nullable=False, unique=True),
        Column("namespace", String(253), nullable=False),
        Column("name", String(253), nullable=False),
    )


class Store:
    def __init__(
        self, db_url: str, table_name: str = "sockets", timeout: float = 10.0, tls_table_name: str = TLS_TABLE
    ) -> None:
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
        self.tls_table_name = tls_table_name
        self.tls = tls_mgm_table(metadata, tls_table_name)
        self.tls_owners = tls_owners_table(metadata)
        self._schema_ready = False
        # Asked before every write (the leader's Lease, election.py): a write starts only while this replica
        # leads, and is abandoned (its transaction never committed) when the Lease could pass to another.
        self.fence: Fence = UNFENCED

    async def close(self) -> None:
        await self.engine.dispose()

    async def _guard(self, what: str, fn: Callable[[], Awaitable[T]], write: bool = False) -> T:
        timeout = self.timeout
        fenced = False
        if write:
            budget = self.fence.budget()  # raises NotLeader: nothing is sent
            fenced = budget < timeout
            timeout = min(timeout, budget)
        try:
            return await asyncio.wait_for(fn(), timeout)
        except TimeoutError as exc:
            if fenced:
                raise NotLeader(f"{what}: abandoned, the Lease may pass to another replica now") from exc
            raise DatabaseUnavailable(f"{what}: TimeoutError") from exc
        except (SQLAlchemyError, OSError) as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise DatabaseUnavailable(f"{what}: {detail[0] if detail else type(exc).__name__}") from exc

    async def ensure_schema(self) -> None:
        if self._schema_ready:
            return

        async def run() -> None:
            await init_db(self.engine, self.table_name)
            await init_tls_mgm(self.engine, self.tls_table_name)
            async with self.engine.begin() as conn:
                await conn.run_sync(lambda sync: self.owners.create(sync, checkfirst=True))
                await conn.run_sync(lambda sync: self.tls_owners.create(sync, checkfirst=True))

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

    async def domain_owners(self) -> list[DomainOwner]:
        """The owner entries of tls_mgm rows (whose rows exist)."""
        await self.ensure_schema()
        t, o = self.tls, self.tls_owners
        query = select(o.c.domain_id, o.c.uid, o.c.namespace, o.c.name).select_from(
            o.join(t, t.c.id == o.c.domain_id)
        )

        async def run() -> list[DomainOwner]:
            async with self.engine.connect() as conn:
                result = await conn.execute(query)
                return [DomainOwner(int(r[0]), r[1], r[2], r[3]) for r in result]

        return await self._guard("reading the tls_mgm owners", run)

    async def domain_of(self, uid: str) -> DomainRow | None:
        """The tls_mgm row `uid` owns, if any."""
        await self.ensure_schema()
        t, o = self.tls, self.tls_owners
        query = select(t).select_from(t.join(o, o.c.domain_id == t.c.id)).where(o.c.uid == uid)

        async def run() -> DomainRow | None:
            async with self.engine.connect() as conn:
                found = (await conn.execute(query)).mappings().first()
                return DomainRow.from_columns(dict(found)) if found is not None else None

        return await self._guard("reading the tls_mgm row", run)

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
        domain: DomainRow | None = None,
        options: SocketOptions = NO_OPTIONS,
    ) -> Written:
        """Make the row owned by `uid` exactly `row`, placed as `options`, and its tls_mgm row exactly
        `domain` (None: no domain row), in one transaction: insert, repair (edited or deleted by hand) or
        keep."""
        [written] = await self.apply([WriteOp(uid, namespace, name, generation, row, domain, options)])
        assert isinstance(written, Written)
        return written

    async def apply(self, ops: Sequence[WriteOp | RemoveOp]) -> list[Written | Removed]:
        """`write` and `remove` for many SipSockets, in order, in ONE transaction: all of it or none (a
        thousand passes at start-up cost one commit, not a thousand). The answers in the order of `ops`."""
        await self.ensure_schema()

        async def run() -> list[Written | Removed]:
            out: list[Written | Removed] = []
            async with self.engine.begin() as conn:
                for op in ops:
                    out.append(
                        await self._remove_in(conn, op.uid)
                        if isinstance(op, RemoveOp)
                        else await self._write_in(conn, op)
                    )
            return out

        if len(ops) == 1:
            what = "deleting the socket row" if isinstance(ops[0], RemoveOp) else "writing the socket row"
        else:
            what = f"writing {len(ops)} socket rows"
        return await self._guard(what, run, write=True)

    async def _write_in(self, conn: AsyncConnection, op: WriteOp) -> Written:
        written = await self._write(conn, op.uid, op.namespace, op.name, op.generation, op.row)
        placed = await self._write_options(conn, written.row_id, op.options)
        domain_changed, domain_id = await self._write_domain(conn, op.uid, op.namespace, op.name, op.domain)
        return Written(written.row_id, written.changed or placed, domain_changed, domain_id)

    async def _write_domain(
        self, conn: AsyncConnection, uid: str, namespace: str, name: str, domain: DomainRow | None
    ) -> tuple[bool, int | None]:
        """(changed, the row's id)."""
        t, o = self.tls, self.tls_owners
        owner = (await conn.execute(select(o.c.domain_id).where(o.c.uid == uid))).first()
        if domain is None:
            if owner is None:
                return False, None
            await conn.execute(delete(t).where(t.c.id == int(owner[0])))
            await conn.execute(delete(o).where(o.c.uid == uid))
            return True, None
        columns = domain.columns()
        if owner is not None:
            domain_id = int(owner[0])
            current = (await conn.execute(select(t).where(t.c.id == domain_id))).mappings().first()
            if current is not None:
                await conn.execute(update(o).where(o.c.uid == uid).values(namespace=namespace, name=name))
                if _same_columns(current, columns):
                    return False, domain_id
                await conn.execute(update(t).where(t.c.id == domain_id).values(**columns))
                return True, domain_id
            await conn.execute(delete(o).where(o.c.uid == uid))  # deleted behind our back: insert anew
        clash = (
            await conn.execute(select(t.c.id).where(t.c.domain == domain.domain, t.c.type == SERVER_DOMAIN))
        ).first()
        if clash is not None:
            clash_id = int(clash[0])
            holder = (await conn.execute(select(o.c.uid).where(o.c.domain_id == clash_id))).first()
            if holder is None:
                raise DomainTaken(
                    f"{self.tls_table_name} already has server domain {domain.domain!r} (id {clash_id}), "
                    "which the operator does not own; rename or delete that row"
                )
            # The row of an earlier SipSocket of this name (deleted and recreated): ours now.
            await conn.execute(delete(o).where(o.c.domain_id == clash_id))
            await conn.execute(update(t).where(t.c.id == clash_id).values(**columns))
            domain_id = clash_id
        else:
            result = await conn.execute(insert(t).values(**columns))
            new_id = result.inserted_primary_key
            if new_id is None or new_id[0] is None:  # pragma: no cover - every supported dialect returns it
                raise DatabaseUnavailable("the database did not return the new tls_mgm row's id")
            domain_id = int(new_id[0])
        await conn.execute(insert(o).values(domain_id=domain_id, uid=uid, namespace=namespace, name=name))
        return True, domain_id

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

    async def remove(self, uid: str) -> Removed:
        """Delete the socket row and the tls_mgm row owned by `uid` and their owner entries, in one
        transaction; the answer is true when something was deleted."""
        [removed] = await self.apply([RemoveOp(uid)])
        assert isinstance(removed, Removed)
        return removed

    async def _remove_in(self, conn: AsyncConnection, uid: str) -> Removed:
        s, o = self.sockets, self.owners
        domain, _ = await self._write_domain(conn, uid, "", "", None)
        owner = (await conn.execute(select(o.c.socket_id).where(o.c.uid == uid))).first()
        if owner is None:
            return Removed(socket=False, domain=domain)
        await conn.execute(delete(s).where(s.c.id == int(owner[0])))
        await conn.execute(delete(self.options).where(self.options.c.socket_id == int(owner[0])))
        await conn.execute(delete(o).where(o.c.uid == uid))
        return Removed(socket=True, domain=domain)


def _same_columns(current: Any, wanted: dict[str, Any]) -> bool:
    return all(_norm(current[key]) == _norm(value) for key, value in wanted.items())


def _norm(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value)
        return value if value.strip() else None
    if isinstance(value, str):
        return value.strip() or None
    return value


def _table_row(r: Any) -> TableRow:
    c = [_clean(v) for v in r]
    return TableRow(r[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], bool(c[9]), c[10], c[11])


def _clean(value: Any) -> Any:
    # CHAR columns come back blank-padded from some dialects.
    return value.rstrip() if isinstance(value, str) else value
