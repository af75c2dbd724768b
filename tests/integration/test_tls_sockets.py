"""TLS sockets against real peers: calls from SIPp over UDP through the proxy to Kamailio 5.6 over TLS and
back, Kamailio as a TLS client of the proxy; dynamic TLS sockets added and removed while a connection stays
open; certificates from the tls_mgm table replaced by tls_reload while a connection stays open; a TLS socket
no domain serves."""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, delete, insert, select, text, update

from sipproxy.shared.tls_table import tls_mgm_table
from sipproxy.supervisor.db_reader import make_engine
from tests.integration.conftest import (
    Proxy,
    SippUas,
    SocketsTable,
    dropped,
    free_port,
    loopback_ip,
    sip_options_bytes,
    sipp_uac,
    tcp_connect_refused,
    wait_for,
)
from tests.integration.peers.kamailio_tls import KamailioTls
from tests.tlscerts import Issued, issue, make_ca

CA = make_ca()
OTHER_CA = make_ca("a CA nobody here trusts")
TIMEOUT = 30


def write_pem(directory: Path, name: str, issued: Issued) -> tuple[str, str]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    return str(cert), str(key)


def server_domain(directory: Path, issued: Issued, **extra: Any) -> dict[str, Any]:
    cert, key = write_pem(directory, "proxy", issued)
    return {
        "domain": "edge",
        "type": "server",
        "certificate": cert,
        "private_key": key,
        "verify_cert": False,
        "require_cert": False,
        **extra,
    }


def client_domain(directory: Path, ca: Issued) -> dict[str, Any]:
    path = directory / "trusted-ca.pem"
    path.write_bytes(ca.cert_pem)
    return {"domain": "carriers", "type": "client", "ca_list": str(path)}


@pytest.fixture
def kamailio(tmp_path: Path) -> Iterator[Callable[..., KamailioTls]]:
    started: list[KamailioTls] = []
    (tmp_path / "ca.crt").write_bytes(CA.cert_pem)

    def start(next_hop: str, server_name: str | None = None) -> KamailioTls:
        ip = loopback_ip()
        leaf = issue(CA, "kamailio.test", dns=["kamailio.test"], ips=[ip])
        cert, key = write_pem(tmp_path, "kamailio", leaf)
        peer = KamailioTls(
            tmp_path, ip, free_port(ip), free_port(ip), Path(cert), Path(key), tmp_path / "ca.crt", next_hop
        )
        peer.server_name = server_name
        started.append(peer)
        return peer.start()

    yield start
    for peer in started:
        peer.stop()


def forwarded_on(proxy: Proxy, socket_label: str) -> int:
    for line in proxy.get("/metrics")[1].splitlines():
        if line.startswith("sipproxy_forwarded_packets_total{") and f'socket="{socket_label}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def test_calls_from_udp_through_the_proxy_to_kamailio_over_tls(
    proxies: Callable[..., Proxy],
    uas_factory: Callable[..., SippUas],
    kamailio: Callable[..., KamailioTls],
    tmp_path: Path,
) -> None:
    """SIPp (UDP) -> proxy -> TLS, verified against the client domain's CA -> Kamailio -> SIPp (UDP), and
    every answer back the same way."""
    uas = uas_factory("udp")
    peer = kamailio(next_hop=uas.uri)
    ip = loopback_ip()
    udp, tls = free_port(ip), free_port(ip)
    proxy = proxies(
        {
            "sockets": [f"udp:{ip}:{udp}", f"tls:{ip}:{tls}"],
            # One UDP worker: the callers' side only; the TLS transport of the TCP pool is what this tests.
            "udp_workers": 1,
            "tcp_workers": 2,
            "routes": [
                {"match": {"ruri": "^sip:uas@"}, "forward": f"sip:{peer.host}:{peer.tls_port};transport=tls"}
            ],
            "tls_mgm": {"domains": [client_domain(tmp_path, CA)]},
        }
    )
    result = sipp_uac(ip, udp, "udp", calls=10, rate=10)
    assert result.returncode == 0, result.stdout[-3000:] + proxy.log() + peer.log()
    assert forwarded_on(proxy, f"tls:{ip}:{tls}") >= 10  # every INVITE went out over TLS


def test_a_tls_next_hop_that_the_client_domain_does_not_trust_gets_nothing(
    proxies: Callable[..., Proxy], kamailio: Callable[..., KamailioTls], tmp_path: Path
) -> None:
    peer = kamailio(next_hop="")
    ip = loopback_ip()
    udp, tls = free_port(ip), free_port(ip)
    proxy = proxies(
        {
            "sockets": [f"udp:{ip}:{udp}", f"tls:{ip}:{tls}"],
            # One UDP worker: the callers' side only; the TLS transport of the TCP pool is what this tests.
            "udp_workers": 1,
            # One TCP worker: a refused handshake must be seen by the only worker that could send.
            "tcp_workers": 1,
            "routes": [{"match": {}, "forward": f"sip:{peer.host}:{peer.tls_port};transport=tls"}],
            "tls_mgm": {"domains": [client_domain(tmp_path, OTHER_CA)]},
        }
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((loopback_ip(), 0))
        s.sendto(sip_options_bytes("carrier.test", 5061, s.getsockname()), (ip, udp))
        wait_for(lambda: dropped(proxy, "tls_handshake_failed") >= 1, "the refused handshake counted", 20)


def test_kamailio_as_a_tls_client_of_the_proxy(
    proxies: Callable[..., Proxy],
    uas_factory: Callable[..., SippUas],
    kamailio: Callable[..., KamailioTls],
    tmp_path: Path,
) -> None:
    """SIPp (UDP) -> Kamailio -> TLS with SNI sip.test -> the proxy's TLS socket -> SIPp (UDP), and back. The
    proxy's only server domain matches that SNI alone: the calls prove Kamailio sent it and trusted the
    proxy's certificate."""
    uas = uas_factory("udp")
    ip = loopback_ip()
    tls = free_port(ip)
    leaf = issue(CA, "sip.test", dns=["sip.test"], ips=[ip])
    proxy = proxies(
        {
            "sockets": [f"tls:{ip}:{tls}", f"udp:{ip}:{free_port(ip)}"],
            # One UDP worker: the callers' side only; the TLS transport of the TCP pool is what this tests.
            "udp_workers": 1,
            "tcp_workers": 2,
            "routes": [{"match": {"ruri": "^sip:uas@"}, "forward": uas.uri}],
            "tls_mgm": {"domains": [server_domain(tmp_path, leaf, match_sip_domain="sip.test")]},
        }
    )
    peer = kamailio(next_hop=f"sip:{ip}:{tls};transport=tls", server_name="sip.test")
    result = sipp_uac(peer.host, peer.udp_port, "udp", calls=10, rate=10)
    assert result.returncode == 0, result.stdout[-3000:] + proxy.log() + peer.log()
    assert dropped(proxy, "tls_handshake_failed") == 0


# --- a TLS client of our own, for what the tests below look at ---------------------------------------------


def trusting(ca: Issued = CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    ctx.check_hostname = False
    return ctx


class TlsClient:
    """A TLS connection to the proxy that trusts CA, sending OPTIONS and reading the answers."""

    def __init__(self, ip: str, port: int, sni: str | None = None) -> None:
        raw = socket.create_connection((ip, port), timeout=TIMEOUT)
        try:
            self.sock = trusting().wrap_socket(raw, server_hostname=sni)
        except BaseException:
            raw.close()
            raise
        self.buffer = b""

    @property
    def subject(self) -> str:
        cert: Any = self.sock.getpeercert()
        return next(str(value) for ((name, value),) in cert["subject"] if name == "commonName")

    def options(self, ip: str, port: int) -> bytes:
        return self.exchange(sip_options_bytes(ip, port, self.sock.getsockname(), "TLS"))

    def forwarded(self, uri: str) -> bytes:
        """An OPTIONS the proxy forwards to `uri`; the answer that comes back on this connection."""
        return self.exchange(forwarded_options(uri, self.sock.getsockname()))

    def exchange(self, request: bytes) -> bytes:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65535)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        answer, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return answer + b"\r\n\r\n"

    def close(self) -> None:
        self.sock.close()


class TlsTable:
    """Rows of the proxy's tls_mgm table (the one `sipproxy db init` created beside the sockets table)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.table = tls_mgm_table(MetaData())

    def _run(self, statement: Any) -> Any:
        async def go() -> Any:
            engine = make_engine(self.db_url)
            try:
                async with engine.begin() as conn:
                    result = await conn.execute(statement)
                    return result.fetchall() if result.returns_rows else None
            finally:
                await engine.dispose()

        return asyncio.run(go())

    def server(self, name: str, issued: Issued, **columns: Any) -> None:
        values = {"domain": name, "type": 2, "verify_cert": 0, "require_cert": 0}
        values.update(certificate=issued.cert_pem, private_key=issued.key_pem, **columns)
        self._run(insert(self.table).values(**values))

    def replace(self, name: str, issued: Issued) -> None:
        statement = update(self.table).where(self.table.c.domain == name)
        self._run(statement.values(certificate=issued.cert_pem, private_key=issued.key_pem))

    def set(self, name: str, **columns: Any) -> None:
        self._run(update(self.table).where(self.table.c.domain == name).values(**columns))

    def clear(self) -> None:
        self._run(delete(self.table))

    def version(self) -> Any:
        return self._run(text("SELECT table_version FROM version WHERE table_name = 'tls_mgm'"))

    def names(self) -> list[str]:
        return [row[0] for row in self._run(select(self.table.c.domain))]


@pytest.fixture
def tls_table(sqlite_table: SocketsTable) -> TlsTable:
    return TlsTable(sqlite_table.db_url)


class Responder:
    """A UDP peer answering every request 200 (its Vias, From, To tagged, Call-ID, CSeq), in a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((loopback_ip(), 0))
        self.ip, self.port = self.sock.getsockname()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, source = self.sock.recvfrom(65535)
            except OSError:
                return
            head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            keep = [
                h for h in head[1:] if h.split(b":", 1)[0].lower() in (b"via", b"from", b"call-id", b"cseq")
            ]
            to = next(h for h in head if h.lower().startswith(b"to:"))
            reply = [b"SIP/2.0 200 OK", *keep, to + b";tag=r", b"Content-Length: 0"]
            self.sock.sendto(b"\r\n".join(reply) + b"\r\n\r\n", source)

    @property
    def uri(self) -> str:
        return f"sip:peer@{self.ip}:{self.port}"

    def close(self) -> None:
        self.sock.close()


def forwarded_options(uri: str, local: tuple[str, int]) -> bytes:
    """An OPTIONS for someone else (the proxy forwards it), over TLS."""
    branch = f"z9hG4bK{random.getrandbits(48):x}"
    return (
        f"OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/TLS {local[0]}:{local[1]};branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{local[0]}>;tag=p\r\nTo: <{uri}>\r\nCall-ID: {branch}\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def mgm_proxy(proxies: Callable[..., Proxy], table: SocketsTable, **config: Any) -> Proxy:
    return proxies(
        {
            "sockets": [],
            # One UDP worker: the callers' side only; the TLS transport of the TCP pool is what this tests.
            "udp_workers": 1,
            "tcp_workers": 2,
            "sockets_mgm": {"db_url": table.db_url, "processes": 1},
            **config,
        }
    )


def test_a_dynamic_tls_socket_is_added_and_removed_while_a_connection_stays_open(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable, tls_table: TlsTable, tmp_path: Path
) -> None:
    ip = loopback_ip()
    port = free_port(ip)
    peer = Responder()
    tls_table.server("edge", issue(CA, "edge.test", dns=["edge.test"], ips=[ip]))
    proxy = mgm_proxy(proxies, sqlite_table, sockets=[f"udp:{ip}:{free_port(ip)}"])
    sqlite_table.add(f"tls:{ip}:{port}")
    result = proxy.call("sockets_reload")
    assert [e["socket"] for e in result["added"]] == [f"tls:{ip}:{port}"]
    assert "warning" not in result["added"][0]

    client = TlsClient(ip, port)
    assert client.options(ip, port).startswith(b"SIP/2.0 200 OK\r\n")
    assert client.forwarded(peer.uri).startswith(b"SIP/2.0 200 OK\r\n")
    assert client.subject == "edge.test"

    sqlite_table.remove(f"tls:{ip}:{port}")
    result = proxy.call("sockets_reload")
    assert [e["socket"] for e in result["removed"]] == [f"tls:{ip}:{port}"]
    # The listener is gone, the established connection carries on: its requests are forwarded and their
    # answers come back on it.
    assert tcp_connect_refused(ip, port)
    for _ in range(3):
        assert client.forwarded(peer.uri).startswith(b"SIP/2.0 200 OK\r\n")
    client.close()
    peer.close()


def test_tls_reload_gives_new_connections_a_new_certificate_and_keeps_the_old_ones(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable, tls_table: TlsTable
) -> None:
    assert tls_table.version() == [(3,)]  # `sipproxy db init` made the table and its version row
    ip = loopback_ip()
    port = free_port(ip)
    tls_table.server("edge", issue(CA, "old.test", dns=["old.test"]))
    proxy = mgm_proxy(proxies, sqlite_table, sockets=[f"tls:{ip}:{port}"])
    before = TlsClient(ip, port)
    assert before.subject == "old.test"
    assert before.options(ip, port).startswith(b"SIP/2.0 200 OK\r\n")

    tls_table.replace("edge", issue(CA, "new.test", dns=["new.test"]))
    result = proxy.call("tls_reload")
    assert result["loaded"] == [{"domain": "edge", "kind": "server", "source": "table"}]
    assert result["failed"] == []

    after = TlsClient(ip, port)
    assert after.subject == "new.test"
    assert after.options(ip, port).startswith(b"SIP/2.0 200 OK\r\n")
    # The connection made before the reload is still up, with the certificate it started with.
    assert before.options(ip, port).startswith(b"SIP/2.0 200 OK\r\n")
    assert before.subject == "old.test"

    (listed,) = (proxy.call("tls_list"))["Domains"]
    assert (listed["name"], listed["type"], listed["subject"], listed["state"]) == (
        "edge",
        "TLS_DOMAIN_SRV",
        "CN=new.test",
        "loaded",
    )
    assert listed["notAfter"].endswith("Z") and "private_key" not in str(listed).lower().replace(" ", "_")

    # A row that cannot be used is reported with its reason, and new connections fail for want of a domain;
    # established ones carry on.
    tls_table.set("edge", private_key=issue(CA, "x").key_pem)
    result = proxy.call("tls_reload")
    assert result["loaded"] == []
    assert result["failed"] == [
        {
            "domain": "edge",
            "kind": "server",
            "source": "table",
            "error": "private_key does not match the certificate",
        }
    ]
    with pytest.raises((ssl.SSLError, ConnectionError)):
        TlsClient(ip, port)
    assert after.options(ip, port).startswith(b"SIP/2.0 200 OK\r\n")
    before.close()
    after.close()


def test_a_tls_socket_no_domain_serves_stays_up_and_says_why_its_handshakes_fail(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable, tls_table: TlsTable
) -> None:
    ip = loopback_ip()
    port = free_port(ip)
    proxy = mgm_proxy(proxies, sqlite_table)
    sqlite_table.add(f"tls:{ip}:{port}")
    (added,) = (proxy.call("sockets_reload"))["added"]
    assert added["warning"].startswith(f"no TLS server domain matches {ip}:{port}")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        TlsClient(ip, port)
    assert dropped(proxy, "tls_no_server_domain") == 1
    (listed,) = proxy.call("sockets_list")
    assert listed["state"] == "listening" and "warning" in listed

    # A domain for another address does not help; one for this address does, after tls_reload.
    tls_table.server("elsewhere", issue(CA, "x.test"), match_ip_address="127.0.0.1:1")
    tls_table.server("edge", issue(CA, "edge.test"), match_ip_address=f"{ip}:{port}")
    proxy.call("tls_reload")
    (listed,) = proxy.call("sockets_list")
    assert "warning" not in listed
    client = TlsClient(ip, port)
    assert client.subject == "edge.test"
    client.close()


def test_sni_selects_the_server_domain_and_an_unknown_name_is_refused(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable, tls_table: TlsTable
) -> None:
    ip = loopback_ip()
    port = free_port(ip)
    tls_table.server("a", issue(CA, "a.test", dns=["a.test"]), match_sip_domain="a.test")
    tls_table.server("b", issue(CA, "b.test", dns=["b.test"]), match_sip_domain="*.b.test,b.test")
    mgm_proxy(proxies, sqlite_table, sockets=[f"tls:{ip}:{port}"])
    for sni, subject in (("a.test", "a.test"), ("b.test", "b.test"), ("sip.b.test", "b.test")):
        client = TlsClient(ip, port, sni)
        assert client.subject == subject, sni
        assert client.options(ip, port).startswith(b"SIP/2.0 200 OK\r\n")
        client.close()
    with pytest.raises(ssl.SSLError):
        TlsClient(ip, port, "c.test")
