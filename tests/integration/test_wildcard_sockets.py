"""A wildcard socket (0.0.0.0) never names 0.0.0.0 in what the proxy writes: it must say which address peers
reach it on (`advertised`), and an in-dialog request from the callee comes back through it."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

from tests.integration.conftest import Proxy, SocketsTable, loopback_ip


def port_free_everywhere() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def peer() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((loopback_ip(), 0))
    s.settimeout(10)
    return s


def header(message: bytes, name: bytes) -> list[bytes]:
    return re.findall(rb"(?im)^" + name + rb":\s*(.*?)\r$", message)


def test_a_wildcard_row_without_advertised_fails_with_the_reason(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    proxy = proxies({"sockets_mgm": {"db_url": sqlite_table.db_url}})
    port = port_free_everywhere()
    sqlite_table.add(f"udp:0.0.0.0:{port}")
    result = proxy.call("sockets_reload")
    [failed] = result["failed"]
    assert failed["socket"] == f"udp:0.0.0.0:{port}"
    assert "a wildcard address (0.0.0.0) needs an advertised address" in failed["error"]
    assert result["added"] == []


def test_a_call_through_a_wildcard_socket_names_the_advertised_address_and_the_callee_bye_comes_back(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    caller, callee = peer(), peer()
    caller_host, caller_port = caller.getsockname()
    proxy_ip = loopback_ip()
    port = port_free_everywhere()
    proxy = proxies(
        {
            "sockets_mgm": {"db_url": sqlite_table.db_url},
            "routes": [{"match": {}, "forward": "sip:{}:{}".format(*callee.getsockname())}],
        }
    )
    sqlite_table.add(f"udp:0.0.0.0:{port}", advertised=f"{proxy_ip}:{port}")
    [added] = proxy.call("sockets_reload")["added"]
    assert added["state"] == "listening", added
    invite = (
        f"INVITE sip:callee@example.invalid SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {caller_host}:{caller_port};branch=z9hG4bKwild1\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:caller@{caller_host}>;tag=c1\r\nTo: <sip:callee@example.invalid>\r\n"
        f"Call-ID: wild-1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{caller_host}:{caller_port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    caller.sendto(invite, (proxy_ip, port))
    got, _ = callee.recvfrom(65535)
    assert b"0.0.0.0" not in got, got.decode(errors="replace")
    [top_via, _] = header(got, b"Via")
    assert top_via.startswith(f"SIP/2.0/UDP {proxy_ip}:{port};".encode()), top_via
    [record_route] = header(got, b"Record-Route")
    assert record_route == f"<sip:{proxy_ip}:{port};lr>".encode(), record_route

    # 200 OK from the callee, to our Via's address.
    vias = b"".join(b"Via: " + v + b"\r\n" for v in header(got, b"Via"))
    ok = (
        b"SIP/2.0 200 OK\r\n" + vias + b"Record-Route: " + record_route + b"\r\n"
        b"From: " + header(got, b"From")[0] + b"\r\nTo: <sip:callee@example.invalid>;tag=e1\r\n"
        b"Call-ID: wild-1\r\nCSeq: 1 INVITE\r\n"
        + f"Contact: <sip:callee@{callee.getsockname()[0]}:{callee.getsockname()[1]}>\r\n".encode()
        + b"Content-Length: 0\r\n\r\n"
    )
    callee.sendto(ok, (proxy_ip, port))
    answer, _ = caller.recvfrom(65535)
    assert answer.startswith(b"SIP/2.0 200 OK"), answer

    # The callee hangs up: its BYE follows the Record-Route to the advertised address, then to the caller.
    callee_host, callee_port = callee.getsockname()
    bye = (
        f"BYE sip:caller@{caller_host}:{caller_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {callee_host}:{callee_port};branch=z9hG4bKwildbye\r\n"
        f"Route: {record_route.decode()}\r\nMax-Forwards: 70\r\n"
        "From: <sip:callee@example.invalid>;tag=e1\r\n"
        f"To: <sip:caller@{caller_host}>;tag=c1\r\nCall-ID: wild-1\r\nCSeq: 1 BYE\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    callee.sendto(bye, (proxy_ip, port))
    arrived, _ = caller.recvfrom(65535)
    assert arrived.startswith(f"BYE sip:caller@{caller_host}:{caller_port} SIP/2.0".encode()), arrived
    assert b"0.0.0.0" not in arrived
    caller.close()
    callee.close()
