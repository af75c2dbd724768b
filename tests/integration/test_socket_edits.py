"""Editing a socket's advertised address, tag or ToS keeps its open socket: calls on it go on while the edits
are reloaded, and new messages carry the new values."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable

from tests.integration.conftest import (
    SIPP_TOLERATE_REORDER,
    Proxy,
    SippUas,
    SocketsTable,
    free_port,
    loopback_ip,
)


def test_edits_of_advertised_tag_and_tos_keep_the_socket_and_its_calls(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable, uas_factory: Callable[..., SippUas]
) -> None:
    uas = uas_factory("udp")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((loopback_ip(), 0))
    probe.settimeout(10)
    ip = loopback_ip()
    port = free_port(ip)
    sqlite_table.add(f"udp:{ip}:{port}", tag="edge")
    proxy = proxies(
        {
            "sockets_mgm": {"db_url": sqlite_table.db_url},
            "routes": [
                {"match": {"ruri": "^sip:uas@"}, "forward": uas.uri},
                {"match": {"ruri": "^sip:probe@"}, "forward": "sip:{}:{}".format(*probe.getsockname())},
            ],
        }
    )
    [before] = proxy.call("sockets_list")
    local = loopback_ip()
    uac = subprocess.Popen(
        [
            "sipp", "-sn", "uac", f"{ip}:{port}", "-s", "uas", "-i", local, "-p", str(free_port(local)),
            "-m", "200", "-r", "20", "-timeout", "120s", "-timeout_error", "-nostdin", *SIPP_TOLERATE_REORDER,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        edits: list[dict[str, str | None]] = [
            {"advertised": "203.0.113.7"},
            {"advertised": "203.0.113.8:5999", "tag": "core"},
            {"tos": "IPTOS_LOWDELAY"},
            {"tag": "edge", "tos": "184"},
            {"advertised": None},
            {"advertised": "sbc.example.com", "tos": None},
        ]
        for columns in edits * 2:
            sqlite_table.set(f"udp:{ip}:{port}", **columns)
            result = proxy.call("sockets_reload")
            assert result["added"] == [] and result["removed"] == [], result
            [updated] = result["updated"]
            assert updated["socket"] == f"udp:{ip}:{port}" and updated["slot"] == before["slot"]
        out, _ = uac.communicate(timeout=180)
    finally:
        if uac.poll() is None:
            uac.kill()
            uac.wait()
    assert uac.returncode == 0, out[-3000:]

    # New messages name the last advertised address.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind((loopback_ip(), 0))
        host, cport = client.getsockname()
        client.sendto(
            (
                "MESSAGE sip:probe@example.invalid SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {host}:{cport};branch=z9hG4bKed1\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:a@{host}>;tag=x\r\nTo: <sip:probe@example.invalid>\r\n"
                "Call-ID: edits-1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            (ip, port),
        )
        got, _ = probe.recvfrom(65535)
    top_via = re.search(rb"(?im)^Via: (.*?)\r$", got)
    assert top_via is not None and top_via.group(1).startswith(
        f"SIP/2.0/UDP sbc.example.com:{port};".encode()
    )
    probe.close()
