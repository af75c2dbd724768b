"""The proxy's YAML config: keys, defaults and validation. Errors name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sipproxy.shared.db_url import to_sqlalchemy_url
from sipproxy.shared.socketspec import RowError, SocketSpec, parse_static_socket

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config: {key}: {problem}" if key else f"config: {problem}")


@dataclass(frozen=True)
class SocketsMgm:
    db_url: str
    table_name: str = "sockets"
    processes: int = 8
    max_sockets: int = 100


@dataclass(frozen=True)
class MiConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8888
    root: str = "mi"
    token_file: str | None = None


@dataclass(frozen=True)
class Config:
    sockets: tuple[SocketSpec, ...] = ()
    udp_workers: int = 8
    tcp_workers: int = 8
    sockets_mgm: SocketsMgm | None = None
    mi: MiConfig = field(default_factory=MiConfig)
    routes: tuple[Any, ...] = ()  # raw rules, parsed by sipproxy.sip.routing in every worker
    log_level: str = "info"
    tcp_idle_timeout: float = 120.0
    # A worker that has not applied a socket change this long after it was sent is replaced.
    worker_ack_timeout: float = 10.0


def _int(value: object, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, f"must be an integer >= {minimum}")
    return value


def _str(value: object, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, "must be a non-empty string")
    return value.strip()


def _mapping(value: object, key: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a mapping")
    for name in value:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}" if key else str(name), "unknown key")
    return value


def _listen(text: str, key: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(key, "must be host:port")
    return host, int(port)


_TOP = {
    "sockets",
    "udp_workers",
    "tcp_workers",
    "sockets_mgm",
    "mi",
    "routes",
    "log_level",
    "tcp_idle_timeout",
    "worker_ack_timeout",
}


def parse_config(data: object) -> Config:
    if data is None:
        data = {}
    top = _mapping(data, "", _TOP)
    sockets: list[SocketSpec] = []
    raw_sockets = top.get("sockets") or []
    if not isinstance(raw_sockets, list):
        raise ConfigError("sockets", "must be a list")
    for i, text in enumerate(raw_sockets):
        if not isinstance(text, str):
            raise ConfigError(f"sockets[{i}]", "must be a string such as udp:127.0.0.1:5060")
        try:
            spec = parse_static_socket(text)
        except RowError as exc:
            raise ConfigError(f"sockets[{i}]", str(exc)) from None
        if not spec.supported:
            raise ConfigError(f"sockets[{i}]", f"transport {spec.proto} not supported yet")
        sockets.append(spec)
    mgm = None
    if top.get("sockets_mgm") is not None:
        m = _mapping(top["sockets_mgm"], "sockets_mgm", {"db_url", "table_name", "processes", "max_sockets"})
        if "db_url" not in m:
            raise ConfigError("sockets_mgm.db_url", "is required")
        db_url = _str(m["db_url"], "sockets_mgm.db_url")
        try:
            to_sqlalchemy_url(db_url)
        except ValueError as exc:
            raise ConfigError("sockets_mgm.db_url", str(exc)) from None
        mgm = SocketsMgm(
            db_url=db_url,
            table_name=_str(m.get("table_name", "sockets"), "sockets_mgm.table_name"),
            processes=_int(m.get("processes", 8), "sockets_mgm.processes"),
            max_sockets=_int(m.get("max_sockets", 100), "sockets_mgm.max_sockets"),
        )
    mi = MiConfig()
    if top.get("mi") is not None:
        m = _mapping(top["mi"], "mi", {"listen", "root", "token_file"})
        host, port = _listen(_str(m.get("listen", "127.0.0.1:8888"), "mi.listen"), "mi.listen")
        root = _str(m.get("root", "mi"), "mi.root").strip("/")
        if not root:
            raise ConfigError("mi.root", "must be a non-empty path")
        token_file = m.get("token_file")
        if token_file is not None:
            token_file = _str(token_file, "mi.token_file")
        mi = MiConfig(listen_host=host, listen_port=port, root=root, token_file=token_file)
    routes = top.get("routes", [])
    if routes is None:
        routes = []
    if not isinstance(routes, list):
        raise ConfigError("routes", "must be a list")
    try:
        from sipproxy.sip.routing import RouteConfigError, parse_routes
    except ImportError:  # the SIP core not installed yet: workers will reject bad routes
        pass
    else:
        try:
            parse_routes(routes)
        except RouteConfigError as exc:
            raise ConfigError("routes", str(exc)) from None
    log_level = top.get("log_level", "info")
    if log_level not in LOG_LEVELS:
        raise ConfigError("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    idle = top.get("tcp_idle_timeout", 120.0)
    if isinstance(idle, bool) or not isinstance(idle, int | float) or idle <= 0:
        raise ConfigError("tcp_idle_timeout", "must be a number of seconds > 0")
    ack = top.get("worker_ack_timeout", 10.0)
    if isinstance(ack, bool) or not isinstance(ack, int | float) or ack <= 0:
        raise ConfigError("worker_ack_timeout", "must be a number of seconds > 0")
    return Config(
        sockets=tuple(sockets),
        udp_workers=_int(top.get("udp_workers", 8), "udp_workers"),
        tcp_workers=_int(top.get("tcp_workers", 8), "tcp_workers"),
        sockets_mgm=mgm,
        mi=mi,
        routes=tuple(routes),
        log_level=log_level,
        tcp_idle_timeout=float(idle),
        worker_ack_timeout=float(ack),
    )


def load_config(path: str | Path) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from None
    return parse_config(data)
