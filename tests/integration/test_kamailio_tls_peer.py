"""The Kamailio TLS peer on its own: it speaks TLS with its own certificate as a server, relays TLS to UDP,
and as a client opens TLS to a next hop whose certificate it verifies (and sends SNI to)."""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import free_port, loopback_ip
from tests.integration.peers.kamailio_tls import KamailioTls
from tests.tlscerts import Issued, issue, make_ca

CA = make_ca()
OTHER_CA = make_ca("a CA Kamailio does not trust")
TIMEOUT = 30


def options(target: str, via: str, call_id: str) -> bytes:
    return (
        f"OPTIONS {target} SIP/2.0\r\n"
        f"Via: {via};branch=z9hG4bK-{call_id};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:tester@example.com>;tag=t1\r\n"
        f"To: <{target}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def headers(message: bytes) -> list[tuple[str, str]]:
    head = message.split(b"\r\n\r\n", 1)[0].decode()
    out = []
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        out.append((name.strip().lower(), value.strip()))
    return out


def header(message: bytes, name: str) -> str | None:
    return next((v for n, v in headers(message) if n == name), None)


def ok_for(request: bytes) -> bytes:
    """A 200 to `request`, as a UAS writes it (its Vias, From, To with a tag, Call-ID, CSeq)."""
    kept = [f"{n.title()}: {v}" for n, v in headers(request) if n in ("via", "from", "call-id", "cseq")]
    lines = [*kept, f"To: {header(request, 'to')};tag=uas", "Content-Length: 0"]
    return ("SIP/2.0 200 OK\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()


async def read_message(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)  # no body in these tests


class Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))

    async def receive(self) -> tuple[bytes, Any]:
        return await asyncio.wait_for(self.queue.get(), TIMEOUT)


async def udp_endpoint(ip: str, port: int) -> tuple[asyncio.DatagramTransport, Udp]:
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(Udp, local_addr=(ip, port))


def record_sni(
    seen: list[str | None],
) -> Callable[[ssl.SSLObject | ssl.SSLSocket, str | None, ssl.SSLContext], None]:
    def callback(_conn: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
        seen.append(name)

    return callback


@pytest.fixture
def certs(tmp_path: Path) -> Callable[[str, Issued], tuple[Path, Path]]:
    def write(name: str, issued: Issued) -> tuple[Path, Path]:
        cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        cert.write_bytes(issued.cert_pem)
        key.write_bytes(issued.key_pem)
        return cert, key

    (tmp_path / "ca.crt").write_bytes(CA.cert_pem)
    return write


@pytest.fixture
def kamailio(
    tmp_path: Path, certs: Callable[[str, Issued], tuple[Path, Path]]
) -> Iterator[Callable[..., KamailioTls]]:
    started: list[KamailioTls] = []

    def start(
        next_hop: str = "", server_name: str | None = None, client_ca: Path | None = None
    ) -> KamailioTls:
        ip = loopback_ip()
        cert, key = certs("kamailio", issue(CA, "kamailio.test", dns=["kamailio.test"], ips=[ip]))
        peer = KamailioTls(tmp_path, ip, free_port(ip), free_port(ip), cert, key, tmp_path / "ca.crt")
        peer.next_hop, peer.server_name, peer.client_ca_file = next_hop, server_name, client_ca
        started.append(peer)
        return peer.start()

    yield start
    for peer in started:
        peer.stop()


def client_context(cert: Issued | None = None, ca: Issued = CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if cert is not None:
        with tempfile.NamedTemporaryFile() as f:
            f.write(cert.cert_pem + cert.key_pem)
            f.flush()
            ctx.load_cert_chain(f.name)
    return ctx


async def tls_options(
    peer: KamailioTls, ctx: ssl.SSLContext, target: str | None = None
) -> tuple[bytes, dict[str, Any]]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(peer.host, peer.tls_port, ssl=ctx, server_hostname="kamailio.test"), TIMEOUT
    )
    try:
        local = writer.get_extra_info("sockname")
        if local is None:  # TLS 1.3: the server's refusal of our certificate may come right after connecting
            raise ConnectionResetError("the server closed the connection after the handshake")
        target = target or f"sip:{peer.host}:{peer.tls_port};transport=tls"
        writer.write(options(target, f"SIP/2.0/TLS {local[0]}:{local[1]}", f"c{local[1]}"))
        await writer.drain()
        return await read_message(reader), writer.get_extra_info("peercert")
    finally:
        writer.close()


async def test_kamailio_answers_options_over_tls_with_its_certificate(
    kamailio: Callable[..., KamailioTls],
) -> None:
    peer = kamailio()
    answer, cert = await tls_options(peer, client_context())
    assert answer.startswith(b"SIP/2.0 200 OK\r\n"), peer.log()
    assert header(answer, "x-transport") == "tls"  # Kamailio's side saw TLS too
    assert dict(x[0] for x in cert["subject"])["commonName"] == "kamailio.test"
    # A client that does not trust Kamailio's CA refuses it: the certificate is really Kamailio's.
    with pytest.raises(ssl.SSLCertVerificationError):
        await tls_options(peer, client_context(ca=OTHER_CA))


async def test_kamailio_relays_from_tls_to_a_udp_next_hop(kamailio: Callable[..., KamailioTls]) -> None:
    uas_ip = loopback_ip()
    uas_port = free_port(uas_ip)
    transport, uas = await udp_endpoint(uas_ip, uas_port)
    try:
        peer = kamailio(next_hop=f"sip:{uas_ip}:{uas_port}")

        async def answer() -> bytes:
            request, source = await uas.receive()
            transport.sendto(ok_for(request), source)
            return request

        serving = asyncio.create_task(answer())
        response, _ = await tls_options(peer, client_context(), target=f"sip:echo@{uas_ip}:{uas_port}")
        relayed = await serving
    finally:
        transport.close()
    assert response.startswith(b"SIP/2.0 200 OK\r\n"), peer.log()
    assert header(relayed, "x-relayed-by") == "kamailio"
    assert (header(relayed, "via") or "").startswith(f"SIP/2.0/UDP {peer.host}:{peer.udp_port}")


class TlsNextHop:
    """A TLS server answering 200 to each request, recording the requests and the SNI it was sent."""

    def __init__(self, ip: str, cert_file: Path, key_file: Path) -> None:
        self.ip = ip
        self.port = free_port(ip)
        self.received: list[bytes] = []
        self.sni: list[str | None] = []
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert_file, key_file)
        self.ctx.sni_callback = record_sni(self.sni)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await read_message(reader)
            self.received.append(request)
            writer.write(ok_for(request))
            await writer.drain()
            await reader.read()  # keep the connection until Kamailio closes it
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()


async def via_kamailio_to(hop: TlsNextHop, peer: KamailioTls) -> bytes:
    """Send an OPTIONS over UDP to Kamailio for the TLS next hop; the answer that comes back."""
    server = await asyncio.start_server(hop.serve, hop.ip, hop.port, ssl=hop.ctx)
    uac_ip = loopback_ip()
    transport, uac = await udp_endpoint(uac_ip, free_port(uac_ip))
    try:
        local = transport.get_extra_info("sockname")
        via = f"SIP/2.0/UDP {local[0]}:{local[1]}"
        transport.sendto(
            options(f"sip:carrier@{hop.ip}:{hop.port}", via, f"h{hop.port}"), (peer.host, peer.udp_port)
        )
        response, _ = await uac.receive()
        return response
    finally:
        transport.close()
        server.close()


async def test_kamailio_connects_to_a_tls_next_hop_verifying_it(
    kamailio: Callable[..., KamailioTls], certs: Callable[[str, Issued], tuple[Path, Path]]
) -> None:
    hop_ip = loopback_ip()
    hop = TlsNextHop(hop_ip, *certs("carrier", issue(CA, "carrier.test", dns=["carrier.test"])))
    peer = kamailio(next_hop=f"sip:{hop.ip}:{hop.port};transport=tls", server_name="carrier.test")
    response = await via_kamailio_to(hop, peer)
    assert response.startswith(b"SIP/2.0 200 OK\r\n"), peer.log()
    assert len(hop.received) == 1
    assert (header(hop.received[0], "via") or "").startswith(f"SIP/2.0/TLS {peer.host}:{peer.tls_port}")
    assert header(hop.received[0], "x-relayed-by") == "kamailio"
    assert hop.sni == ["carrier.test"]


async def test_kamailio_refuses_a_tls_next_hop_it_cannot_verify(
    kamailio: Callable[..., KamailioTls], certs: Callable[[str, Issued], tuple[Path, Path]]
) -> None:
    hop_ip = loopback_ip()
    hop = TlsNextHop(hop_ip, *certs("stranger", issue(OTHER_CA, "carrier.test", dns=["carrier.test"])))
    peer = kamailio(next_hop=f"sip:{hop.ip}:{hop.port};transport=tls", server_name="carrier.test")
    response = await via_kamailio_to(hop, peer)
    assert not response.startswith(b"SIP/2.0 200"), response
    assert int(response.split(b" ", 2)[1]) >= 400
    assert hop.received == []


async def test_kamailio_can_require_client_certificates(
    kamailio: Callable[..., KamailioTls], tmp_path: Path
) -> None:
    peer = kamailio(client_ca=tmp_path / "ca.crt")
    answer, _ = await tls_options(peer, client_context(cert=issue(CA, "client.test", client=True)))
    assert answer.startswith(b"SIP/2.0 200 OK\r\n"), peer.log()
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, TimeoutError)):
        await tls_options(peer, client_context())
