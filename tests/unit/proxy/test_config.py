"""Config validation: defaults, and errors that name the key."""

from pathlib import Path

import pytest

from sipproxy.supervisor.config import ConfigError, load_config, parse_config


def test_defaults() -> None:
    cfg = parse_config({})
    assert (cfg.udp_workers, cfg.tcp_workers) == (8, 8)
    assert cfg.sockets_mgm is None
    assert (cfg.mi.listen_host, cfg.mi.listen_port, cfg.mi.root, cfg.mi.token_file) == (
        "127.0.0.1",
        8888,
        "mi",
        None,
    )


def test_empty_values_mean_none() -> None:
    cfg = parse_config({"sockets": None, "routes": None, "sockets_mgm": None, "mi": None})
    assert cfg.sockets == () and cfg.routes == () and cfg.sockets_mgm is None and cfg.mi.listen_port == 8888


def test_sockets_mgm_defaults() -> None:
    cfg = parse_config({"sockets_mgm": {"db_url": "sqlite:///x.db"}})
    assert cfg.sockets_mgm is not None
    assert (cfg.sockets_mgm.table_name, cfg.sockets_mgm.processes, cfg.sockets_mgm.max_sockets) == (
        "sockets",
        8,
        100,
    )


def test_tls_sockets_and_static_tls_domains(tmp_path: Path) -> None:
    for name in ("edge.crt", "edge.key", "ca.pem"):
        (tmp_path / name).write_text("PEM is checked when the domains are loaded, not here\n")
    cfg = parse_config(
        {
            "sockets": ["tls:127.0.0.1", "wss:127.0.0.1:8443", "ws:[::1]:8080"],
            "tls_mgm": {
                "table_name": "tls_domains",
                "domains": [
                    {
                        "domain": "edge",
                        "type": "server",
                        "match_ip_address": "127.0.0.1:5061",
                        "match_sip_domain": "sip.example.com",
                        "certificate": str(tmp_path / "edge.crt"),
                        "private_key": str(tmp_path / "edge.key"),
                        "verify_cert": False,
                        "require_cert": False,
                    },
                    {"domain": "carriers", "ca_list": str(tmp_path / "ca.pem"), "method": "TLSv1_2-TLSv1_3"},
                ],
            },
        }
    )
    assert [s.socket_str for s in cfg.sockets] == [
        "tls:127.0.0.1:5061",
        "wss:127.0.0.1:8443",
        "ws:[::1]:8080",
    ]
    edge, carriers = cfg.tls_mgm.domains
    assert cfg.tls_mgm.table_name == "tls_domains"
    assert (edge.type, edge.verify_cert, edge.require_cert, edge.certificate) == (
        2,
        False,
        False,
        str(tmp_path / "edge.crt"),
    )
    assert (carriers.type, carriers.verify_cert, carriers.method) == (1, True, "TLSv1_2-TLSv1_3")
    assert parse_config({}).tls_mgm.table_name == "tls_mgm"


def test_full_config(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(
        """
sockets:
  - udp:127.0.0.1:5060
  - tcp:127.0.0.1:5060 as 203.0.113.1:5060 tag core use_workers 2
udp_workers: 2
tcp_workers: 3
sockets_mgm: {db_url: "postgres://u:p@127.0.0.1/db", table_name: socks, processes: 4, max_sockets: 10}
mi: {listen: "127.0.0.2:9999", root: /rpc/, token_file: /run/token}
routes:
  - match: {}
    reply: 404
"""
    )
    cfg = load_config(path)
    assert [s.socket_str for s in cfg.sockets] == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
    assert cfg.sockets[1].tag == "core"
    assert cfg.sockets_mgm is not None and cfg.sockets_mgm.processes == 4
    assert (cfg.mi.listen_host, cfg.mi.listen_port, cfg.mi.root) == ("127.0.0.2", 9999, "rpc")
    assert len(cfg.routes) == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"udp_worker": 2}, "config: udp_worker: unknown key"),
        ({"udp_workers": 0}, "config: udp_workers: must be an integer >= 1"),
        ({"tcp_workers": "8"}, "config: tcp_workers: must be an integer >= 1"),
        (
            {"sockets_mgm": {"db_url": "sqlite:///x", "processes": 0}},
            "config: sockets_mgm.processes: must be",
        ),
        ({"sockets_mgm": {"db_url": "sqlite:///x", "max_sockets": True}}, "config: sockets_mgm.max_sockets"),
        ({"sockets_mgm": {"db_url": "sqlite:///x", "size": 3}}, "config: sockets_mgm.size: unknown key"),
        ({"sockets_mgm": {"processes": 2}}, "config: sockets_mgm.db_url: is required"),
        ({"sockets_mgm": {"db_url": "oracle://x/y"}}, "config: sockets_mgm.db_url: .*unsupported scheme"),
        ({"mi": {"listen": "8888"}}, "config: mi.listen: must be host:port"),
        ({"mi": {"port": 1}}, "config: mi.port: unknown key"),
        ({"sockets": ["udp:127.0.0.1:0"]}, r"config: sockets\[0\]: .*out of range"),
        ({"tls_mgm": {"tables": "x"}}, r"config: tls_mgm.tables: unknown key"),
        ({"tls_mgm": {"domains": {}}}, r"config: tls_mgm.domains: must be a list"),
        ({"tls_mgm": {"domains": [{"type": "server"}]}}, r"config: tls_mgm.domains\[0\].domain: is required"),
        (
            {"tls_mgm": {"domains": [{"domain": "a", "type": "both"}]}},
            r"config: tls_mgm.domains\[0\].type: must be server or client",
        ),
        (
            {"tls_mgm": {"domains": [{"domain": "a", "type": "server"}]}},
            r"config: tls_mgm.domains\[0\]: a server domain needs certificate and private_key",
        ),
        (
            {"tls_mgm": {"domains": [{"domain": "a", "ca_list": "/nonexistent/ca.pem"}]}},
            r"config: tls_mgm.domains\[0\].ca_list: cannot read /nonexistent/ca.pem",
        ),
        (
            {"tls_mgm": {"domains": [{"domain": "a", "verify_cert": "yes"}]}},
            r"config: tls_mgm.domains\[0\].verify_cert: must be true or false",
        ),
        (
            {"tls_mgm": {"domains": [{"domain": "a"}, {"domain": "a", "type": "client"}]}},
            r"config: tls_mgm.domains\[1\].domain: a client domain 'a' is already defined",
        ),
        (
            {"tls_mgm": {"domains": [{"domain": "a", "certificate_file": "/x"}]}},
            r"config: tls_mgm.domains\[0\].certificate_file: unknown key",
        ),
        ({"sockets": "udp:127.0.0.1"}, "config: sockets: must be a list"),
        (
            {"sockets": ["udp:0.0.0.0:5060 tag public"]},
            r"config: sockets\[0\]: udp:0.0.0.0:5060 tag public: a wildcard address \(0.0.0.0\) needs an "
            "advertised address",
        ),
        ({"sockets": ["tcp:[::]:5060"]}, r"config: sockets\[0\]: .*a wildcard address \(::\)"),
        ({"routes": {"a": 1}}, "config: routes: must be a list"),
        ({"log_level": "loud"}, "config: log_level"),
        ({"mi": {"tls": {"private_key": "/k"}}}, "config: mi.tls.certificate: is required"),
        ({"mi": {"tls": {"certificate": "/c"}}}, "config: mi.tls.private_key: is required"),
        (
            {"mi": {"tls": {"certificate": "/c", "private_key": "/k", "ca": "/a"}}},
            "config: mi.tls.ca: unknown",
        ),
        ({"mi": {"tls": {"certificate": "/c", "private_key": "/k", "client_ca": ""}}}, "mi.tls.client_ca"),
        ({"mi": {"tls": "on"}}, "config: mi.tls: must be a mapping"),
        ({"metrics": {}}, "config: metrics.listen: is required"),
        ({"metrics": {"listen": "x"}}, "config: metrics.listen: must be host:port"),
        ({"metrics": {"listen": "127.0.0.1:8888"}}, "config: metrics.listen: must differ from mi.listen"),
        ({"metrics": {"listen": "127.0.0.1:9", "path": "/m"}}, "config: metrics.path: unknown key"),
    ],
)
def test_errors_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sockets: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_bad_routes_are_reported_under_the_routes_key() -> None:
    with pytest.raises(ConfigError, match=r"config: routes: .*routes\[0\]"):
        parse_config({"routes": [{"match": {}, "frobnicate": 1}]})


def test_the_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[3]
    cfg = load_config(root / "examples" / "proxy.yaml")
    assert [s.socket_str for s in cfg.sockets] == ["udp:127.0.0.1:5060"]
    assert cfg.sockets_mgm is not None and cfg.sockets_mgm.db_url == "sqlite:///.dev/proxy.db"
    assert (cfg.mi.listen_host, cfg.mi.listen_port) == ("127.0.0.1", 8888)


def test_mi_tls_and_the_metrics_listener() -> None:
    cfg = parse_config(
        {
            "mi": {"listen": "[fd00::7]:8888", "tls": {"certificate": "/c.pem", "private_key": "/k.pem"}},
            "metrics": {"listen": "[fd00::7]:8889"},
        }
    )
    assert cfg.mi.tls is not None
    assert (cfg.mi.tls.certificate, cfg.mi.tls.private_key, cfg.mi.tls.client_ca) == (
        "/c.pem",
        "/k.pem",
        None,
    )
    assert cfg.metrics is not None and (cfg.metrics.listen_host, cfg.metrics.listen_port) == ("fd00::7", 8889)
    with_ca = parse_config({"mi": {"tls": {"certificate": "/c", "private_key": "/k", "client_ca": "/ca"}}})
    assert with_ca.mi.tls is not None and with_ca.mi.tls.client_ca == "/ca"
    assert parse_config({}).metrics is None and parse_config({}).mi.tls is None


def test_a_wildcard_socket_with_an_advertised_address_is_accepted() -> None:
    config = parse_config({"sockets": ["udp:0.0.0.0:5060 as 203.0.113.10 tag public"]})
    [spec] = config.sockets
    assert (spec.host, spec.advertised_host, spec.advertised_port) == ("0.0.0.0", "203.0.113.10", 5060)
