"""TLS domains of the OpenSIPS `tls_mgm` table: rows, selection by address and SNI, and real handshakes over
loopback with contexts built from them (certificates made by the test)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import MetaData, insert, select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.schema import CreateTable

from sipproxy.shared.schema import version_table
from sipproxy.shared.tls_domains import (
    CLIENT_DOMAIN,
    SERVER_DOMAIN,
    ClientContexts,
    NoTlsDomain,
    ServerContexts,
    TlsDomain,
    TlsDomainError,
    client_context,
    parse_domains,
    select_client_domain,
    select_server_domain,
    server_context,
)
from sipproxy.shared.tls_table import init_tls_mgm, read_domains, tls_mgm_table
from tests.tlscerts import Issued, issue, make_ca, new_key

CA = make_ca()
OTHER_CA = make_ca("another CA")
SIP_A = issue(CA, "a.example.com", dns=["a.example.com"])
SIP_B = issue(CA, "b.example.com", dns=["b.example.com"])
CLIENT = issue(CA, "client.example.com", client=True)


def server(name: str, cert: Issued = SIP_A, **fields: Any) -> TlsDomain:
    values: dict[str, Any] = {
        "name": name,
        "type": SERVER_DOMAIN,
        "certificate": cert.cert_pem,
        "private_key": cert.key_pem,
        "verify_cert": False,
        "require_cert": False,
    }
    values.update(fields)
    return TlsDomain(**values)


def client(name: str, **fields: Any) -> TlsDomain:
    values: dict[str, Any] = {"name": name, "type": CLIENT_DOMAIN, "ca_list": CA.cert_pem}
    values.update(fields)
    return TlsDomain(**values)


# ------------------------------------------------------------------------------------------ the table


def test_the_table_has_opensips_columns_and_types_on_each_dialect() -> None:
    table = tls_mgm_table(MetaData())
    assert [c.name for c in table.columns] == [
        "id",
        "domain",
        "match_ip_address",
        "match_sip_domain",
        "type",
        "method",
        "verify_cert",
        "require_cert",
        "certificate",
        "private_key",
        "crl_check_all",
        "crl_dir",
        "ca_list",
        "ca_dir",
        "cipher_list",
        "dh_params",
        "ec_curve",
    ]
    ddl = {
        name: " ".join(str(CreateTable(table).compile(dialect=dialect)).split())
        for name, dialect in (
            ("mysql", create_async_engine("mysql+aiomysql://u@h/db").dialect),
            ("postgresql", create_async_engine("postgresql+asyncpg://u@h/db").dialect),
            ("sqlite", create_async_engine("sqlite+aiosqlite://").dialect),
        )
    }
    assert "id INTEGER(10) UNSIGNED NOT NULL AUTO_INCREMENT" in ddl["mysql"]
    assert "domain CHAR(64) NOT NULL" in ddl["mysql"]
    assert "type INTEGER(1) NOT NULL DEFAULT 1" in ddl["mysql"]
    assert "method CHAR(16) DEFAULT 'SSLv23'" in ddl["mysql"]
    assert "certificate BLOB" in ddl["mysql"] and "ca_list MEDIUMBLOB DEFAULT NULL" in ddl["mysql"]
    assert "id SERIAL NOT NULL" in ddl["postgresql"]
    assert "domain VARCHAR(64) NOT NULL" in ddl["postgresql"]
    assert "certificate BYTEA" in ddl["postgresql"] and "ca_list BYTEA DEFAULT NULL" in ddl["postgresql"]
    assert "certificate BLOB" in ddl["sqlite"] and "match_ip_address CHAR(255) DEFAULT NULL" in ddl["sqlite"]
    for text in ddl.values():
        assert "CONSTRAINT tls_mgm_domain_type_idx UNIQUE (domain, type)" in text


async def test_init_creates_the_table_and_its_version_row_once_then_rows_read_back(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    try:
        assert await init_tls_mgm(engine) is True
        assert await init_tls_mgm(engine) is False
        metadata = MetaData()
        table = tls_mgm_table(metadata)
        version = version_table(metadata)
        async with engine.begin() as conn:
            rows = (await conn.execute(select(version.c.table_name, version.c.table_version))).all()
            assert [tuple(r) for r in rows] == [("tls_mgm", 3)]
            # As OpenSIPS's own tools write a row: columns left out take their defaults.
            await conn.execute(
                insert(table).values(
                    domain="edge",
                    type=2,
                    match_ip_address="10.0.0.1:5061",
                    certificate=SIP_A.cert_pem,
                    private_key=SIP_A.key_pem,
                )
            )
            await conn.execute(insert(table).values(domain="carrier", ca_list=CA.cert_pem.decode()))
            await conn.execute(insert(table).values(domain="broken", type=7))
        domains, errors = await read_domains(engine)
    finally:
        await engine.dispose()
    assert [(d.name, d.type, d.id) for d in domains] == [("edge", 2, 1), ("carrier", 1, 2)]
    edge = domains[0]
    assert (edge.method, edge.verify_cert, edge.require_cert) == ("SSLv23", True, True)
    assert edge.match_domains == ("*",)
    assert edge.certificate == SIP_A.cert_pem and edge.private_key == SIP_A.key_pem
    assert domains[1].ca_list == CA.cert_pem  # written as text, read as bytes
    assert [str(e) for e in errors] == ["TLS domain 'broken': type must be 1 (client) or 2 (server), not 7"]


# ------------------------------------------------------------------------------------------ the rows


def test_a_row_with_nulls_takes_opensips_defaults() -> None:
    domain = TlsDomain.from_row({"id": 4, "domain": "d", "type": None, "method": None, "verify_cert": None})
    assert (domain.type, domain.method, domain.verify_cert, domain.require_cert) == (1, "SSLv23", True, True)
    assert (domain.match_addresses, domain.match_domains, domain.certificate) == (("*",), ("*",), None)


def test_addresses_and_names_are_normalized() -> None:
    domain = TlsDomain.from_row(
        {
            "domain": "d",
            "type": 2,
            "match_ip_address": "127.0.0.1:5061, [::1]:5061,0:0::1:5061,10.0.0.1:5062",
            "match_sip_domain": "SIP.Example.com, *.example.net,,",
            "certificate": memoryview(SIP_A.cert_pem),
            "private_key": SIP_A.key_pem.decode(),
            "ca_list": b"  ",
        }
    )
    # IPv6 as OpenSIPS writes it (split at the last colon) or in brackets; duplicates collapse.
    assert domain.match_addresses == ("127.0.0.1:5061", "[::1]:5061", "10.0.0.1:5062")
    assert domain.match_domains == ("sip.example.com", "*.example.net")
    assert domain.certificate == SIP_A.cert_pem and domain.private_key == SIP_A.key_pem
    assert domain.ca_list is None
    star_first = TlsDomain.from_row({"domain": "d", "match_ip_address": "*, 10.0.0.1:5061"})
    assert star_first.match_addresses == ("*",)


def test_the_private_key_never_shows_in_a_repr() -> None:
    text = repr(server("edge"))
    assert "PRIVATE KEY" not in text and "edge" in text


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"domain": "", "type": 2}, "the domain column is empty"),
        ({"domain": "d", "type": 3}, "type must be 1 (client) or 2 (server), not 3"),
        ({"domain": "d", "match_ip_address": "10.0.0.1"}, "entry '10.0.0.1' is not IP:port or *"),
        ({"domain": "d", "match_ip_address": "host:5061"}, "entry 'host:5061' is not IP:port or *"),
        ({"domain": "d", "match_ip_address": "1.2.3.4:99999"}, "is not IP:port or *"),
        ({"domain": "d", "method": "SSLv3"}, "method 'SSLv3' is not SSLv23"),
        ({"domain": "d", "method": "TLSv1_2-TLSv9"}, "method 'TLSv1_2-TLSv9' is not SSLv23"),
    ],
)
def test_rows_refused_with_the_reason(row: dict[str, Any], problem: str) -> None:
    with pytest.raises(TlsDomainError) as info:
        TlsDomain.from_row(row)
    assert problem in str(info.value)


def test_parse_domains_keeps_the_good_rows_and_reports_the_rest() -> None:
    rows = [
        {"id": 1, "domain": "a", "type": 2},
        {"id": 2, "domain": "a", "type": 1},  # same name, other type: fine
        {"id": 3, "domain": "a", "type": 2},
        {"id": 4, "domain": "b", "type": 9},
    ]
    domains, errors = parse_domains(rows)
    assert [(d.id, d.type) for d in domains] == [(1, 2), (2, 1)]
    assert [str(e) for e in errors] == [
        "TLS domain 'a': a server domain of this name is already defined",
        "TLS domain 'b': type must be 1 (client) or 2 (server), not 9",
    ]


# ------------------------------------------------------------------------------------------ selection

AT = ("10.0.0.1", 5061)


def test_the_address_is_matched_before_sni() -> None:
    here = server("here", match_addresses=("10.0.0.1:5061",))
    anywhere = server("anywhere", match_domains=("a.example.com",))
    domains = [anywhere, here]
    assert select_server_domain(domains, *AT, "a.example.com").domain is here
    assert select_server_domain(domains, "10.0.0.2", 5061, "a.example.com").domain is anywhere
    assert select_server_domain(domains, "10.0.0.1", 5062, "a.example.com").domain is anywhere


def test_sni_chooses_among_the_domains_of_an_address() -> None:
    a = server("a", match_addresses=("10.0.0.1:5061",), match_domains=("a.example.com",))
    b = server("b", match_addresses=("10.0.0.1:5061", "[2001:db8::1]:5061"), match_domains=("b.example.com",))
    domains = [a, b]
    assert select_server_domain(domains, *AT, "a.example.com").domain is a
    assert select_server_domain(domains, *AT, "B.Example.COM").domain is b  # names are not case-sensitive
    assert select_server_domain(domains, "2001:db8:0::1", 5061, "b.example.com").domain is b


def test_exact_names_then_patterns_then_star() -> None:
    star = server("star")
    pattern = server("pattern", match_domains=("*.example.com",))
    exact = server("exact", match_domains=("sip.example.com",))
    domains = [star, pattern, exact]
    assert select_server_domain(domains, *AT, "sip.example.com").domain is exact
    assert select_server_domain(domains, *AT, "other.example.com").domain is pattern
    # fnmatch's * spans dots, as in OpenSIPS.
    assert select_server_domain(domains, *AT, "deep.sub.example.com").domain is pattern
    assert select_server_domain(domains, *AT, "example.org").domain is star
    # Same rank: the earlier domain (read_domains orders by id).
    first, second = server("first"), server("second")
    assert select_server_domain([first, second], *AT, "x").domain is first


def test_a_client_without_sni_matches_star_or_none_only() -> None:
    named = server("named", match_domains=("sip.example.com",))
    assert select_server_domain([named], *AT, None).domain is None
    assert select_server_domain([named, server("star")], *AT, None).domain is not None
    no_sni = server("no-sni", match_domains=("none",))
    assert select_server_domain([named, no_sni], *AT, None).domain is no_sni


def test_no_match_says_why() -> None:
    a = server("a", match_addresses=("10.0.0.1:5061",), match_domains=("a.example.com",))
    fallback = server("fallback", match_domains=("z.example.com",))
    match = select_server_domain([a, fallback], *AT, "b.example.com")
    # An address with domains of its own does not fall back to the `*` ones (as OpenSIPS).
    assert match.domain is None
    assert match.reason == (
        "no TLS server domain for SNI 'b.example.com' on 10.0.0.1:5061 (candidates: a [a.example.com])"
    )
    match = select_server_domain([a], "10.0.0.9", 5061, None)
    assert match.reason == (
        "no TLS server domain for a client sending no SNI on 10.0.0.9:5061 "
        "(no domain of that type lists this address or *)"
    )
    # Client domains never serve connections.
    assert select_server_domain([client("c")], *AT, "x").domain is None


def test_client_domains_by_next_hop_address_and_name() -> None:
    carrier = client("carrier", match_addresses=("192.0.2.10:5061",), match_domains=("sip.carrier.net",))
    generic = client("generic")
    domains = [carrier, generic, server("s")]
    assert select_client_domain(domains, "sip.carrier.net", ("192.0.2.10", 5061)).domain is carrier
    assert select_client_domain(domains, "other.net", ("192.0.2.11", 5061)).domain is generic
    match = select_client_domain(domains, "other.net", ("192.0.2.10", 5061))
    assert match.domain is None and "no TLS client domain for other.net at 192.0.2.10:5061" in match.reason


# ------------------------------------------------------------------------------------------ contexts


def encrypted(key: Issued) -> bytes:
    return key.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"private_key": SIP_B.key_pem}, "private_key does not match the certificate"),
        ({"private_key": issue(CA, "x", key=new_key("rsa")).key_pem}, "does not match the certificate"),
        ({"certificate": b"hello"}, "certificate holds no PEM certificate"),
        (
            {"certificate": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
            "certificate is not a valid PEM certificate",
        ),
        ({"private_key": b"hello"}, "private_key holds no PEM private key"),
        (
            {"private_key": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
            "private_key is not a valid PEM private key",
        ),
        ({"private_key": encrypted(SIP_A)}, "private_key is encrypted"),
        ({"private_key": None}, "a server domain needs a certificate and a private_key"),
        ({"verify_cert": True}, "verify_cert is 1 but there is no ca_list"),
        ({"verify_cert": True, "ca_list": b"junk"}, "ca_list holds no PEM certificate"),
        ({"cipher_list": "NO-SUCH-CIPHER"}, "cipher_list 'NO-SUCH-CIPHER' selects no cipher"),
        ({"ec_curve": "no-such-curve"}, "ec_curve 'no-such-curve' is not a known curve"),
        ({"crl_dir": "/etc/crl"}, "crl_dir and crl_check_all are not supported"),
        ({"dh_params": b"junk"}, "dh_params are not usable"),
    ],
)
def test_a_broken_server_domain_is_refused_with_its_problem(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(TlsDomainError) as info:
        server_context(server("carrier-tls", **fields))
    assert str(info.value).startswith("TLS domain 'carrier-tls': ")
    assert problem in str(info.value)


def test_verify_modes_follow_verify_cert_and_require_cert() -> None:
    assert server_context(server("s")).verify_mode == ssl.CERT_NONE
    optional = server("s", verify_cert=True, ca_list=CA.cert_pem)
    assert server_context(optional).verify_mode == ssl.CERT_OPTIONAL
    required = server("s", verify_cert=True, require_cert=True, ca_list=CA.cert_pem)
    assert server_context(required).verify_mode == ssl.CERT_REQUIRED
    ctx = client_context(client("c"), check_hostname=True)
    assert (ctx.verify_mode, ctx.check_hostname) == (ssl.CERT_REQUIRED, True)
    ctx = client_context(client("c", verify_cert=False), check_hostname=True)
    assert (ctx.verify_mode, ctx.check_hostname) == (ssl.CERT_NONE, False)
    ranged = server_context(server("s", method="TLSv1_3"))
    assert ranged.minimum_version == ranged.maximum_version == ssl.TLSVersion.TLSv1_3


def test_no_key_is_left_on_disk_without_memfd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Where memfd_create does not exist, the chain goes through a private temporary file, removed at once.
    monkeypatch.delattr(os, "memfd_create")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server_context(server("s"))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ handshakes


class TlsEcho:
    """A loopback TLS server whose contexts come from ServerContexts: it answers each line with the
    domain that served the connection."""

    def __init__(self, contexts: ServerContexts) -> None:
        self.contexts = contexts
        self.refusals: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> TlsEcho:
        ctx = self.contexts.for_address("127.0.0.1", self.port)
        assert ctx is not None
        self.server = await asyncio.start_server(self._serve, sock=self.sock, ssl=ctx)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = writer.get_extra_info("ssl_object")
        problem = self.contexts.check_peer(conn)
        if problem is not None:
            self.refusals.append(problem)
        else:
            domain = self.contexts.domain_of(conn)
            assert domain is not None
            await reader.readline()
            writer.write(domain.name.encode() + b"\n")
            await writer.drain()
        writer.close()

    async def ask(self, ctx: ssl.SSLContext, server_hostname: str | None) -> tuple[str, dict[str, Any]]:
        """(the domain that answered, the certificate the client saw)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port, ssl=ctx, server_hostname=server_hostname), 30
        )
        try:
            cert = writer.get_extra_info("peercert") or {}
            if not cert:  # an unverified connection keeps the certificate in binary form only
                der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                cert = {"der": der}
            writer.write(b"hello\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 30)
            return line.decode().strip(), cert
        finally:
            writer.close()

    async def name_for(self, clients: ClientContexts, sni: str) -> str:
        """The domain that answers a client of `clients` asking for `sni`; raises when refused."""
        name, _ = await self.ask(clients.for_next_hop(sni, "127.0.0.1", self.port), sni)
        if not name:
            raise ConnectionResetError("closed without an answer")
        return name


def subject_cn(cert: dict[str, Any]) -> str:
    return str(dict(x[0] for x in cert["subject"])["commonName"])


async def test_handshake_between_a_server_domain_and_a_client_domain() -> None:
    contexts = ServerContexts([server("sip"), client("not-a-server")])
    async with TlsEcho(contexts) as echo:
        clients = ClientContexts([client("carrier", match_domains=("a.example.com",))])
        ctx = clients.for_next_hop("a.example.com", "127.0.0.1", echo.port)
        name, cert = await echo.ask(ctx, "a.example.com")
    assert name == "sip"
    assert subject_cn(cert) == "a.example.com"  # verified against the client domain's CA list


async def test_sni_switches_between_two_server_domains_on_one_address() -> None:
    domains = [
        server("a", SIP_A, match_domains=("a.example.com",)),
        server("b", SIP_B, match_domains=("*.example.com",)),
    ]
    refused: list[str] = []
    contexts = ServerContexts(domains, on_refusal=refused.append)
    async with TlsEcho(contexts) as echo:
        clients = ClientContexts([client("any")])
        for sni, domain in (("a.example.com", "a"), ("b.example.com", "b")):
            name, cert = await echo.ask(clients.for_next_hop(sni, "127.0.0.1", echo.port), sni)
            assert (name, subject_cn(cert)) == (domain, sni)
        # No domain for this name: the handshake fails and the reason is reported. (asyncio's server side
        # drops the connection without sending the alert: the client sees a reset; see the next test.)
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await echo.ask(clients.for_next_hop("sip.example.org", "127.0.0.1", echo.port), "sip.example.org")
        # No SNI at all: neither domain lists `*` or `none`.
        unverified = client_context(client("x", verify_cert=False), check_hostname=False)
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await echo.ask(unverified, None)
    assert refused == [
        f"no TLS server domain for SNI 'sip.example.org' on 127.0.0.1:{echo.port} "
        "(candidates: a [a.example.com], b [*.example.com])",
        f"no TLS server domain for a client sending no SNI on 127.0.0.1:{echo.port} "
        "(candidates: a [a.example.com], b [*.example.com])",
    ]


def test_an_unknown_sni_gets_the_unrecognized_name_alert() -> None:
    contexts = ServerContexts([server("a", match_domains=("a.example.com",))])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        ctx = contexts.for_address("127.0.0.1", port)
        assert ctx is not None
        client_ctx = ClientContexts([client("any")]).for_next_hop("b.example.com", "127.0.0.1", port)
        errors: list[BaseException] = []

        def serve() -> None:
            conn, _ = listener.accept()
            with conn, contextlib.suppress(ssl.SSLError):
                ctx.wrap_socket(conn, server_side=True)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
                client_ctx.wrap_socket(raw, server_hostname="b.example.com")
        except ssl.SSLError as exc:
            errors.append(exc)
        finally:
            thread.join(30)
    assert len(errors) == 1 and "UNRECOGNIZED_NAME" in str(errors[0])


async def test_the_client_checks_the_name_of_a_next_hop_given_by_name_only() -> None:
    contexts = ServerContexts([server("sip")])  # a certificate for a.example.com, no IP address in it
    async with TlsEcho(contexts) as echo:
        clients = ClientContexts([client("any")])
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await echo.ask(clients.for_next_hop("b.example.com", "127.0.0.1", echo.port), "b.example.com")
        assert "Hostname mismatch" in str(info.value)
        # A next hop given as an IP: the chain is verified, the name is not.
        name, _ = await echo.ask(clients.for_next_hop("127.0.0.1", "127.0.0.1", echo.port), None)
        assert name == "sip"
        # A server certificate from a CA the client domain does not trust.
        stranger = ClientContexts([client("strict", ca_list=OTHER_CA.cert_pem)])
        with pytest.raises(ssl.SSLCertVerificationError):
            await echo.ask(stranger.for_next_hop("a.example.com", "127.0.0.1", echo.port), "a.example.com")
    with pytest.raises(NoTlsDomain, match=r"no TLS client domain for a\.example\.com at 127\.0\.0\.1:5061"):
        ClientContexts([server("s")]).for_next_hop("a.example.com", "127.0.0.1", 5061)


async def test_client_certificates_required_by_the_domain_that_sni_chooses() -> None:
    # "open" serves without client authentication and is what a connection starts with; "mtls" is chosen
    # by SNI and requires a client certificate. OpenSSL keeps the first context's verify mode after the
    # switch, so check_peer is what enforces it.
    mtls = server("mtls", SIP_B, match_domains=("b.example.com",), verify_cert=True, require_cert=True)
    mtls = dataclasses.replace(mtls, ca_list=CA.cert_pem)
    contexts = ServerContexts([server("open", SIP_A, match_domains=("a.example.com",)), mtls])
    async with TlsEcho(contexts) as echo:
        without_cert = ClientContexts([client("plain")])
        with_cert = ClientContexts([client("mine", certificate=CLIENT.cert_pem, private_key=CLIENT.key_pem)])
        assert await echo.name_for(without_cert, "a.example.com") == "open"
        assert await echo.name_for(with_cert, "b.example.com") == "mtls"
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError, ssl.SSLError)):
            await echo.name_for(without_cert, "b.example.com")
    assert echo.refusals == ["TLS domain 'mtls' requires a client certificate and none was presented"]


async def test_a_server_domain_that_requires_client_certificates_alone_refuses_in_the_handshake() -> None:
    mtls = server("mtls", verify_cert=True, require_cert=True, ca_list=CA.cert_pem)
    stranger = issue(OTHER_CA, "stranger", client=True)
    async with TlsEcho(ServerContexts([mtls])) as echo:
        good = ClientContexts([client("mine", certificate=CLIENT.cert_pem, private_key=CLIENT.key_pem)])
        assert await echo.name_for(good, "a.example.com") == "mtls"
        bad = ClientContexts([client("bad", certificate=stranger.cert_pem, private_key=stranger.key_pem)])
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError, ssl.SSLError)):
            await echo.name_for(bad, "a.example.com")
    assert echo.refusals == []  # refused by OpenSSL itself, before any application data


def test_broken_domains_are_left_out_and_reported() -> None:
    contexts = ServerContexts([server("bad", private_key=SIP_B.key_pem), server("good")])
    assert [d.name for d in contexts.domains] == ["good"]
    assert [str(e) for e in contexts.errors] == [
        "TLS domain 'bad': private_key does not match the certificate"
    ]
    assert contexts.for_address("10.0.0.1", 5061) is not None
    only_bad = ServerContexts([server("bad", private_key=SIP_B.key_pem)])
    assert only_bad.for_address("10.0.0.1", 5061) is None
