"""The OpenSIPS `tls_mgm` table on PostgreSQL and MariaDB servers: created by init_tls_mgm, written the way
OpenSIPS's own scripts write it (plain SQL, PEM as text, defaults left to the database), read back whole."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import MetaData, insert, text

from devenv.databases import MariaDBServer, PostgresServer
from sipproxy.shared.tls_domains import server_context
from sipproxy.shared.tls_table import init_tls_mgm, read_domains, tls_mgm_table
from sipproxy.supervisor.db_reader import make_engine
from tests.tlscerts import issue, make_ca

CA = make_ca()
LEAF = issue(CA, "sip.example.com", dns=["sip.example.com"])


@pytest.fixture(params=["postgres", "mariadb"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    server: PostgresServer | MariaDBServer = request.getfixturevalue(request.param)
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)


async def _round_trip(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert await init_tls_mgm(engine) is True
        assert await init_tls_mgm(engine) is False
        bundle = CA.cert_pem * 200  # a big CA bundle: MEDIUMBLOB on MariaDB, BYTEA on PostgreSQL
        async with engine.begin() as conn:
            version = (
                await conn.execute(text("SELECT table_version FROM version WHERE table_name = 'tls_mgm'"))
            ).one()
            assert tuple(version) == (3,)
            # PEM as SQL text literals, as OpenSIPS's scripts write rows (the test's PEM has no quote).
            await conn.execute(
                text(
                    "INSERT INTO tls_mgm (domain, match_ip_address, match_sip_domain, type, verify_cert, "
                    "require_cert, certificate, private_key) VALUES ('edge', '127.0.0.1:5061', "
                    f"'sip.example.com', 2, 0, 0, '{LEAF.cert_pem.decode()}', '{LEAF.key_pem.decode()}')"
                )
            )
            # PEM as bytes through the table definition: what the operator does.
            await conn.execute(insert(tls_mgm_table(MetaData())).values(domain="carrier", ca_list=bundle))
        domains, errors = await read_domains(engine)
    finally:
        await engine.dispose()
    assert errors == []
    edge, carrier = domains
    assert (edge.name, edge.type, edge.match_addresses, edge.match_domains) == (
        "edge",
        2,
        ("127.0.0.1:5061",),
        ("sip.example.com",),
    )
    assert (edge.verify_cert, edge.require_cert, edge.method) == (False, False, "SSLv23")
    assert edge.certificate == LEAF.cert_pem and edge.private_key == LEAF.key_pem
    server_context(edge)  # what the database gave back is usable as it is
    assert (carrier.type, carrier.verify_cert, carrier.require_cert, carrier.ca_list) == (
        1,
        True,
        True,
        bundle,
    )


@pytest.mark.needs_postgres
@pytest.mark.needs_mariadb
def test_tls_mgm_table_on_a_database_server(db_url: str) -> None:
    asyncio.run(_round_trip(db_url))
