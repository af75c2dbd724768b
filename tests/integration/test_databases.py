"""The same runtime socket management on PostgreSQL and MariaDB servers started by the test setup."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from devenv.databases import MariaDBServer, PostgresServer
from tests.integration.conftest import (
    Proxy,
    SocketsTable,
    db_init,
    free_port,
    loopback_ip,
    sipp_options,
    tcp_connect_refused,
    udp_options,
)


@pytest.fixture(params=["postgres", "mariadb"])
def server_table(request: pytest.FixtureRequest) -> Iterator[SocketsTable]:
    server: PostgresServer | MariaDBServer = request.getfixturevalue(request.param)
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = server.create_database(name)
    db_init(url)
    try:
        yield SocketsTable(url)
    finally:
        server.drop_database(name)


@pytest.mark.needs_postgres
@pytest.mark.needs_mariadb
def test_runtime_sockets_on_a_database_server(
    proxies: Callable[..., Proxy], server_table: SocketsTable
) -> None:
    ip = loopback_ip()
    port, later = free_port(ip), free_port(ip)
    server_table.add(f"udp:{ip}:{port}", tag="carrier-a", tos="IPTOS_LOWDELAY")
    proxy = proxies(
        # The database servers are tested; no static socket uses udp_workers, one TCP worker suffices.
        {"udp_workers": 1, "tcp_workers": 1, "sockets_mgm": {"db_url": server_table.db_url, "processes": 2}}
    )
    listed = proxy.call("sockets_list")
    assert [(e["socket"], e["tag"], e["tos"], e["state"]) for e in listed] == [
        (f"udp:{ip}:{port}", "carrier-a", 16, "listening")
    ]
    assert sipp_options(ip, port, "udp", count=3).returncode == 0

    server_table.add(f"tcp:{ip}:{later}", advertised="sip.example.net:5070")
    result = proxy.call("sockets_reload")
    assert [e["socket"] for e in result["added"]] == [f"tcp:{ip}:{later}"]
    assert result["added"][0]["advertised"] == "sip.example.net:5070"
    assert sipp_options(ip, later, "tcp", count=3).returncode == 0

    server_table.remove(f"udp:{ip}:{port}")
    result = proxy.call("sockets_reload")
    assert [e["socket"] for e in result["removed"]] == [f"udp:{ip}:{port}"]
    assert udp_options(ip, port, wait=2.0) is None

    # The table cannot be read: error 500 and the remaining socket stays.
    server_table.execute("ALTER TABLE sockets RENAME TO sockets_moved")
    response = proxy.mi("sockets_reload")
    assert (response["error"]["code"], response["error"]["message"]) == (500, "Could not reload sockets")
    assert sipp_options(ip, later, "tcp").returncode == 0
    server_table.execute("ALTER TABLE sockets_moved RENAME TO sockets")

    server_table.clear()
    result = proxy.call("sockets_reload")
    assert [e["socket"] for e in result["removed"]] == [f"tcp:{ip}:{later}"]
    assert tcp_connect_refused(ip, later)
