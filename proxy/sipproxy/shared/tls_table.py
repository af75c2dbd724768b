"""The OpenSIPS 3.6 `tls_mgm` table in database mode: its definition with each dialect's types (table
version TLS_MGM_TABLE_VERSION, row `('tls_mgm', 3)` in `version`); `init_tls_mgm` creates it and its version
row when missing, never altering anything; `read_domains` reads every row into `TlsDomain`s
(`tls_domains.parse_domains`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    CHAR,
    VARCHAR,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    UniqueConstraint,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import TypeDecorator, TypeEngine

from sipproxy.shared.schema import version_table
from sipproxy.shared.tls_domains import TlsDomain, TlsDomainError, parse_domains

TLS_MGM_TABLE_VERSION = 3
_MYSQL = ("mysql", "mariadb")


def _text(length: int) -> CHAR:
    # OpenSIPS: CHAR on MySQL and SQLite, VARCHAR on PostgreSQL (as the sockets table in db/schema.py).
    return CHAR(length).with_variant(VARCHAR(length), "postgresql")


def _int1() -> Integer:
    return Integer().with_variant(mysql.INTEGER(display_width=1), *_MYSQL)


class Pem(TypeDecorator[bytes]):
    """PEM (ASCII text) in a binary column: BLOB on MySQL and SQLite, BYTEA on PostgreSQL, MEDIUMBLOB on
    MySQL for a CA list (bundles are big). Takes bytes or str, gives bytes.

    On MySQL and MariaDB the value is sent as text: aiomysql 0.3.2 cannot send a bytes parameter with
    PyMySQL 1.2.3 or later (aio-libs/aiomysql#1080, TypeError "'str' object is not callable"), and PEM
    being ASCII, the column receives the same bytes either way."""

    impl = LargeBinary
    cache_ok = True

    def __init__(self, medium: bool = False) -> None:
        super().__init__()
        self.medium = medium

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in _MYSQL:
            return dialect.type_descriptor(mysql.MEDIUMBLOB() if self.medium else mysql.BLOB())
        return dialect.type_descriptor(LargeBinary())

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name in _MYSQL:
            return _pem_text
        inner = self.load_dialect_impl(dialect).bind_processor(dialect)

        def process(value: Any) -> Any:
            data = _pem_bytes(value)
            return inner(data) if inner is not None else data

        return process


def _pem_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    return value.encode("ascii") if isinstance(value, str) else bytes(value)


def _pem_text(value: Any) -> str | None:
    data = _pem_bytes(value)
    return None if data is None else data.decode("ascii")


def tls_mgm_table(metadata: MetaData, name: str = "tls_mgm") -> Table:
    return Table(
        name,
        metadata,
        Column(
            "id",
            Integer().with_variant(mysql.INTEGER(display_width=10, unsigned=True), *_MYSQL),
            primary_key=True,
            autoincrement=True,
        ),
        Column("domain", _text(64), nullable=False),
        Column("match_ip_address", _text(255), nullable=True, server_default=text("NULL")),
        Column("match_sip_domain", _text(255), nullable=True, server_default=text("NULL")),
        Column("type", _int1(), nullable=False, server_default=text("1")),
        Column("method", _text(16), nullable=True, server_default=text("'SSLv23'")),
        Column("verify_cert", _int1(), nullable=True, server_default=text("1")),
        Column("require_cert", _int1(), nullable=True, server_default=text("1")),
        Column("certificate", Pem(), nullable=True),
        Column("private_key", Pem(), nullable=True),
        Column("crl_check_all", _int1(), nullable=True, server_default=text("0")),
        Column("crl_dir", _text(255), nullable=True, server_default=text("NULL")),
        Column("ca_list", Pem(medium=True), nullable=True, server_default=text("NULL")),
        Column("ca_dir", _text(255), nullable=True, server_default=text("NULL")),
        Column("cipher_list", _text(255), nullable=True, server_default=text("NULL")),
        Column("dh_params", Pem(), nullable=True, server_default=text("NULL")),
        Column("ec_curve", _text(255), nullable=True, server_default=text("NULL")),
        UniqueConstraint("domain", "type", name=f"{name}_domain_type_idx"),
        sqlite_autoincrement=True,
    )


async def init_tls_mgm(engine: AsyncEngine, table_name: str = "tls_mgm") -> bool:
    """Create the tls_mgm table, the version table and the ('<table>', 3) row when missing.

    Never alters anything that exists. Returns True when it created or inserted something."""
    metadata = MetaData()
    table = tls_mgm_table(metadata, table_name)
    version = version_table(metadata)

    def _create(conn: Connection) -> bool:
        existing = set(inspect(conn).get_table_names())
        created = False
        for t in (table, version):
            if t.name not in existing:
                t.create(conn)
                created = True
        row = conn.execute(select(version.c.table_version).where(version.c.table_name == table_name)).first()
        if row is None:
            conn.execute(insert(version).values(table_name=table_name, table_version=TLS_MGM_TABLE_VERSION))
            created = True
        return created

    async with engine.begin() as conn:
        return await conn.run_sync(_create)


async def read_domains(
    engine: AsyncEngine, table_name: str = "tls_mgm"
) -> tuple[list[TlsDomain], list[TlsDomainError]]:
    """Every row of the table, parsed (see parse_domains), in id order."""
    table = tls_mgm_table(MetaData(), table_name)
    async with engine.connect() as conn:
        result = await conn.execute(select(table).order_by(table.c.id))
        rows = [dict(row) for row in result.mappings()]
    return parse_domains(rows)
