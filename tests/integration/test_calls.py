"""SIPp INVITE calls uac -> proxy -> uas over UDP, TCP and across them, forwarded by `routes`."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from tests.integration.conftest import Proxy, SippUas, SocketsTable, free_port, loopback_ip, sipp_uac


@pytest.mark.parametrize(
    ("uac_transport", "uas_transport"),
    [("udp", "udp"), ("tcp", "tcp"), ("udp", "tcp"), ("tcp", "udp")],
)
def test_calls_through_the_proxy(
    proxies: Callable[..., Proxy],
    uas_factory: Callable[..., SippUas],
    uac_transport: str,
    uas_transport: str,
) -> None:
    uas = uas_factory(uas_transport)
    ip = loopback_ip()
    port = free_port(ip)
    proxy = proxies(
        {
            "sockets": [f"udp:{ip}:{port} tag edge", f"tcp:{ip}:{port} tag edge-tcp"],
            "routes": [{"match": {"ruri": "^sip:uas@"}, "forward": uas.uri}],
        }
    )
    result = sipp_uac(ip, port, uac_transport, calls=20, rate=10)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:] + proxy.log()
    metrics = proxy.get("/metrics")[1]
    forwarded = sum(
        int(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("sipproxy_forwarded_packets_total{")
    )
    # INVITE, 100?, 180, 200, ACK, BYE, 200 per call cross the proxy: at least 6 per call.
    assert forwarded >= 20 * 6
    # Calls: one INVITE each (more only if SIPp retransmitted one), a small part of the messages.
    invites = sum(
        int(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("sipproxy_forwarded_invites_total{")
    )
    assert 20 <= invites <= forwarded // 3


def test_route_sends_out_of_the_tagged_socket(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    """A request arriving on one socket leaves from the socket the rule names, even one that another pool
    serves (here a dynamic socket, sent from by the static socket's worker)."""
    ip = loopback_ip()
    edge, core = free_port(ip), free_port(ip)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((loopback_ip(), 0))
    sink.settimeout(10)
    sink_ip, sink_port = sink.getsockname()
    proxy = proxies(
        {
            "sockets": [f"udp:{ip}:{edge} tag edge"],
            "sockets_mgm": {"db_url": sqlite_table.db_url},
            "routes": [{"match": {"tag": "edge"}, "forward": f"sip:{sink_ip}:{sink_port}", "socket": "core"}],
        }
    )
    sqlite_table.add(f"udp:{ip}:{core}", tag="core", advertised="198.51.100.7:5099")
    proxy.call("sockets_reload")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as uac:
        uac.bind((loopback_ip(), 0))
        local = uac.getsockname()
        uac.sendto(
            (
                "MESSAGE sip:someone@example.invalid SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bKtagged\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:a@{local[0]}>;tag=x\r\nTo: <sip:someone@example.invalid>\r\n"
                "Call-ID: tagged-1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            (ip, edge),
        )
        data, source = sink.recvfrom(65535)
    assert source == (ip, core)  # sent out of the "core" socket
    assert b"Via: SIP/2.0/UDP 198.51.100.7:5099;" in data  # advertising its public address
    sink.close()


def test_response_goes_back_on_the_request_connection_from_another_worker(
    proxies: Callable[..., Proxy],
) -> None:
    """Request over TCP (a TCP pool worker), forwarded over UDP; the response arrives on the UDP socket (read
    by another process) and must still go back on the client's own connection: the client does not listen."""
    ip = loopback_ip()
    port = free_port(ip)
    uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uas.bind((loopback_ip(), 0))
    uas.settimeout(10)
    uas_ip, uas_port = uas.getsockname()
    proxies(
        {
            "sockets": [f"udp:{ip}:{port}", f"tcp:{ip}:{port}"],
            "routes": [{"match": {"ruri": "^sip:uas@"}, "forward": f"sip:{uas_ip}:{uas_port}"}],
        }
    )
    with socket.create_connection((ip, port), timeout=10) as client:
        local = client.getsockname()
        client.sendall(
            (
                "MESSAGE sip:uas@example.invalid SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP {local[0]}:{local[1]};branch=z9hG4bKconn1\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:a@{local[0]}>;tag=c1\r\nTo: <sip:uas@example.invalid>\r\n"
                "Call-ID: conn-1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
        request, proxy_addr = uas.recvfrom(65535)
        assert proxy_addr == (ip, port)
        lines = request.split(b"\r\n")
        copied = [
            ln for ln in lines if ln.split(b":", 1)[0].lower() in (b"via", b"from", b"call-id", b"cseq")
        ]
        to = next(ln for ln in lines if ln.lower().startswith(b"to:"))
        response = b"\r\n".join(
            [b"SIP/2.0 200 OK", *copied, to + b";tag=uas1", b"Content-Length: 0", b"", b""]
        )
        uas.sendto(response, proxy_addr)
        answer = client.recv(65535)
    assert answer.startswith(b"SIP/2.0 200 OK")
    assert b"Call-ID: conn-1" in answer
    uas.close()
