"""Dynamic sockets from the table, added and removed at runtime, answering SIPp (SQLite database)."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.conftest import (
    Proxy,
    SocketsTable,
    free_port,
    loopback_ip,
    sipp_options,
    tcp_connect_refused,
    udp_options,
)


def mgm_config(table: SocketsTable, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        # No static socket by default: udp_workers serves nothing unless a test adds one.
        "udp_workers": 1,
        "tcp_workers": 2,
        "sockets_mgm": {"db_url": table.db_url, "processes": 2, "max_sockets": 10},
    }
    config.update(extra)
    return config


def by_socket(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["socket"]: e for e in entries}


def test_udp_and_tcp_sockets_added_and_removed_at_runtime(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    proxy = proxies(mgm_config(sqlite_table))
    ip = loopback_ip()
    port = free_port(ip)
    udp, tcp = f"udp:{ip}:{port}", f"tcp:{ip}:{port}"
    assert proxy.call("sockets_list") == []

    sqlite_table.add(udp, tag="carrier-a", advertised="203.0.113.7")
    sqlite_table.add(tcp, flags="reuse_port")
    result = proxy.call("sockets_reload")
    assert sorted(e["socket"] for e in result["added"]) == [tcp, udp]
    assert result["removed"] == [] and result["kept"] == [] and result["failed"] == []

    listed = by_socket(proxy.call("sockets_list"))
    assert listed[udp]["state"] == "listening" and listed[tcp]["state"] == "listening"
    assert listed[udp]["tag"] == "carrier-a"
    assert listed[udp]["advertised"] == f"203.0.113.7:{port}"
    assert listed[tcp]["flags"] == "reuse_port"
    assert (listed[udp]["proto"], listed[udp]["address"], listed[udp]["port"]) == ("udp", ip, port)
    assert {listed[udp]["slot"], listed[tcp]["slot"]} == {0, 1}

    assert sipp_options(ip, port, "udp", count=5).returncode == 0
    assert sipp_options(ip, port, "tcp", count=5).returncode == 0

    # A second reload with the same rows keeps both untouched.
    again = proxy.call("sockets_reload")
    assert again["added"] == [] and sorted(e["socket"] for e in again["kept"]) == [tcp, udp]

    sqlite_table.remove(udp)
    result = proxy.call("sockets_reload")
    assert [e["socket"] for e in result["removed"]] == [udp]
    assert [e["socket"] for e in result["kept"]] == [tcp]
    assert udp_options(ip, port, wait=2.0) is None
    assert sipp_options(ip, port, "tcp").returncode == 0

    sqlite_table.remove(tcp)
    result = proxy.call("sockets_reload")
    assert [e["socket"] for e in result["removed"]] == [tcp]
    assert tcp_connect_refused(ip, port)
    assert proxy.call("sockets_list") == []


def test_start_up_loads_the_table_itself(proxies: Callable[..., Proxy], sqlite_table: SocketsTable) -> None:
    ip = loopback_ip()
    port = free_port(ip)
    sqlite_table.add(f"udp:{ip}:{port}")
    proxy = proxies(mgm_config(sqlite_table))
    assert [e["state"] for e in proxy.call("sockets_list")] == ["listening"]
    reply = udp_options(ip, port)
    assert reply is not None and reply.startswith(b"SIP/2.0 200")


def test_failures_are_reported_per_socket_and_the_rest_proceeds(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    # Slot exhaustion and bind failures are what this tests; the pool's size plays no part.
    mgm = {"db_url": sqlite_table.db_url, "processes": 1, "max_sockets": 2}
    proxy = proxies(mgm_config(sqlite_table, sockets_mgm=mgm))
    ip = loopback_ip()
    busy_port, ok_port, extra_port = free_port(ip), free_port(ip), free_port(ip)
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind((ip, busy_port))  # EADDRINUSE for the proxy
    try:
        sqlite_table.add(f"udp:{ip}:{busy_port}")
        sqlite_table.add(f"udp:{ip}:{ok_port}")
        sqlite_table.add(f"sctp:{ip}:{ok_port}")
        sqlite_table.add(f"udp:{ip}:0")
        sqlite_table.add(f"udp:{ip}:{extra_port}", flags="turbo")
        sqlite_table.add(f"udp:{ip}:{extra_port}", tos="IPTOS_FAST")
        sqlite_table.add(f"{ip}:{extra_port}")
        sqlite_table.add("udp:192.0.2.1:5060")  # not a local address: absent (EADDRNOTAVAIL), not failed
        result = proxy.call("sockets_reload")
        errors = {f["socket"]: f["error"] for f in result["failed"]}
        assert errors[f"udp:{ip}:{busy_port}"] == "[Errno 98] Address already in use"
        assert errors[f"sctp:{ip}:{ok_port}"].endswith("protocol sctp is not supported")
        assert "out of range" in errors[f"udp:{ip}:0"]
        assert "udp:192.0.2.1:5060" not in errors
        [absent] = result["absent"]
        assert (
            absent["socket"] == "udp:192.0.2.1:5060" and "Cannot assign requested address" in absent["error"]
        )
        assert [e["socket"] for e in result["added"]] == [f"udp:{ip}:{ok_port}"]
        bad = [f for f in result["failed"] if f["socket"] == f"udp:{ip}:{extra_port}"]
        assert sorted(f["error"].split(" ")[0] for f in bad) == ["bad", "unknown"]
        assert "proto is required" in errors[f"{ip}:{extra_port}"]

        listed = proxy.call("sockets_list")
        states = [(e["socket"], e["state"]) for e in listed]
        assert (f"udp:{ip}:{ok_port}", "listening") in states
        assert (f"udp:{ip}:{busy_port}", "failed") in states
        assert (f"sctp:{ip}:{ok_port}", "failed") in states
        assert ("udp:192.0.2.1:5060", "absent") in states
        assert len(listed) == 8
        assert udp_options(ip, ok_port) is not None

        # max_sockets is 2: one slot left for two new sockets.
        p1, p2 = free_port(ip), free_port(ip)
        sqlite_table.add(f"udp:{ip}:{p1}")
        sqlite_table.add(f"tcp:{ip}:{p2}")
        result = proxy.call("sockets_reload")
        assert len(result["added"]) == 1
        assert [f["error"] for f in result["failed"] if f["error"] == "no free slot"] == ["no free slot"]
        assert proxy.call("sockets_capacity") == {"max_sockets": 2, "used": 2, "free": 0}
    finally:
        holder.close()

    # The port is free now: the failed row is retried on the next reload.
    sqlite_table.remove(f"udp:{ip}:{ok_port}")
    result = proxy.call("sockets_reload")
    assert f"udp:{ip}:{busy_port}" in [e["socket"] for e in result["added"]]
    assert udp_options(ip, busy_port) is not None


def test_changed_row_is_updated_in_place_or_replaced_in_a_new_slot(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    proxy = proxies(mgm_config(sqlite_table))
    ip = loopback_ip()
    port = free_port(ip)
    sqlite_table.add(f"udp:{ip}:{port}", tag="old")
    first = proxy.call("sockets_reload")["added"][0]
    # Another tag: the same open socket in the same slot (OpenSIPS would rebind it).
    sqlite_table.set(f"udp:{ip}:{port}", tag="new")
    result = proxy.call("sockets_reload")
    assert result["removed"] == [] and result["added"] == []
    assert [(e["tag"], e["slot"]) for e in result["updated"]] == [("new", first["slot"])]
    assert udp_options(ip, port) is not None
    # Other flags: the socket is bound anew, in a new slot.
    sqlite_table.set(f"udp:{ip}:{port}", flags="reuse_port")
    result = proxy.call("sockets_reload")
    assert [e["tag"] for e in result["removed"]] == ["new"]
    assert [e.get("flags") for e in result["added"]] == ["reuse_port"]
    assert result["added"][0]["slot"] != first["slot"]
    assert udp_options(ip, port) is not None


def test_list_sockets_shows_static_and_dynamic(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    ip = loopback_ip()
    static_port, dyn_port = free_port(ip), free_port(ip)
    # use_workers 1: the listing must show a static socket's own worker count as written.
    proxy = proxies(mgm_config(sqlite_table, sockets=[f"udp:{ip}:{static_port} tag core use_workers 1"]))
    sqlite_table.add(f"tcp:{ip}:{dyn_port}")
    proxy.call("sockets_reload")
    listing = {(e["socket"], e["kind"]) for e in proxy.call("list_sockets")}
    assert listing == {(f"udp:{ip}:{static_port}", "static"), (f"tcp:{ip}:{dyn_port}", "dynamic")}
    # sockets_list is OpenSIPS' view: dynamic sockets only.
    assert [e["socket"] for e in proxy.call("sockets_list")] == [f"tcp:{ip}:{dyn_port}"]
    ps = proxy.processes()
    types = sorted(p["Type"] for p in ps)
    assert types == ["supervisor", "tcp", "tcp", "udp", "udp_pool", "udp_pool"]
    assert [p["Sockets"] for p in ps if p["Type"] == "udp"] == [[f"udp:{ip}:{static_port}"]]
    assert all(p["Sockets"] == [f"tcp:{ip}:{dyn_port}"] for p in ps if p["Type"] == "tcp")


# The DDL of OpenSIPS 3.6's own SQLite scripts (standard-create.sql and sockets-create.sql).
OPENSIPS_SQLITE = """
CREATE TABLE version (
    table_name CHAR(32) NOT NULL,
    table_version INTEGER DEFAULT 0 NOT NULL,
    CONSTRAINT version_t_name_idx  UNIQUE (table_name)
);
CREATE TABLE sockets (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    socket CHAR(128) NOT NULL,
    advertised CHAR(128) DEFAULT NULL,
    tag CHAR(128) DEFAULT NULL,
    flags CHAR(128) DEFAULT NULL,
    tos CHAR(32) DEFAULT NULL
);
INSERT INTO version (table_name, table_version) values ('sockets','1');
"""


def test_a_table_created_by_opensips_scripts_works(proxies: Callable[..., Proxy], tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "opensips.db")
    db.executescript(OPENSIPS_SQLITE)
    ip = loopback_ip()
    port = free_port(ip)
    row = (f"UDP:{ip}:{port}",)
    db.execute("INSERT INTO sockets (socket, advertised, tag, flags, tos) VALUES (?, '', '', '', '')", row)
    db.commit()
    db.close()
    table = SocketsTable(f"sqlite:///{tmp_path}/opensips.db")
    proxy = proxies(mgm_config(table))
    listed = [(e["socket"], e["state"]) for e in proxy.call("sockets_list")]
    assert listed == [(f"UDP:{ip}:{port}", "listening")]
    reply = udp_options(ip, port)
    assert reply is not None and reply.startswith(b"SIP/2.0 200")


def test_ipv6_sockets(proxies: Callable[..., Proxy], sqlite_table: SocketsTable) -> None:
    proxy = proxies(mgm_config(sqlite_table))
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        probe.bind(("::1", 0))
        port = int(probe.getsockname()[1])
    sqlite_table.add(f"udp:[::1]:{port}")
    sqlite_table.add(f"tcp:[::1]:{port}")
    result = proxy.call("sockets_reload")
    assert sorted(e["socket"] for e in result["added"]) == [f"tcp:[::1]:{port}", f"udp:[::1]:{port}"]
    assert {e["address"] for e in result["added"]} == {"::1"}
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        s.settimeout(5)
        local = s.getsockname()
        msg = (
            f"OPTIONS sip:[::1]:{port} SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:{local[1]};branch=z9hG4bKv6probe\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@[::1]>;tag=1\r\nTo: <sip:[::1]:{port}>\r\n"
            "Call-ID: v6probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        s.sendto(msg, ("::1", port))
        assert s.recv(65535).startswith(b"SIP/2.0 200")
    with socket.create_connection(("::1", port), timeout=5) as c:
        c.sendall(msg.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
        assert c.recv(65535).startswith(b"SIP/2.0 200")


def test_established_tcp_connections_outlive_their_removed_listener(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    ip = loopback_ip()
    port, out_port = free_port(ip), free_port(ip)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((loopback_ip(), 0))
    sink.settimeout(10)
    sink_ip, sink_port = sink.getsockname()
    proxy = proxies(
        mgm_config(
            sqlite_table,
            sockets=[f"udp:{ip}:{out_port}"],
            routes=[{"match": {"ruri": "^sip:sink@"}, "forward": f"sip:{sink_ip}:{sink_port}"}],
        )
    )
    sqlite_table.add(f"tcp:{ip}:{port}")
    proxy.call("sockets_reload")

    def request(n: int, local: tuple[str, int]) -> bytes:
        return (
            "MESSAGE sip:sink@example.invalid SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP {local[0]}:{local[1]};branch=z9hG4bKk{n}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:a@{local[0]}>;tag=a{n}\r\nTo: <sip:sink@example.invalid>\r\n"
            f"Call-ID: keep{n}\r\nCSeq: {n} MESSAGE\r\nContent-Length: 0\r\n\r\n"
        ).encode()

    with socket.create_connection((ip, port), timeout=10) as conn:
        conn.sendall(request(1, conn.getsockname()))
        assert b"Call-ID: keep1" in sink.recv(65535)
        sqlite_table.remove(f"tcp:{ip}:{port}")
        assert len(proxy.call("sockets_reload")["removed"]) == 1
        assert tcp_connect_refused(ip, port)  # the listener is gone...
        conn.sendall(request(2, conn.getsockname()))
        assert b"Call-ID: keep2" in sink.recv(65535)  # ...the established connection still works
    sink.close()


def received(proxy: Proxy, label: str) -> int:
    for line in proxy.get("/metrics")[1].splitlines():
        if line.startswith(f'sipproxy_received_packets_total{{socket="{label}"}} '):
            return int(line.rsplit(" ", 1)[1])
    return 0


def test_per_socket_counters_never_go_back(proxies: Callable[..., Proxy], sqlite_table: SocketsTable) -> None:
    proxy = proxies(mgm_config(sqlite_table))
    ip = loopback_ip()
    port = free_port(ip)
    label = f"udp:{ip}:{port}"
    sqlite_table.add(label)
    proxy.call("sockets_reload")
    for _ in range(3):
        assert udp_options(ip, port) is not None
    assert received(proxy, label) == 3
    sqlite_table.remove(label)
    proxy.call("sockets_reload")
    assert received(proxy, label) == 3  # a removed socket keeps its counts
    sqlite_table.add(label, tag="again")
    proxy.call("sockets_reload")
    for _ in range(2):
        assert udp_options(ip, port) is not None
    assert received(proxy, label) == 5  # and the series goes on when it comes back
    stats = proxy.call("get_statistics", {"statistics": [f"socket:{label}:rcv_packets"]})
    assert stats == {f"socket:{label}:rcv_packets": 5}
