"""The proxy keeps serving: worker killed, reloads under call load, malformed input."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import (
    SIPP_TOLERATE_REORDER,
    Proxy,
    SippUas,
    SocketsTable,
    free_port,
    loopback_ip,
    pid_alive,
    sip_options_bytes,
    sipp_options,
    udp_options,
    wait_for,
)

RFC4475 = Path(__file__).resolve().parents[1] / "data" / "rfc4475"


def test_killed_pool_workers_are_replaced_and_sockets_keep_answering(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    proxy = proxies(
        {"udp_workers": 1, "tcp_workers": 2, "sockets_mgm": {"db_url": sqlite_table.db_url, "processes": 2}}
    )
    ip = loopback_ip()
    port = free_port(ip)
    sqlite_table.add(f"udp:{ip}:{port}")
    sqlite_table.add(f"tcp:{ip}:{port}")
    assert len(proxy.call("sockets_reload")["added"]) == 2

    for kind in ("udp_pool", "tcp"):
        victim = next(p for p in proxy.processes() if p["Type"] == kind)
        os.kill(victim["PID"], signal.SIGKILL)

        def replaced(name: str = victim["Name"], old: int = victim["PID"]) -> bool:
            now = next(p for p in proxy.processes() if p["Name"] == name)
            return bool(now["PID"] != old and now["Sockets"] and proxy.get("/readyz")[0] == 200)

        wait_for(replaced, f"{kind} worker replaced", 60)
        proxy.remember_pids()
    # Every pool worker serves again: many OPTIONS spread over them are all answered.
    assert sipp_options(ip, port, "udp", count=20).returncode == 0
    assert sipp_options(ip, port, "tcp", count=20).returncode == 0
    assert "sipproxy_worker_restarts_total 2" in proxy.get("/metrics")[1]


def test_fifty_reloads_during_call_load_lose_no_call_on_the_unchanged_socket(
    proxies: Callable[..., Proxy],
    sqlite_table: SocketsTable,
    uas_factory: Callable[..., SippUas],
    tmp_path: Path,
) -> None:
    uas = uas_factory("udp")
    ip = loopback_ip()
    port, other = free_port(ip), free_port(ip)
    sqlite_table.add(f"udp:{ip}:{port}", tag="steady")
    proxy = proxies(
        {
            # The worker counts at their defaults (8 pool, 8 TCP): every one applies every add/remove of
            # the other socket during the load.
            "sockets_mgm": {"db_url": sqlite_table.db_url},
            "routes": [{"match": {"ruri": "^sip:uas@"}, "forward": uas.uri}],
        }
    )
    local = loopback_ip()
    uac = subprocess.Popen(
        [
            "sipp", "-sn", "uac", f"{ip}:{port}", "-s", "uas", "-i", local, "-p", str(free_port(local)),
            "-m", "300", "-r", "20", "-timeout", "120s", "-timeout_error", "-nostdin", *SIPP_TOLERATE_REORDER,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        added = removed = 0
        for i in range(50):
            if i % 2 == 0:
                sqlite_table.add(f"udp:{ip}:{other}")
            else:
                sqlite_table.remove(f"udp:{ip}:{other}")
            result = proxy.call("sockets_reload")
            added += len(result["added"])
            removed += len(result["removed"])
            assert [e["socket"] for e in result["kept"]][:1] == [f"udp:{ip}:{port}"]
        assert (added, removed) == (25, 25)
        out, _ = uac.communicate(timeout=180)
    finally:
        if uac.poll() is None:
            uac.kill()
            uac.wait()
    assert uac.returncode == 0, out[-3000:]
    assert "sipproxy_reloads_total 51" in proxy.get("/metrics")[1]


def test_malformed_input_is_answered_or_dropped_and_workers_keep_serving(
    proxies: Callable[..., Proxy],
) -> None:
    ip = loopback_ip()
    port = free_port(ip)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the loopback next hop for forwarded torture
    sink.bind((loopback_ip(), 0))
    sink_ip, sink_port = sink.getsockname()
    proxy = proxies(
        {
            "sockets": [f"udp:{ip}:{port}", f"tcp:{ip}:{port}"],
            "udp_workers": 2,
            "tcp_workers": 1,
            "tcp_idle_timeout": 3,
            "routes": [{"match": {}, "forward": f"sip:{sink_ip}:{sink_port}"}],
        }
    )
    pids_before = {p["PID"] for p in proxy.processes()}
    files = sorted(RFC4475.glob("*.dat"))
    assert len(files) == 49
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((loopback_ip(), 0))
        for path in files:
            s.sendto(path.read_bytes(), (ip, port))
        s.sendto(b"INVITE sip:x@" + b"a" * 60000, (ip, port))  # truncated/huge datagram
        s.sendto(b"\x00\xff" * 100, (ip, port))

    # Streams: a bad Content-Length gets a 400 and the connection closed; an idle one is closed.
    with socket.create_connection((ip, port), timeout=10) as c:
        msg = sip_options_bytes("sink.example", 5060, c.getsockname(), "TCP")
        c.sendall(msg.replace(b"Content-Length: 0", b"Content-Length: abc"))
        answer = c.recv(65535)
        assert answer.startswith(b"SIP/2.0 400")
        c.settimeout(10)
        assert c.recv(100) == b""
    # A good message followed, in the same segment, by a broken one: the good one is still served.
    with socket.create_connection((ip, port), timeout=10) as c:
        good = sip_options_bytes(ip, port, c.getsockname(), "TCP")
        bad = sip_options_bytes(ip, port, c.getsockname(), "TCP").replace(
            b"Content-Length: 0", b"Content-Length: x"
        )
        c.sendall(good + bad)
        c.settimeout(10)
        data = b"".join(iter(lambda: c.recv(65535), b""))
        assert data.startswith(b"SIP/2.0 200"), data[:200]
        assert b"SIP/2.0 400" in data
    with socket.create_connection((ip, port), timeout=10) as c:
        c.sendall(b"OPTIONS sip:x SIP/2.0\r\nVia: " + b"x" * 70000)  # headers too large
        c.settimeout(10)
        try:
            data = b"".join(iter(lambda: c.recv(65535), b""))
        except ConnectionResetError:
            data = b""  # closed while our bytes were still unread: the kernel answers with a reset
        assert not data or data.startswith(b"SIP/2.0")
    with socket.create_connection((ip, port), timeout=30) as idle:
        idle.sendall(b"OPTIONS sip:")
        idle.settimeout(90)  # far above tcp_idle_timeout: a TimeoutError here means the proxy kept it open
        assert idle.recv(100) == b""

    for _ in range(5):
        reply = udp_options(ip, port)
        assert reply is not None and reply.startswith(b"SIP/2.0 200")
    assert sipp_options(ip, port, "tcp", count=3).returncode == 0
    assert {p["PID"] for p in proxy.processes()} == pids_before  # no worker died
    metrics = proxy.get("/metrics")[1]
    assert "sipproxy_dropped_packets_total{" in metrics
    assert 'reason="tcp_idle_timeout"' in metrics or 'reason="missing_content_length"' in metrics
    sink.close()


def test_workers_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    ip = loopback_ip()
    proxy = Proxy(tmp_path, {"sockets": [f"udp:{ip}:{free_port(ip)}"], "udp_workers": 2}).start()
    workers = [p["PID"] for p in proxy.processes() if p["Type"] != "supervisor"]
    assert proxy.proc is not None
    proxy.proc.kill()
    proxy.proc.wait()
    wait_for(lambda: not any(pid_alive(p) for p in workers), "orphaned workers to exit", 30)
