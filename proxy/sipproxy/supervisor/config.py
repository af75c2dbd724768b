"""The proxy's YAML config: keys, defaults and validation. Errors name the key."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from sipproxy.shared.db_url import to_sqlalchemy_url
from sipproxy.shared.socketspec import RowError, SocketSpec, parse_static_socket, unreachable_reason

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
class StaticTlsDomain:
    """A TLS domain of the config file: the tls_mgm row's fields, with file paths for the PEM columns
    (read at start and at every tls_reload, so a renewed certificate file is picked up by a reload)."""

    domain: str
    type: int  # 1 client, 2 server (tls_domains.CLIENT_DOMAIN, SERVER_DOMAIN)
    match_ip_address: str | None = None
    match_sip_domain: str | None = None
    method: str | None = None
    verify_cert: bool = True
    require_cert: bool = True
    certificate: str | None = None  # file paths
    private_key: str | None = None
    ca_list: str | None = None
    ca_dir: str | None = None
    cipher_list: str | None = None
    dh_params: str | None = None
    ec_curve: str | None = None


@dataclass(frozen=True)
class TlsMgm:
    table_name: str = "tls_mgm"  # read from sockets_mgm.db_url when sockets_mgm is configured
    domains: tuple[StaticTlsDomain, ...] = ()


@dataclass(frozen=True)
class MiTls:
    """The MI over HTTPS: the proxy's certificate and key (PEM files), and with `client_ca` mutual TLS (a
    client without a certificate signed by that CA is refused during the handshake)."""

    certificate: str
    private_key: str
    client_ca: str | None = None


@dataclass(frozen=True)
class MiConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8888
    root: str = "mi"
    token_file: str | None = None
    tls: MiTls | None = None


@dataclass(frozen=True)
class MetricsConfig:
    """A plain-HTTP listener of its own for /metrics, /healthz and /readyz (Prometheus and the kubelet's
    probes need no client certificate); the MI listener then serves only JSON-RPC."""

    listen_host: str
    listen_port: int


@dataclass(frozen=True)
class HandoverConfig:
    """Take the sockets over from the older proxy of the same fleet on this host at start-up, and hand them to
    the next one (supervisor/handover.py). `name` names the fleet: only proxies with the same name exchange
    sockets (the chart uses the release's namespace and name)."""

    name: str = "default"


@dataclass(frozen=True)
class Config:
    sockets: tuple[SocketSpec, ...] = ()
    udp_workers: int = 8
    tcp_workers: int = 8
    sockets_mgm: SocketsMgm | None = None
    mi: MiConfig = field(default_factory=MiConfig)
    metrics: MetricsConfig | None = None
    routes: tuple[Any, ...] = ()  # raw rules, parsed by sipproxy.sip.routing in every worker
    log_level: str = "info"
    tcp_idle_timeout: float = 120.0
    # A worker that has not applied a socket change this long after it was sent is replaced.
    worker_ack_timeout: float = 10.0
    tls_mgm: TlsMgm = field(default_factory=TlsMgm)
    handover: HandoverConfig | None = None
    # A file that exists exactly while this proxy serves every socket: readiness for an exec probe, which is
    # per pod even where two pods share the metrics port (a handover on a hostNetwork node).
    ready_file: str | None = None
    # The Kubernetes node this proxy runs on, for sockets placed on some nodes only (shared/placement.py).
    # Default: the environment variable NODE_NAME (the chart sets it from the downward API).
    node_name: str | None = None


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
    "metrics",
    "routes",
    "log_level",
    "tcp_idle_timeout",
    "worker_ack_timeout",
    "tls_mgm",
    "handover",
    "ready_file",
    "node_name",
}
_DOMAIN_KEYS = {f.name for f in fields(StaticTlsDomain)}
_DOMAIN_FILES = ("certificate", "private_key", "ca_list", "dh_params")
_DOMAIN_TEXTS = ("match_ip_address", "match_sip_domain", "method", "ca_dir", "cipher_list", "ec_curve")
_DOMAIN_TYPES = {"client": 1, "server": 2, 1: 1, 2: 2}


def _readable(value: object, key: str) -> str:
    path = _str(value, key)
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    return path


def _tls_mgm(value: object) -> TlsMgm:
    m = _mapping(value, "tls_mgm", {"table_name", "domains"})
    table_name = _str(m.get("table_name", "tls_mgm"), "tls_mgm.table_name")
    raw = m.get("domains")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ConfigError("tls_mgm.domains", "must be a list")
    domains: list[StaticTlsDomain] = []
    seen: set[tuple[str, int]] = set()
    for i, item in enumerate(raw):
        key = f"tls_mgm.domains[{i}]"
        d = _mapping(item, key, _DOMAIN_KEYS)
        if "domain" not in d:
            raise ConfigError(f"{key}.domain", "is required")
        name = _str(d["domain"], f"{key}.domain")
        kind = _DOMAIN_TYPES.get(d.get("type", "client"))
        if kind is None or isinstance(d.get("type"), bool):
            raise ConfigError(f"{key}.type", "must be server or client (2 or 1)")
        if (name, kind) in seen:
            raise ConfigError(
                f"{key}.domain", f"a {d.get('type', 'client')} domain {name!r} is already defined"
            )
        seen.add((name, kind))
        values: dict[str, Any] = {"domain": name, "type": kind}
        for flag in ("verify_cert", "require_cert"):
            if flag in d:
                if not isinstance(d[flag], bool) and d[flag] not in (0, 1):
                    raise ConfigError(f"{key}.{flag}", "must be true or false")
                values[flag] = bool(d[flag])
        for text_key in _DOMAIN_TEXTS:
            if d.get(text_key) is not None:
                values[text_key] = _str(d[text_key], f"{key}.{text_key}")
        for file_key in _DOMAIN_FILES:
            if d.get(file_key) is not None:
                values[file_key] = _readable(d[file_key], f"{key}.{file_key}")
        if kind == 2 and ("certificate" not in values or "private_key" not in values):
            raise ConfigError(key, "a server domain needs certificate and private_key")
        domains.append(StaticTlsDomain(**values))
    return TlsMgm(table_name=table_name, domains=tuple(domains))


def _handover(value: object) -> HandoverConfig | None:
    from sipproxy.supervisor.handover import address

    if value is None or value is False:
        return None
    if value is True:
        return HandoverConfig()
    if not isinstance(value, dict):
        raise ConfigError("handover", "must be true, false or a mapping {name: NAME}")
    m = _mapping(value, "handover", {"name"})
    name = _str(m.get("name", "default"), "handover.name")
    try:
        address(name)
    except ValueError as exc:
        raise ConfigError("handover.name", str(exc)) from None
    return HandoverConfig(name=name)


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
        unreachable = unreachable_reason(spec)
        if unreachable is not None:
            raise ConfigError(f"sockets[{i}]", f"{text}: {unreachable} (`as HOST[:PORT]`)")
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
        m = _mapping(top["mi"], "mi", {"listen", "root", "token_file", "tls"})
        host, port = _listen(_str(m.get("listen", "127.0.0.1:8888"), "mi.listen"), "mi.listen")
        root = _str(m.get("root", "mi"), "mi.root").strip("/")
        if not root:
            raise ConfigError("mi.root", "must be a non-empty path")
        token_file = m.get("token_file")
        if token_file is not None:
            token_file = _str(token_file, "mi.token_file")
        tls = None
        if m.get("tls") is not None:
            t = _mapping(m["tls"], "mi.tls", {"certificate", "private_key", "client_ca"})
            for key in ("certificate", "private_key"):
                if t.get(key) is None:
                    raise ConfigError(f"mi.tls.{key}", "is required with mi.tls (a PEM file)")
            client_ca = t.get("client_ca")
            tls = MiTls(
                certificate=_str(t["certificate"], "mi.tls.certificate"),
                private_key=_str(t["private_key"], "mi.tls.private_key"),
                client_ca=None if client_ca is None else _str(client_ca, "mi.tls.client_ca"),
            )
        mi = MiConfig(listen_host=host, listen_port=port, root=root, token_file=token_file, tls=tls)
    metrics = None
    if top.get("metrics") is not None:
        m = _mapping(top["metrics"], "metrics", {"listen"})
        if m.get("listen") is None:
            raise ConfigError("metrics.listen", "is required with metrics (host:port)")
        host, port = _listen(_str(m["listen"], "metrics.listen"), "metrics.listen")
        if (host, port) == (mi.listen_host, mi.listen_port):
            raise ConfigError("metrics.listen", "must differ from mi.listen")
        metrics = MetricsConfig(listen_host=host, listen_port=port)
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
    tls_mgm = _tls_mgm(top["tls_mgm"]) if top.get("tls_mgm") is not None else TlsMgm()
    node_name = top.get("node_name")
    if node_name is not None:
        node_name = _str(node_name, "node_name")
    return Config(
        tls_mgm=tls_mgm,
        sockets=tuple(sockets),
        udp_workers=_int(top.get("udp_workers", 8), "udp_workers"),
        tcp_workers=_int(top.get("tcp_workers", 8), "tcp_workers"),
        sockets_mgm=mgm,
        mi=mi,
        metrics=metrics,
        routes=tuple(routes),
        log_level=log_level,
        tcp_idle_timeout=float(idle),
        worker_ack_timeout=float(ack),
        handover=_handover(top.get("handover")),
        ready_file=None if top.get("ready_file") is None else _str(top["ready_file"], "ready_file"),
        node_name=node_name,
    )


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """The config file; `node_name` from NODE_NAME in `env` (default: this process's environment) when the
    file has none."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from None
    config = parse_config(data)
    node = (os.environ if env is None else env).get("NODE_NAME", "").strip()
    if config.node_name is None and node:
        config = replace(config, node_name=node)
    return config
