"""The OpenSIPS 3.6 `sockets` and `version` tables, with the exact column types of each dialect, and our side
table of per-socket placement (`sipsockets_socket_options`, see placement.py), which OpenSIPS never reads."""

from __future__ import annotations

from sqlalchemy import (
    CHAR,
    VARCHAR,
    Column,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

SOCKETS_TABLE_VERSION = 1
OPTIONS_TABLE = "sipsockets_socket_options"
_MYSQL = ("mysql", "mariadb")


def _text(length: int) -> CHAR:
    # OpenSIPS: CHAR on MySQL and SQLite, VARCHAR on PostgreSQL.
    return CHAR(length).with_variant(VARCHAR(length), "postgresql")


def _unsigned_int() -> Integer:
    return Integer().with_variant(mysql.INTEGER(display_width=10, unsigned=True), *_MYSQL)


def sockets_table(metadata: MetaData, name: str = "sockets") -> Table:
    return Table(
        name,
        metadata,
        Column("id", _unsigned_int(), primary_key=True, autoincrement=True),
        Column("socket", _text(128), nullable=False),
        Column("advertised", _text(128), nullable=True, server_default=text("NULL")),
        Column("tag", _text(128), nullable=True, server_default=text("NULL")),
        Column("flags", _text(128), nullable=True, server_default=text("NULL")),
        Column("tos", _text(32), nullable=True, server_default=text("NULL")),
        sqlite_autoincrement=True,
    )


def options_table(metadata: MetaData, name: str = OPTIONS_TABLE) -> Table:
    """Per socket row (`socket_id` = sockets.id): bind with IP_FREEBIND, and the nodes that serve it (NULL:
    every node). A row with no entry here is served on every node without free bind, as OpenSIPS serves it."""
    return Table(
        name,
        metadata,
        Column("socket_id", Integer, primary_key=True, autoincrement=False),
        Column("freebind", SmallInteger, nullable=False, server_default=text("0")),
        Column("nodes", Text, nullable=True),
        Column("advertised", Text, nullable=True),  # node=host:port,... (placement.parse_node_advertised)
    )


def version_table(metadata: MetaData) -> Table:
    return Table(
        "version",
        metadata,
        Column("table_name", _text(32), nullable=False),
        Column("table_version", _unsigned_int(), nullable=False, server_default=text("0")),
        UniqueConstraint("table_name", name="version_t_name_idx"),
    )


async def init_db(engine: AsyncEngine, table_name: str = "sockets") -> bool:
    """Create the sockets table, the version table and its ('<table>', 1) row, and the options side table,
    when missing.

    Never alters anything that exists. Returns True when it created or inserted something."""
    metadata = MetaData()
    sockets = sockets_table(metadata, table_name)
    version = version_table(metadata)
    options = options_table(metadata)

    def _create(conn: Connection) -> bool:
        existing = set(inspect(conn).get_table_names())
        created = False
        for table in (sockets, version, options):
            if table.name not in existing:
                table.create(conn)
                created = True
        row = conn.execute(select(version.c.table_version).where(version.c.table_name == table_name)).first()
        if row is None:
            conn.execute(insert(version).values(table_name=table_name, table_version=SOCKETS_TABLE_VERSION))
            created = True
        return created

    async with engine.begin() as conn:
        return await conn.run_sync(_create)
