"""The MI commands of the proxy, bound to a running supervisor."""

from __future__ import annotations

import importlib.metadata
import time
from typing import Any

from sipproxy.supervisor.entries import Entry
from sipproxy.supervisor.metrics import render_prometheus
from sipproxy.supervisor.mi.listing import Listing
from sipproxy.supervisor.mi.rpc import INVALID_PARAMS, Method, MIError, Params, RawJson, no_params
from sipproxy.supervisor.supervisor import ReloadError, Supervisor
from sipproxy.supervisor.tls import TlsReloadError, reload_result, socket_warning, tls_list


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

    def live() -> list[int]:
        return [*sup.entries, *(e.sid for e in sup.unbound)]

    listing = Listing(sup.traffic, warn, lambda: sup.tls, live)

    async def sockets_reload(params: Params) -> Any:
        no_params(params)
        try:
            result = await sup.reload()
        except ReloadError as exc:
            raise MIError(500, "Could not reload sockets", str(exc)) from None
        return RawJson(listing.reload_answer(result, time.monotonic()))

    async def sockets_list(params: Params) -> Any:
        no_params(params)
        return RawJson(listing.array(sup.dynamic_entries(), time.monotonic()))

    async def list_sockets(params: Params) -> Any:
        no_params(params)
        entries = sup.static_entries() + sup.dynamic_entries()
        return RawJson(listing.array(entries, time.monotonic(), with_kind=True))

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
