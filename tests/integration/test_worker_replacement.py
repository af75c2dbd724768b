"""A reload that a worker did not apply is not reported as applied: the worker is replaced, and until its
replacement has the socket, the socket is listed as partial with the worker named."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from tests.integration.conftest import (
    Proxy,
    SocketsTable,
    free_port,
    loopback_ip,
    pid_alive,
    udp_options,
    wait_for,
)


def test_a_stopped_pool_worker_is_replaced_and_its_socket_reported_partial_meanwhile(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    # The pool at its default size (8); a short ack timeout only so the test does not wait the default 10 s.
    proxy = proxies({"sockets_mgm": {"db_url": sqlite_table.db_url}, "worker_ack_timeout": 2})
    pool = [p for p in proxy.processes() if p["Type"] == "udp_pool"]
    assert len(pool) == 8
    victim = pool[3]
    os.kill(victim["PID"], signal.SIGSTOP)
    try:
        ip = loopback_ip()
        port = free_port(ip)
        sqlite_table.add(f"udp:{ip}:{port}")
        result = proxy.call("sockets_reload")
        [added] = result["added"]
        assert added["state"] == "partial", added
        assert f"worker {victim['Name']} (pid {victim['PID']}) did not apply the change" in added["error"]
        [listed] = proxy.call("sockets_list")
        assert listed["state"] == "partial" and victim["Name"] in listed["error"]
        # The other workers serve it meanwhile.
        assert udp_options(ip, port) is not None
    finally:
        if pid_alive(victim["PID"]):
            os.kill(victim["PID"], signal.SIGCONT)

    def replaced() -> bool:
        now = {p["Name"]: p["PID"] for p in proxy.processes()}
        listing = proxy.call("sockets_list")
        return bool(now[victim["Name"]] != victim["PID"] and listing[0]["state"] == "listening")

    wait_for(replaced, "the stopped worker replaced and the socket listening on every worker")
    assert not pid_alive(victim["PID"])
    assert "error" not in proxy.call("sockets_list")[0]
    assert udp_options(ip, port) is not None


def test_a_socket_keeps_answering_when_its_serving_worker_stops(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    """Only the pool's first worker waits on the sockets while the load is light; when it stops (here
    SIGSTOP, as a stuck worker would), a standby worker sees datagrams nobody reads and takes over."""
    ip = loopback_ip()
    port = free_port(ip)
    sqlite_table.add(f"udp:{ip}:{port}")
    proxy = proxies({"sockets_mgm": {"db_url": sqlite_table.db_url}})
    assert udp_options(ip, port) is not None
    first = next(p for p in proxy.processes() if p["Name"] == "udp-pool#0")
    os.kill(first["PID"], signal.SIGSTOP)
    try:
        for i in range(5):
            # A standby worker looks for unserved datagrams a few times a second; a loaded machine may
            # delay it past one OPTIONS' wait, so each request is retried (a UA would retransmit).
            wait_for(lambda: udp_options(ip, port, wait=1.0) is not None, f"OPTIONS #{i} answered", 30)
    finally:
        os.kill(first["PID"], signal.SIGCONT)
    assert udp_options(ip, port) is not None
