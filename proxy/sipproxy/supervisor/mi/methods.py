"""The MI commands of the proxy, bound to a running supervisor."""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable
from typing import Any

from sipproxy.supervisor.entries import Entry, ReloadResult
from sipproxy.supervisor.metrics import render_prometheus
from sipproxy.supervisor.mi.rpc import INVALID_PARAMS, Method, MIError, Params, no_params
from sipproxy.supervisor.supervisor import ReloadError, Supervisor
from sipproxy.supervisor.tls import TlsReloadError, reload_result, socket_warning, tls_list
from sipproxy.supervisor.traffic import Seen, receiving


def entry_dict(
    entry: Entry,
    with_kind: bool = False,
    warning: str | None = None,
    traffic: Seen | None = None,
    now: float = 0.0,
) -> dict[str, Any]:
    """OpenSIPS' sockets_list fields first (empty ones left out), then ours: `freebind`, the state
    (listening, partial, absent, unselected, failed) and its error, whether the address is on this host
    (`address_local`, once looked at), and from `traffic` the messages received on it here (`received`) and
    whether they arrived lately (`receiving`, traffic.py)."""
    spec, row = entry.spec, entry.row
    out: dict[str, Any] = {}
    if row is not None and row.socket:
        out["socket"] = row.socket.strip()
    elif spec is not None:
        out["socket"] = spec.raw or spec.socket_str
    if spec is not None:
        if spec.advertised_str:
            out["advertised"] = spec.advertised_str
        if spec.tag:
            out["tag"] = spec.tag
        if spec.flags:
            out["flags"] = ",".join(spec.flags_tuple)
        if spec.tos:
            out["tos"] = spec.tos
    elif row is not None:  # a row that did not parse: show what it says
        for name in ("advertised", "tag", "flags", "tos"):
            value = getattr(row, name)
            if value is not None and value.strip():
                out[name] = value.strip()
    if spec is not None:
        out["proto"] = spec.proto
        out["address"] = spec.host
        out["port"] = spec.port
    if spec is not None and spec.freebind:
        out["freebind"] = True
    if entry.slot is not None:
        out["slot"] = entry.slot
    out["state"] = entry.reported_state
    if out["state"] == "absent" and entry.state == "listening" and spec is not None:
        out["error"] = (
            f"address {spec.host} has left this host; the socket stays bound and serves again when it returns"
        )
    elif entry.state == "listening" and entry.lagging:
        # Bound and served, but not by every worker that should: say which, until each is replaced.
        out["state"] = "partial"
        out["error"] = "; ".join(entry.lagging[name] for name in sorted(entry.lagging))
    elif entry.error:
        out["error"] = entry.error
    if entry.address_local is not None:
        out["address_local"] = entry.address_local
    if traffic is not None:
        out["received"] = traffic.received
        out["receiving"] = receiving(traffic, now)
    notes = [w for w in (warning, entry.note) if w]
    if notes:
        out["warning"] = "; ".join(notes)
    if with_kind:
        out["kind"] = entry.kind
    return out


def reload_dict(
    result: ReloadResult,
    warn: Callable[[Entry], str | None] = lambda _: None,
    listed: Callable[[Entry], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`listed`: how sockets_list shows an entry (added, kept and updated ones are shown the same way)."""
    show = listed or (lambda e: entry_dict(e, warning=warn(e)))
    return {
        "added": [show(e) for e in result.added],
        "removed": [entry_dict(e) for e in result.removed],
        "kept": [show(e) for e in result.kept],
        "updated": [show(e) for e in result.updated],
        "failed": [
            {"socket": entry_dict(e).get("socket", ""), "error": e.error or ""} for e in result.failed
        ],
        # Not failures: the address is not on this host (bound when it appears), or the row is placed on
        # other nodes.
        "absent": [_unbound(e) for e in result.absent],
        "unselected": [_unbound(e) for e in result.unselected],
    }


def _unbound(entry: Entry) -> dict[str, str]:
    return {"socket": entry_dict(entry).get("socket", ""), "error": entry.error or ""}


def _version() -> str:
    try:
        return importlib.metadata.version("sipsockets")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _wanted_stats(params: Params) -> list[str]:
    if params is None:
        return ["all"]
    names: Any = params.get("statistics", ["all"]) if isinstance(params, dict) else params[:1]
    if isinstance(params, list) and params:
        names = params[0]
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise MIError(INVALID_PARAMS, "Invalid params", "statistics: a list of names, group: prefixes or all")
    return names or ["all"]


def make_methods(sup: Supervisor) -> dict[str, Method]:
    def warn(entry: Entry) -> str | None:
        """A listening TLS or WSS socket no server domain serves says so."""
        if entry.spec is None or entry.state != "listening":
            return None
        return socket_warning(entry.spec, sup.tls.domains)

    def listed(entry: Entry, with_kind: bool = False) -> dict[str, Any]:
        seen = sup.traffic.of(entry.spec.socket_str) if entry.spec is not None else None
        if seen is None and entry.sock is not None:
            seen = Seen(0, None)  # bound, and no message counted on it yet
        return entry_dict(entry, with_kind, warn(entry), seen, time.monotonic())

    async def sockets_reload(params: Params) -> Any:
        no_params(params)
        try:
            return reload_dict(await sup.reload(), warn, listed)
        except ReloadError as exc:
            raise MIError(500, "Could not reload sockets", str(exc)) from None

    async def sockets_list(params: Params) -> Any:
        no_params(params)
        return [listed(e) for e in sup.dynamic_entries()]

    async def list_sockets(params: Params) -> Any:
        no_params(params)
        return [listed(e, with_kind=True) for e in sup.static_entries() + sup.dynamic_entries()]

    async def tls_reload(params: Params) -> Any:
        no_params(params)
        try:
            return reload_result(await sup.tls_reload())
        except TlsReloadError as exc:
            raise MIError(500, "Could not reload TLS domains", str(exc)) from None

    async def tls_list_method(params: Params) -> Any:
        no_params(params)
        return tls_list(sup.tls)

    async def sockets_capacity(params: Params) -> Any:
        no_params(params)
        if sup.config.sockets_mgm is None:
            return {"max_sockets": 0, "used": 0, "free": 0}
        return {"max_sockets": sup.slots.size, "used": sup.slots.used, "free": sup.slots.free}

    async def ps(params: Params) -> Any:
        no_params(params)
        return {"Processes": sup.processes()}

    async def uptime(params: Params) -> Any:
        no_params(params)
        now = time.time()
        return {
            "Now": time.ctime(now),
            "Up since": time.ctime(sup.started_at),
            "Up time": f"{int(now - sup.started_at)} [sec]",
        }

    async def version(params: Params) -> Any:
        no_params(params)
        return {"Server": f"sipproxy {_version()}"}

    async def get_statistics(params: Params) -> Any:
        wanted = _wanted_stats(params)
        per_socket = await sup.collect_stats()
        stats: dict[str, int] = {
            "core:rcv_packets": sum(c.rx_packets for c in per_socket.values()),
            "core:rcv_bytes": sum(c.rx_bytes for c in per_socket.values()),
            "core:fwd_packets": sum(c.fwd_packets for c in per_socket.values()),
            "core:fwd_bytes": sum(c.fwd_bytes for c in per_socket.values()),
            "core:drop_packets": sum(sum(c.drops.values()) for c in per_socket.values()),
            "core:worker_restarts": sup.worker_restarts,
            "sockets_mgm:reloads": sup.reloads,
            "sockets_mgm:reload_failures": sup.reload_failures,
            "sockets_mgm:listening": sum(
                1 for e in sup.entries.values() if e.kind == "dynamic" and e.reported_state == "listening"
            ),
            "sockets_mgm:failed": len(sup.failed),
            "sockets_mgm:absent": sum(
                1 for e in [*sup.entries.values(), *sup.unbound] if e.reported_state == "absent"
            ),
            "tls_mgm:generation": sup.tls.number,
            "tls_mgm:domains": len(sup.tls.domains),
            "tls_mgm:failed": len(sup.tls.entries) - len(sup.tls.domains),
            "tls_mgm:reloads": sup.tls_reloads,
            "tls_mgm:reload_failures": sup.tls_reload_failures,
        }
        for label, c in sorted(per_socket.items()):
            stats[f"socket:{label}:rcv_packets"] = c.rx_packets
            stats[f"socket:{label}:fwd_packets"] = c.fwd_packets
            stats[f"socket:{label}:drop_packets"] = sum(c.drops.values())
        if "all" in wanted:
            return stats
        out: dict[str, int] = {}
        for name in wanted:
            if name.endswith(":"):
                out.update({k: v for k, v in stats.items() if k.startswith(name)})
            elif name in stats:
                out[name] = stats[name]
        return out

    return {
        "sockets_reload": sockets_reload,
        "sockets_mgm:reload": sockets_reload,
        "sockets_list": sockets_list,
        "sockets_mgm:list": sockets_list,
        "list_sockets": list_sockets,
        "sockets_capacity": sockets_capacity,
        "ps": ps,
        "uptime": uptime,
        "version": version,
        "get_statistics": get_statistics,
        "tls_reload": tls_reload,
        "tls_list": tls_list_method,
    }


async def metrics_text(sup: Supervisor) -> str:
    per_socket = await sup.collect_stats()
    states = sup.state_counts()
    return render_prometheus(
        per_socket, sup.reloads, sup.reload_failures, sup.reload_seconds, sup.worker_restarts, states
    )
