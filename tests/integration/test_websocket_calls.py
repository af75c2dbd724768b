"""The WebRTC edge: browser-like WebSocket clients (aiohttp, tests/integration/peers/ws_client.py) over WS and
WSS register and call through the proxy to SIPp over UDP and back; the callee's in-dialog BYE reaches the
client over its own connection by the flow token in our Record-Route; forged and stale tokens are refused."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sipproxy.sip import flowtoken
from tests.integration.conftest import Proxy, SippScenario, dropped, free_port, loopback_ip
from tests.integration.peers.ws_client import WsSipClient, all_values, header, headers_of, status_of, uri_of
from tests.tlscerts import issue, make_ca

CA = make_ca()
TIMEOUT = 30


def edge_config(
    ip: str, ports: dict[str, int], cert_dir: Path, routes: list[dict[str, Any]]
) -> dict[str, Any]:
    """An edge: UDP towards the core, WS and WSS towards browsers, a server certificate for the WSS socket."""
    leaf = issue(CA, "edge.test", dns=["edge.test"], ips=[ip])
    (cert_dir / "edge.crt").write_bytes(leaf.cert_pem)
    (cert_dir / "edge.key").write_bytes(leaf.key_pem)
    return {
        "sockets": [f"udp:{ip}:{ports['udp']}", f"ws:{ip}:{ports['ws']}", f"wss:{ip}:{ports['wss']}"],
        # One UDP worker: the core side only; the WS/WSS transports of the TCP pool are what this tests.
        "udp_workers": 1,
        # Two TCP workers: a browser's connection belongs to one, the UDP side's requests reach it by relay.
        "tcp_workers": 2,
        "routes": routes,
        "tls_mgm": {
            "domains": [
                {
                    "domain": "edge",
                    "type": "server",
                    "certificate": str(cert_dir / "edge.crt"),
                    "private_key": str(cert_dir / "edge.key"),
                    "verify_cert": False,
                    "require_cert": False,
                }
            ]
        },
    }


def client_tls() -> ssl.SSLContext:
    return ssl.create_default_context(cadata=CA.cert_pem.decode())


def ports_on(ip: str) -> dict[str, int]:
    return {name: free_port(ip) for name in ("udp", "ws", "wss")}


def url(ip: str, ports: dict[str, int], transport: str) -> str:
    return f"{transport}://{ip}:{ports[transport]}/"


@pytest.mark.parametrize("transport", ["ws", "wss"])
async def test_a_browser_registers_calls_and_is_hung_up_on_over_its_own_connection(
    proxies: Callable[..., Proxy], scenarios: Callable[..., SippScenario], tmp_path: Path, transport: str
) -> None:
    registrar = scenarios("registrar.xml")
    uas = scenarios("uas_hangs_up.xml")
    ip = loopback_ip()
    ports = ports_on(ip)
    routes = [
        {"match": {"ruri": "^sip:registrar"}, "forward": registrar.uri},
        {"match": {"ruri": "^sip:uas@"}, "forward": uas.uri},
    ]
    proxy = proxies(edge_config(ip, ports, tmp_path, routes))
    client = await WsSipClient.connect(url(ip, ports, transport), ssl_context=client_tls())
    try:
        registered = await client.register("sip:registrar.test")
        assert status_of(registered) == 200, registered
        assert client.host in (header(registered, "contact") or "")

        responses, dialog = await client.invite(f"sip:uas@{ip}:{ports['udp']}")
        assert [status_of(r) for r in responses] == [180, 200], responses
        # Double Record-Route (the transport changes): the entry facing the browser names its transport and
        # carries the flow token of its connection.
        facing_uas, facing_browser = all_values(responses[-1], "record-route")
        assert facing_uas == f"<sip:{ip}:{ports['udp']};r2=on;lr>"
        assert facing_browser.endswith(f"@{ip}:{ports[transport]};transport={transport};r2=on;lr>")
        token = uri_of(facing_browser)[len("sip:") :].split("@")[0]
        assert flowtoken.conn_id_of(token.encode()) is not None  # the shape of our tokens: lowercase hex

        # The callee hangs up: its BYE is addressed to the browser's Contact (*.invalid, unroutable) and
        # reaches the browser over its WebSocket connection.
        bye = await client.receive()
        assert bye.startswith(f"BYE sip:alice@{client.host};transport=ws;ob SIP/2.0\r\n".encode()), bye
        assert header(bye, "call-id") == dialog.call_id
        top_via = next(v for n, v in headers_of(bye) if n == "via")
        assert top_via.startswith(f"SIP/2.0/{transport.upper()} {ip}:{ports[transport]};branch=z9hG4bKsps")
        assert header(bye, "route") is None
        await client.answer(bye)
    finally:
        await client.close()
    for sipp in (registrar, uas):
        code, out = await asyncio.to_thread(sipp.wait)
        assert code == 0, out[-3000:] + proxy.log()


class RawUas:
    """A UAS on a plain UDP socket, so the test can write exactly what reaches the proxy."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((loopback_ip(), 0))
        self.sock.settimeout(TIMEOUT)
        self.ip, self.port = self.sock.getsockname()

    async def receive(self) -> tuple[bytes, tuple[str, int]]:
        data, source = await asyncio.to_thread(self.sock.recvfrom, 65535)
        return data, source

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        self.sock.sendto(data, to)

    def response(self, request: bytes, status: int, phrase: str, tag: str = "uas1") -> bytes:
        lines = [f"SIP/2.0 {status} {phrase}"]
        lines += [f"Via: {v}" for n, v in headers_of(request) if n == "via"]
        lines += [f"Record-Route: {v}" for n, v in headers_of(request) if n == "record-route"]
        lines += [
            f"From: {header(request, 'from')}",
            f"To: {header(request, 'to')};tag={tag}",
            f"Call-ID: {header(request, 'call-id')}",
            f"CSeq: {header(request, 'cseq')}",
            f"Contact: <sip:uas@{self.ip}:{self.port}>",
            "Content-Length: 0",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def bye(self, invite: bytes, route_set: list[str], tag: str = "uas1") -> bytes:
        contact = uri_of(header(invite, "contact") or "")
        lines = [
            f"BYE {contact} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.ip}:{self.port};branch=z9hG4bK-bye-{len(route_set)}{tag}",
            "Route: " + ", ".join(route_set),
            "Max-Forwards: 70",
            f"From: {header(invite, 'to')};tag={tag}",
            f"To: {header(invite, 'from')}",
            f"Call-ID: {header(invite, 'call-id')}",
            "CSeq: 1 BYE",
            "Content-Length: 0",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def close(self) -> None:
        self.sock.close()


async def test_forged_and_stale_flow_tokens_are_refused(
    proxies: Callable[..., Proxy], tmp_path: Path
) -> None:
    uas = RawUas()
    ip = loopback_ip()
    ports = ports_on(ip)
    proxy = proxies(edge_config(ip, ports, tmp_path, [{"match": {}, "forward": f"sip:{uas.ip}:{uas.port}"}]))
    proxy_udp = (ip, ports["udp"])
    client = await WsSipClient.connect(url(ip, ports, "ws"))
    try:
        calling = asyncio.get_running_loop().create_task(client.invite(f"sip:bob@{uas.ip}:{uas.port}"))
        invite, source = await uas.receive()
        assert source == proxy_udp
        our_via = all_values(invite, "via")[0]
        sk = our_via.rsplit(";sk=", 1)[1]
        key, sk_token = sk.rsplit("-", 1)
        # Issue 14: a response whose Via names the browser's connection with a token this proxy did not
        # make is dropped, not written onto that connection.
        forged_sk = flowtoken.make(bytes(32), flowtoken.conn_id_of(sk_token.encode()) or 0, ("127.0.0.1", 1))
        ringing = uas.response(invite, 180, "Ringing").replace(sk.encode(), f"{key}-".encode() + forged_sk)
        uas.send(ringing, source)
        uas.send(uas.response(invite, 200, "OK"), source)
        responses, _ = await asyncio.wait_for(calling, TIMEOUT)
        assert [status_of(r) for r in responses] == [200]  # the forged 180 never reached the browser
        ack, _ = await uas.receive()
        assert ack.startswith(b"ACK sip:uas@")
        route_set = all_values(invite, "record-route")
        token = uri_of(route_set[1])[len("sip:") :].split("@")[0]

        # A BYE whose token was not made by this proxy: 403, and nothing reaches the browser.
        cid = flowtoken.conn_id_of(token.encode()) or 0
        forged = flowtoken.make(bytes(32), cid, ("127.0.0.1", 1)).decode()
        for bad in (forged, token[:-1] + ("0" if token[-1] != "0" else "1")):
            uas.send(uas.bye(invite, [route_set[0], route_set[1].replace(token, bad)]), proxy_udp)
            refusal, _ = await uas.receive()
            assert status_of(refusal) == 403, refusal
        assert await client.nothing_within(1.0)

        # The genuine one goes over the browser's connection.
        uas.send(uas.bye(invite, route_set), proxy_udp)
        bye = await client.receive()
        assert bye.startswith(b"BYE sip:alice@")
        await client.answer(bye)
        ok, _ = await uas.receive()
        assert status_of(ok) == 200
    finally:
        await client.close()
    # The browser is gone: its flow has failed (RFC 5626 430).
    await asyncio.sleep(0.5)
    uas.send(uas.bye(invite, route_set, tag="uas2"), proxy_udp)
    failed, _ = await uas.receive()
    uas.close()
    assert status_of(failed) == 430, failed
    assert dropped(proxy, "flow_token_forged") >= 3
    assert dropped(proxy, "flow_failed") >= 1


async def test_websocket_refusals_are_answered_and_counted(
    proxies: Callable[..., Proxy], tmp_path: Path
) -> None:
    ip = loopback_ip()
    ports = ports_on(ip)
    proxy = proxies(edge_config(ip, ports, tmp_path, []))
    reader, writer = await asyncio.open_connection(ip, ports["ws"])
    writer.write(
        b"GET / HTTP/1.1\r\nHost: edge.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)  # answered, then closed
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request (Sec-WebSocket-Protocol must list sip)\r\n")
    assert dropped(proxy, "ws_no_sip_protocol") == 1
    # A ping is answered, a close echoed, and the connection ends.
    client = await WsSipClient.connect(url(ip, ports, "ws"))
    await client.ws.ping(b"are you there")
    await client.ws.close(code=1000)
    assert client.ws.close_code == 1000
    await client.session.close()
