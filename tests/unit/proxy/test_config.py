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
        ({"sockets": ["tls:127.0.0.1:5061"]}, r"config: sockets\[0\]: transport tls not supported yet"),
        ({"sockets": "udp:127.0.0.1"}, "config: sockets: must be a list"),
        (
            {"sockets": ["udp:0.0.0.0:5060 tag public"]},
            r"config: sockets\[0\]: udp:0.0.0.0:5060 tag public: a wildcard address \(0.0.0.0\) needs an "
            "advertised address",
        ),
        ({"sockets": ["tcp:[::]:5060"]}, r"config: sockets\[0\]: .*a wildcard address \(::\)"),
        ({"routes": {"a": 1}}, "config: routes: must be a list"),
        ({"log_level": "loud"}, "config: log_level"),
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


def test_a_wildcard_socket_with_an_advertised_address_is_accepted() -> None:
    config = parse_config({"sockets": ["udp:0.0.0.0:5060 as 203.0.113.10 tag public"]})
    [spec] = config.sockets
    assert (spec.host, spec.advertised_host, spec.advertised_port) == ("0.0.0.0", "203.0.113.10", 5060)
