"""Handover (config `handover`): a new proxy of the same fleet on the same host takes the running one's
sockets, and the old one is stopped, while calls flow; what a rolling update of the hostNetwork DaemonSet
does.

Also what handover must not change: an address held by anyone else is still a conflict, and only a process of
the proxy's own uid takes part in a handover."""

from __future__ import annotations

import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.conftest import (
    SIPP_TOLERATE_REORDER,
    Proxy,
    SippUas,
    SocketsTable,
    free_port,
    loopback_ip,
    pid_alive,
    sip_options_bytes,
    udp_options,
    wait_for,
)
from tests.integration.test_mi_and_cli import run_cli

NOBODY = 65534


def fleet_config(ip: str, db_url: str, **extra: Any) -> dict[str, Any]:
    """One config for both generations: the same sockets, MI and metrics addresses, and handover name."""
    return {
        "udp_workers": 2,
        # One TCP worker: the TCP socket handed over is checked to be served, not the pool's spreading.
        "tcp_workers": 1,
        "sockets_mgm": {"db_url": db_url, "processes": 2},
        "mi": {"listen": f"{ip}:{free_port(ip)}"},
        "metrics": {"listen": f"{ip}:{free_port(ip)}"},
        "handover": {"name": f"test-{ip}"},
        **extra,
    }


def serving_supervisor(proxy: Proxy) -> int:
    """The pid of the supervisor that answers the fleet's MI address (old or new, whoever holds it)."""
    return int(proxy.processes()[0]["PID"])


def take_over(proxies: Callable[..., Proxy], config: dict[str, Any]) -> Proxy:
    """Start the next generation and wait until it holds the MI and reports ready."""
    new = proxies(config, start=False)
    new.start(wait_ready=False)
    assert new.proc is not None
    pid = new.proc.pid

    def took_over() -> bool:
        assert new.proc is not None
        if new.proc.poll() is not None:
            raise AssertionError(f"new proxy exited with {new.proc.returncode}:\n{new.log()}")
        try:
            return serving_supervisor(new) == pid and new.get("/readyz")[0] == 200
        except (AssertionError, OSError):
            return False

    wait_for(took_over, f"the new proxy to take over\n{new.log()}", 90)
    new.remember_pids()
    return new


def stop_old(old: Proxy) -> None:
    """SIGTERM the old generation (what the kubelet does once the new pod is Ready); it exits 0."""
    assert old.proc is not None
    old.proc.send_signal(signal.SIGTERM)
    assert old.proc.wait(timeout=60) == 0, old.log()


def sipp_calls(ip: str, port: int, calls: int, rate: int) -> subprocess.Popen[str]:
    local = loopback_ip()
    return subprocess.Popen(
        [
            "sipp", "-sn", "uac", f"{ip}:{port}", "-s", "uas", "-i", local, "-p", str(free_port(local)),
            "-m", str(calls), "-r", str(rate), "-timeout", "180s", "-timeout_error", "-nostdin",
            *SIPP_TOLERATE_REORDER,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def test_a_new_proxy_takes_the_sockets_over_under_load_and_no_call_fails(
    proxies: Callable[..., Proxy],
    sqlite_table: SocketsTable,
    uas_factory: Callable[..., SippUas],
    tmp_path: Path,
) -> None:
    uas = uas_factory("udp")
    ip = loopback_ip()
    static_port, dynamic_port = free_port(ip), free_port(ip)
    sqlite_table.add(f"udp:{ip}:{dynamic_port}")
    config = fleet_config(
        ip,
        sqlite_table.db_url,
        sockets=[f"udp:{ip}:{static_port}"],
        routes=[{"match": {"ruri": "^sip:uas@"}, "forward": uas.uri}],
    )
    # Each generation's own ready file (a pod's /tmp): readiness per process, though they share ports.
    old_ready, new_ready = tmp_path / "old-ready", tmp_path / "new-ready"
    old = proxies({**config, "ready_file": str(old_ready)})
    assert old.proc is not None
    wait_for(old_ready.exists, "the old proxy's ready file", 10)
    uacs = [sipp_calls(ip, port, calls=900, rate=60) for port in (static_port, dynamic_port)]
    try:
        time.sleep(3)
        new = take_over(proxies, {**config, "ready_file": str(new_ready)})
        assert new.proc is not None
        # Both serve the same sockets now: both ready, so the node never has no ready proxy.
        wait_for(new_ready.exists, "the new proxy's ready file", 10)
        assert old_ready.exists()
        stop_old(old)
        assert not old_ready.exists() and new_ready.exists()
        outputs = [uac.communicate(timeout=240)[0] for uac in uacs]
    finally:
        for uac in uacs:
            if uac.poll() is None:
                uac.kill()
                uac.wait()
    for uac, out in zip(uacs, outputs, strict=True):
        assert uac.returncode == 0, out[-3000:]
    assert f"sockets handed to pid {new.proc.pid}" in old.log()
    assert f"taking 2 sockets over from pid {old.proc.pid}" in new.log()
    assert {e["socket"]: e["state"] for e in new.call("sockets_list")} == {
        f"udp:{ip}:{dynamic_port}": "listening"
    }


def tcp_options(ip: str, port: int) -> bytes:
    """One OPTIONS over a new TCP connection; the response head, or raises OSError."""
    with socket.create_connection((ip, port), timeout=10) as conn:
        conn.sendall(sip_options_bytes(ip, port, conn.getsockname(), "TCP"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65535)
            if not chunk:
                raise ConnectionError(f"closed after {data!r}")
            data += chunk
        return data


def test_tcp_connections_are_accepted_throughout_and_the_old_ones_close_with_the_old_proxy(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    ip = loopback_ip()
    port = free_port(ip)
    config = fleet_config(ip, sqlite_table.db_url, sockets=[f"tcp:{ip}:{port}"])
    old = proxies(config)
    # A connection the old proxy accepted before the handover.
    established = socket.create_connection((ip, port), timeout=10)
    established.sendall(sip_options_bytes(ip, port, established.getsockname(), "TCP"))
    assert established.recv(65535).startswith(b"SIP/2.0 200")
    outcomes: list[tuple[str, str]] = []  # (phase, outcome): "answered", or what went wrong
    phase = "before"
    done = threading.Event()

    def keep_connecting() -> None:
        order = ("before", "overlap", "stopping", "after")
        while not done.is_set():
            started_in = phase
            try:
                head = tcp_options(ip, port)
                outcome = "answered" if head.startswith(b"SIP/2.0 200") else head[:40].decode()
            except OSError as exc:
                outcome = repr(exc)
            # A connection the old proxy accepted just before it stopped ends with it, answered or not: one
            # that was open while the old proxy stopped is judged apart.
            ended_in = phase
            spans_stop = order.index(started_in) <= order.index("stopping") <= order.index(ended_in)
            outcomes.append(("stopping" if spans_stop else started_in, outcome))
            time.sleep(0.02)

    client = threading.Thread(target=keep_connecting)
    client.start()
    try:
        time.sleep(1)
        phase = "overlap"
        take_over(proxies, config)
        time.sleep(1)
        phase = "stopping"
        stop_old(old)
        phase = "after"
        time.sleep(2)
    finally:
        done.set()
        client.join(30)
    failed = [(p, o) for p, o in outcomes if o != "answered" and p != "stopping"]
    assert failed == [], failed
    assert {p for p, o in outcomes if o == "answered"} >= {"before", "overlap", "after"}, outcomes
    # Not once was a connection refused: the listening socket never closed.
    assert not [o for _p, o in outcomes if "ConnectionRefused" in o], outcomes
    # The old proxy's connection ended with it; the client reconnects, to the new proxy.
    established.settimeout(10)
    try:
        assert established.recv(65535) == b""
    except ConnectionResetError:
        pass
    established.close()
    assert tcp_options(ip, port).startswith(b"SIP/2.0 200")


def test_a_stranger_holding_a_static_address_still_stops_start_up(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable, tmp_path: Any
) -> None:
    ip = loopback_ip()
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind((ip, 0))
    port = holder.getsockname()[1]
    try:
        config = tmp_path / "p.yaml"
        config.write_text(
            # A proxy that must fail at start-up (its port is held): one worker is all it would start.
            f"sockets: ['udp:{ip}:{port}']\nudp_workers: 1\nmi: {{listen: '{ip}:{free_port(ip)}'}}\n"
            f"handover: {{name: 'test-{ip}'}}\n"
        )
        result = run_cli("--config", str(config))
        assert result.returncode == 1
        assert "Address already in use" in result.stderr
        assert "no older proxy of this fleet on this node" in result.stderr
    finally:
        holder.close()


def test_a_stranger_holding_a_dynamic_address_is_reported_failed_beside_a_handover(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    ip = loopback_ip()
    ours, busy = free_port(ip), free_port(ip)
    sqlite_table.add(f"udp:{ip}:{ours}")
    config = fleet_config(ip, sqlite_table.db_url)
    old = proxies(config)
    # Taken by someone else after the old proxy started: the table asks for it, nobody of ours has it.
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind((ip, busy))
    try:
        sqlite_table.add(f"udp:{ip}:{busy}")
        new = take_over(proxies, config)
        stop_old(old)
        new_listing = {e["socket"]: e for e in new.call("sockets_list")}
        assert new_listing[f"udp:{ip}:{ours}"]["state"] == "listening"
        assert new_listing[f"udp:{ip}:{busy}"]["state"] == "failed"
        assert new_listing[f"udp:{ip}:{busy}"]["error"] == "[Errno 98] Address already in use"
        assert udp_options(ip, ours) is not None
    finally:
        holder.close()


STRANGER_PREDECESSOR = textwrap.dedent(
    """
    import socket, sys
    ip, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((ip, port))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind("\\0sipsockets-handover/" + name)
    server.listen(4)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        try:
            offer = '{"op":"socket","role":"sip","key":["udp","%s",%d,false]}' % (ip, port)
            socket.send_fds(conn, [offer.encode()], [udp.fileno()])
            conn.send(b'{"op":"offered","pid":0}')
        except OSError:
            pass
    """
)


def test_a_predecessor_of_another_uid_is_refused_and_its_address_is_a_conflict(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    """A process of another uid holds both the fleet's handover name and the proxy's address, and offers the
    socket: the proxy takes nothing from it, and its bind fails as for any stranger."""
    ip = loopback_ip()
    port = free_port(ip)
    name = f"test-{ip}"
    stranger = subprocess.Popen(
        ["/usr/bin/python3", "-c", STRANGER_PREDECESSOR, ip, str(port), name],
        user=NOBODY,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stranger.stdout is not None and stranger.stdout.readline().strip() == "ready"
        proxy = proxies(fleet_config(ip, sqlite_table.db_url, sockets=[f"udp:{ip}:{port}"]), start=False)
        proxy.start(wait_ready=False)
        assert proxy.proc is not None
        assert proxy.proc.wait(timeout=60) == 1
        proxy.proc = None  # its exit code is the point here
        log = proxy.log()
        assert f"is not ours: it runs as uid {NOBODY}, not 0 as this proxy does" in log, log
        assert "Address already in use" in log
    finally:
        stranger.kill()
        stranger.wait()


STRANGER_SUCCESSOR = textwrap.dedent(
    """
    import socket, sys
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect("\\0sipsockets-handover/" + sys.argv[1])
    conn.settimeout(20)
    got = 0
    while True:
        data, fds, _f, _a = socket.recv_fds(conn, 4096, 4)
        got += len(fds)
        if not data:
            break
    print("descriptors", got)
    """
)


def test_a_successor_of_another_uid_gets_nothing_and_the_proxy_stays_ready(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    ip = loopback_ip()
    port = free_port(ip)
    config = fleet_config(ip, sqlite_table.db_url, sockets=[f"udp:{ip}:{port}"])
    proxy = proxies(config)
    result = subprocess.run(
        ["/usr/bin/python3", "-c", STRANGER_SUCCESSOR, config["handover"]["name"]],
        user=NOBODY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip() == "descriptors 0", result
    assert "refused pid" in proxy.log() and f"runs as uid {NOBODY}" in proxy.log()
    assert proxy.get("/readyz")[0] == 200
    assert udp_options(ip, port) is not None


def test_when_the_new_proxy_dies_the_old_one_takes_its_mi_back_and_is_ready_again(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    ip = loopback_ip()
    port = free_port(ip)
    config = fleet_config(ip, sqlite_table.db_url, sockets=[f"udp:{ip}:{port}"])
    old = proxies(config)
    assert old.proc is not None
    old_pid = old.proc.pid
    new = take_over(proxies, config)
    assert new.proc is not None
    new.proc.send_signal(signal.SIGKILL)
    new.proc.wait()
    new.proc = None  # killed on purpose
    wait_for(lambda: not [p for p in new.seen_pids if pid_alive(p)], "the new proxy's workers to exit", 30)

    def old_back() -> bool:
        try:
            return serving_supervisor(old) == old_pid and old.get("/readyz")[0] == 200
        except (AssertionError, OSError):
            return False

    wait_for(old_back, f"the old proxy ready again\n{old.log()}", 60)
    assert "MI and metrics listeners taken back" in old.log()
    assert udp_options(ip, port) is not None
    # And a later generation takes over from it as usual.
    newer = take_over(proxies, config)
    assert newer.proc is not None and f"sockets handed to pid {newer.proc.pid}" in old.log()
    stop_old(old)
    assert udp_options(ip, port) is not None


def test_handover_name_is_checked_by_the_config_parser(tmp_path: Any) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(f"handover: {{name: '{'x' * 200}'}}\n")
    result = run_cli("--config", str(config))
    assert result.returncode == 2 and "config: handover.name:" in result.stderr, result.stderr
