"""The proxy keeps serving: worker killed, reloads under call load, malformed input."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
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
    tcp_connect_refused,
    udp_options,
    wait_for,
)

RFC4475 = Path(__file__).resolve().parents[1] / "data" / "rfc4475"


def test_killed_pool_workers_are_replaced_and_sockets_keep_answering(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    proxy = proxies(
        # No static socket: udp_workers serves nothing here; the dynamic pool's workers are the ones killed.
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


def _uac(ip: str, port: int, calls: int, rate: int) -> subprocess.Popen[str]:
    """SIPp's uac in the background, tolerating a 180 after its 200 as a real UA does; exit 0 = no failed
    call. No call may wait for an answer longer than SIPp's retransmissions allow."""
    local = loopback_ip()
    return subprocess.Popen(
        [
            "sipp", "-sn", "uac", f"{ip}:{port}", "-s", "uas", "-i", local, "-p", str(free_port(local)),
            "-m", str(calls), "-r", str(rate), "-timeout", f"{calls // rate + 120}s", "-timeout_error",
            "-nostdin", *SIPP_TOLERATE_REORDER,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def _finish(uac: subprocess.Popen[str], limit: float) -> str:
    try:
        out, _ = uac.communicate(timeout=limit)
    finally:
        if uac.poll() is None:
            uac.kill()
            uac.wait()
    return out


def test_a_pool_worker_killed_during_calls_loses_no_call_and_its_replacement_serves_every_socket(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable, uas_factory: Callable[..., SippUas]
) -> None:
    """kill -9 of the pool's member 0, the worker serving while the load is light: a standby worker takes
    over, SIPp's retransmissions cover what the dead worker had read, and the replacement gets every
    socket."""
    uas = uas_factory("udp")
    ip = loopback_ip()
    ports = [free_port(ip) for _ in range(4)]
    for port in ports:
        sqlite_table.add(f"udp:{ip}:{port}")
    proxy = proxies(
        {
            "sockets_mgm": {"db_url": sqlite_table.db_url},  # 8 pool workers, 8 TCP: the defaults
            "routes": [{"match": {"ruri": "^sip:uas@"}, "forward": uas.uri}],
        }
    )
    uac = _uac(ip, ports[0], calls=600, rate=40)
    try:
        wait_for(lambda: "sipproxy_forwarded_packets_total{" in proxy.get("/metrics")[1], "calls flowing")
        victim = next(p for p in proxy.processes() if p["Name"] == "udp-pool#0")
        os.kill(victim["PID"], signal.SIGKILL)
        new = wait_for(
            lambda: next(
                (
                    p["PID"]
                    for p in proxy.processes()
                    if p["Name"] == "udp-pool#0" and p["PID"] != victim["PID"]
                ),
                None,
            ),
            "the replacement of udp-pool#0",
        )
    finally:
        out = _finish(uac, 180)
    assert uac.returncode == 0, out[-3000:]
    # The replacement holds the supervisor's lock until it has every socket: a reload answered by every
    # worker comes after that.
    result = proxy.call("sockets_reload")
    assert result["failed"] == [] and len(result["kept"]) == 4
    assert {e["state"] for e in proxy.call("sockets_list")} == {"listening"}
    # Only the replacement is left waiting on the pool's sockets: it answers on every one of them.
    others = [p["PID"] for p in proxy.processes() if p["Type"] == "udp_pool" and p["PID"] != new]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        for port in ports:
            reply = udp_options(ip, port)
            assert reply is not None and reply.startswith(b"SIP/2.0 200"), port
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)
    assert "sipproxy_worker_restarts_total 1" in proxy.get("/metrics")[1]
    proxy.remember_pids()


def test_a_reload_every_second_during_calls_loses_no_call(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable, uas_factory: Callable[..., SippUas]
) -> None:
    """The short version of the soak (docs/reliability.md): a UDP and a TCP socket added and removed again by
    a reload every second while calls go through an unchanged socket; each added socket answers."""
    uas = uas_factory("udp")
    ip = loopback_ip()
    steady, other = free_port(ip), free_port(ip)
    sqlite_table.add(f"udp:{ip}:{steady}")
    proxy = proxies(
        {
            "sockets_mgm": {"db_url": sqlite_table.db_url},
            "routes": [{"match": {"ruri": "^sip:uas@"}, "forward": uas.uri}],
        }
    )
    changing = [f"udp:{ip}:{other}", f"tcp:{ip}:{other}"]
    uac = _uac(ip, steady, calls=900, rate=30)
    try:
        for i in range(24):
            started = time.monotonic()
            for row in changing:
                if i % 2 == 0:
                    sqlite_table.add(row)
                else:
                    sqlite_table.remove(row)
            result = proxy.call("sockets_reload")
            changed = result["added"] if i % 2 == 0 else result["removed"]
            assert sorted(e["socket"] for e in changed) == sorted(changing), result
            assert result["failed"] == [] and [e["socket"] for e in result["kept"]] == [f"udp:{ip}:{steady}"]
            if i % 2 == 0:
                reply = udp_options(ip, other)
                assert reply is not None and reply.startswith(b"SIP/2.0 200")
                with socket.create_connection((ip, other), timeout=10):
                    pass
            else:
                assert tcp_connect_refused(ip, other)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    finally:
        out = _finish(uac, 180)
    assert uac.returncode == 0, out[-3000:]
    assert "sipproxy_reloads_total 25" in proxy.get("/metrics")[1]


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
            # One TCP worker: every torture message over TCP reaches the worker whose survival is checked.
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
