"""MI over the real process (token, opensips-cli framing, DB unreadable) and the command line contracts."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import Proxy, SocketsTable, free_port, loopback_ip, pid_alive, udp_options


def test_token_is_enforced(proxies: Callable[..., Proxy]) -> None:
    # The MI is what this tests; worker counts do not change its answers and one keeps start-up short.
    proxy = proxies({"udp_workers": 1}, token="t0ken-123")
    body = json.dumps({"jsonrpc": "2.0", "method": "version", "id": 1}).encode()
    assert proxy.http(body, {"Authorization": ""})[0] == 401
    assert proxy.http(body, {"Authorization": "Bearer wrong"})[0] == 401
    status, reply = proxy.http(body)
    assert status == 200 and json.loads(reply)["result"]["Server"].startswith("sipproxy ")
    # Probes stay open for the kubelet.
    assert proxy.get("/healthz")[0] == 200 and proxy.get("/readyz")[0] == 200


def test_opensips_cli_style_requests(proxies: Callable[..., Proxy], sqlite_table: SocketsTable) -> None:
    proxy = proxies(
        # The MI and CLI are what this tests; one worker per pool keeps start-up short and changes no answer.
        {"udp_workers": 1, "tcp_workers": 1, "sockets_mgm": {"db_url": sqlite_table.db_url, "processes": 1}}
    )
    for method in ("sockets_list", "sockets_reload", "ps", "uptime", "version", "get_statistics"):
        response = proxy.mi(method, params={}, ident="4f2c9a")
        assert response["id"] == "4f2c9a" and "result" in response, response
    assert proxy.mi("sockets_mgm:list", params=[])["result"] == []
    assert proxy.mi("no_such_command")["error"]["code"] == -32601
    status, raw = proxy.http(b"{broken")
    assert status == 200 and json.loads(raw)["error"]["code"] == -32700
    assert proxy.http(json.dumps({"jsonrpc": "2.0", "method": "version"}).encode())[0] == 202
    stats = proxy.call("get_statistics", {"statistics": ["core:"]})
    assert set(stats) >= {"core:rcv_packets", "core:fwd_packets", "core:drop_packets"}
    assert proxy.call("uptime")["Up time"].endswith("[sec]")


def test_unreadable_database_leaves_sockets_as_they_were(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable, tmp_path: Path
) -> None:
    proxy = proxies(
        # The MI and CLI are what this tests; one worker per pool keeps start-up short and changes no answer.
        {"udp_workers": 1, "tcp_workers": 1, "sockets_mgm": {"db_url": sqlite_table.db_url, "processes": 1}}
    )
    ip = loopback_ip()
    port = free_port(ip)
    sqlite_table.add(f"udp:{ip}:{port}")
    assert len(proxy.call("sockets_reload")["added"]) == 1
    before = proxy.call("sockets_list")

    db = sqlite3.connect(tmp_path / "proxy.db")
    db.execute("ALTER TABLE sockets RENAME TO sockets_gone")
    db.commit()
    db.close()
    response = proxy.mi("sockets_reload")
    assert response["error"]["code"] == 500
    assert response["error"]["message"] == "Could not reload sockets"
    assert proxy.call("sockets_list") == before
    reply = udp_options(ip, port)
    assert reply is not None and reply.startswith(b"SIP/2.0 200")
    assert "sipproxy_reload_failures_total 1" in proxy.get("/metrics")[1]


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sipproxy.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        check=False,
    )


def test_bad_config_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("sockets_mgm: {db_url: 'sqlite:///x.db', processes: 0}\n")
    result = run_cli("--config", str(config))
    assert result.returncode != 0
    assert "config: sockets_mgm.processes: must be an integer >= 1" in result.stderr
    config.write_text("mi: {listen: '127.0.0.1:8888', colour: blue}\n")
    result = run_cli("--config", str(config))
    assert result.returncode != 0 and "mi.colour: unknown key" in result.stderr


def test_static_socket_bind_failure_stops_start_up(tmp_path: Path) -> None:
    ip = loopback_ip()
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind((ip, 0))
    port = holder.getsockname()[1]
    try:
        config = tmp_path / "p.yaml"
        mi_port = free_port(ip)
        # The command line is what this tests; one worker keeps the proxy's start short.
        config.write_text(f"sockets: ['udp:{ip}:{port}']\nudp_workers: 1\nmi: {{listen: '{ip}:{mi_port}'}}\n")
        result = run_cli("--config", str(config))
        assert result.returncode == 1
        assert "Address already in use" in result.stderr
    finally:
        holder.close()


def test_db_init_creates_tables_once_and_never_alters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    first = run_cli("db", "init", "--db-url", url)
    assert first.returncode == 0 and "created" in first.stdout
    db = sqlite3.connect(tmp_path / "fresh.db")
    assert db.execute("SELECT table_name, table_version FROM version").fetchall() == [
        ("sockets", 1),
        ("tls_mgm", 3),
    ]
    columns = [r[1] for r in db.execute("PRAGMA table_info(sockets)")]
    assert columns == ["id", "socket", "advertised", "tag", "flags", "tos"]
    tls_columns = [r[1] for r in db.execute("PRAGMA table_info(tls_mgm)")]
    assert tls_columns[:5] == ["id", "domain", "match_ip_address", "match_sip_domain", "type"]
    db.execute("ALTER TABLE sockets ADD COLUMN owner TEXT")
    db.execute("INSERT INTO sockets (socket, owner) VALUES ('udp:127.0.0.1:5060', 'me')")
    db.execute("ALTER TABLE tls_mgm ADD COLUMN owner TEXT")
    db.execute("INSERT INTO tls_mgm (domain, type, owner) VALUES ('edge', 2, 'me')")
    db.commit()
    second = run_cli("db", "init", "--db-url", url)
    assert second.returncode == 0 and "already present" in second.stdout
    assert db.execute("SELECT socket, owner FROM sockets").fetchall() == [("udp:127.0.0.1:5060", "me")]
    assert db.execute("SELECT domain, owner FROM tls_mgm").fetchall() == [("edge", "me")]
    db.close()
    custom = run_cli(
        "db", "init", "--db-url", url, "--table-name", "edge_sockets", "--tls-table-name", "edge_tls"
    )
    assert custom.returncode == 0
    db = sqlite3.connect(tmp_path / "fresh.db")
    assert sorted(db.execute("SELECT table_name, table_version FROM version").fetchall()) == [
        ("edge_sockets", 1),
        ("edge_tls", 3),
        ("sockets", 1),
        ("tls_mgm", 3),
    ]
    db.close()
    bad = run_cli("db", "init", "--db-url", "oracle://x/y")
    assert bad.returncode != 0 and "unsupported scheme" in bad.stderr


def test_db_init_reads_the_url_from_a_file_or_the_environment(tmp_path: Path) -> None:
    """As the chart runs it: the URL (and its password) in a mounted Secret file, not on the command line."""

    def tables(name: str) -> list[tuple[str, int]]:
        db = sqlite3.connect(tmp_path / name)
        try:
            return db.execute("SELECT table_name, table_version FROM version").fetchall()
        finally:
            db.close()

    url_file = tmp_path / "db-url"
    url_file.write_text(f"sqlite:///{tmp_path}/from-file.db\n")  # a Secret's value may end in a newline
    by_flag = run_cli("db", "init", "--db-url-file", str(url_file), "--table-name", "edge")
    assert by_flag.returncode == 0, by_flag.stderr
    assert tables("from-file.db") == [("edge", 1), ("tls_mgm", 3)]
    by_file_env = run_cli("db", "init", env={"SIPSOCKETS_DB_URL_FILE": str(url_file)})
    assert by_file_env.returncode == 0, by_file_env.stderr
    assert sorted(tables("from-file.db")) == [("edge", 1), ("sockets", 1), ("tls_mgm", 3)]
    by_env = run_cli("db", "init", env={"SIPSOCKETS_DB_URL": f"sqlite:///{tmp_path}/from-env.db"})
    assert by_env.returncode == 0, by_env.stderr
    assert tables("from-env.db") == [("sockets", 1), ("tls_mgm", 3)]

    missing = run_cli("db", "init", "--db-url-file", str(tmp_path / "absent"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    url_file.write_text("\n")
    empty = run_cli("db", "init", "--db-url-file", str(url_file))
    assert empty.returncode == 2 and "is empty" in empty.stderr
    clean = {"SIPSOCKETS_DB_URL": "", "SIPSOCKETS_DB_URL_FILE": ""}
    none = run_cli("db", "init", env=clean)
    assert none.returncode == 2 and "a database URL is required" in none.stderr
    both = run_cli("db", "init", "--db-url", "sqlite:///x.db", "--db-url-file", str(url_file))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_sigterm_stops_every_process_and_releases_the_sockets(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    ip = loopback_ip()
    static_port, dyn_port = free_port(ip), free_port(ip)
    mgm = {"db_url": sqlite_table.db_url, "processes": 2}
    sqlite_table.add(f"tcp:{ip}:{dyn_port}")
    proxy = proxies(
        {"sockets": [f"udp:{ip}:{static_port}"], "udp_workers": 2, "tcp_workers": 2, "sockets_mgm": mgm}
    )
    pids = [p["PID"] for p in proxy.processes()]
    assert len(pids) == 7 and all(pid_alive(p) for p in pids)
    assert proxy.stop() == 0
    assert not any(pid_alive(p) for p in pids)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind((ip, static_port))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        t.bind((ip, dyn_port))


def test_the_sockets_mgm_commands_answer_by_their_newer_names_too(
    proxies: Callable[..., Proxy], sqlite_table: SocketsTable
) -> None:
    """OpenSIPS after 3.6 calls them sockets_mgm:reload and sockets_mgm:list; either name does the same."""
    proxy = proxies(
        # The MI and CLI are what this tests; one worker per pool keeps start-up short and changes no answer.
        {"udp_workers": 1, "tcp_workers": 1, "sockets_mgm": {"db_url": sqlite_table.db_url, "processes": 1}}
    )
    ip = loopback_ip()
    port = free_port(ip)
    sqlite_table.add(f"udp:{ip}:{port}")
    added = proxy.call("sockets_mgm:reload")["added"]
    assert [e["socket"] for e in added] == [f"udp:{ip}:{port}"]
    assert proxy.call("sockets_reload")["kept"] == added
    assert proxy.call("sockets_mgm:list") == proxy.call("sockets_list") == added
    reply = udp_options(ip, port)
    assert reply is not None and reply.startswith(b"SIP/2.0 200")
