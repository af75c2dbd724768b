"""`spec.advertised` taken from the platform (pure): the load-balancer address of a Service, or each proxy
pod's own node address, turned into what the proxies read.

The `sockets` table keeps one `advertised` value per row, which is all OpenSIPS reads. A Service's address is
one value for every pod: it goes into that column (OpenSIPS uses it too). A node's address differs per node:
the column stays empty and the placement side table carries `node=host:port` for each node
(shared/placement.py), which each proxy applies for its own node. A change of either is an edit of the
advertised address, which the proxies apply without closing the socket.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sipoperator.spec import AdvertisedFrom, host_port
from sipproxy.shared.placement import format_node_advertised

PENDING_REASON = "AdvertisedAddressPending"


@dataclass(frozen=True)
class Resolved:
    """`column`: the row's `advertised` text; `per_node`: the side table's text (fromNode); `pending`: why the
    address is not known (yet), "" when it is; `shown`: status.advertised."""

    column: str | None = None
    per_node: str | None = None
    pending: str = ""
    shown: str | None = None


def service_address(service: Mapping[str, Any]) -> str | None:
    """The first load-balancer ingress of a Service: its IP, else its host name (as a cloud controller
    sets status.loadBalancer.ingress)."""
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    for item in ingress if isinstance(ingress, list) else []:
        if isinstance(item, Mapping):
            for key in ("ip", "hostname"):
                value = item.get(key)
                if isinstance(value, str) and value:
                    return value
    return None


def node_address(node: Mapping[str, Any], kind: str) -> str | None:
    """The node's first address of type `kind` (ExternalIP, InternalIP) in status.addresses."""
    for item in (node.get("status") or {}).get("addresses") or []:
        if isinstance(item, Mapping) and item.get("type") == kind and item.get("address"):
            return str(item["address"])
    return None


def from_service(source: AdvertisedFrom, service: Mapping[str, Any] | str) -> Resolved:
    """`service`: the Service, or why it could not be read."""
    if isinstance(service, str):
        return Resolved(pending=service)
    host = service_address(service)
    if host is None:
        return Resolved(pending=f"Service {source.service} has no load-balancer ingress address yet")
    text = host_port(host, source.port)
    return Resolved(column=text, shown=text)


def from_nodes(source: AdvertisedFrom, nodes: Mapping[str, Mapping[str, Any] | str]) -> Resolved:
    """`nodes`: each node a proxy pod runs on -> the Node, or why it could not be read."""
    kind = str(source.node_address)
    values: dict[str, str] = {}
    missing: list[str] = []
    for name, node in sorted(nodes.items()):
        host = None if isinstance(node, str) else node_address(node, kind)
        if host is None:
            missing.append(node if isinstance(node, str) else f"Node {name} has no {kind}")
        else:
            values[name] = host_port(host, source.port)
    shown = f"{kind} of each node, port {source.port}"
    pending = "; ".join(missing)
    if not nodes:
        pending = "no ready proxy pod runs on a known node yet"
    return Resolved(per_node=format_node_advertised(values), pending=pending, shown=shown)
