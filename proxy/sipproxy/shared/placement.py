"""Where a dynamic socket is served: on which nodes (`nodes`), and whether it binds an address the node may
not hold (`freebind`). Written by the operator into the side table `sipsockets_socket_options` (schema.py),
read by the proxy with the `sockets` rows. OpenSIPS never reads that table, so its rows stay valid for
OpenSIPS, which serves every row on every proxy and has no free bind.

The node list is the operator's answer to a SipSocket's `spec.nodeSelector`: the names of the nodes it
selects, among the nodes the proxy pods run on. A proxy knows its own node by name (the chart's `NODE_NAME`,
from the downward API); node labels stay with the operator, which can read Nodes.

The same table carries an advertised address per node (`advertised`, for `spec.advertised.fromNode`: each
node's own ExternalIP or InternalIP), which replaces the row's `advertised` column on that node: the row keeps
one value for OpenSIPS, which cannot have more."""

from __future__ import annotations

import re

# Kubernetes node names are DNS subdomains: lower-case letters, digits, '-' and '.'.
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class NodesError(ValueError):
    """A `nodes` column that does not parse; the message is the reason."""


def parse_nodes(text: str | None) -> frozenset[str] | None:
    """The `nodes` column: None (NULL or blank) means every node; otherwise a comma list of node names (an
    empty list is written as ',' and means no node)."""
    if text is None or not text.strip():
        return None
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    bad = sorted(n for n in names if not _NODE_NAME.match(n))
    if bad:
        raise NodesError(f"nodes column: {bad[0]!r} is not a node name")
    return names


def format_nodes(nodes: frozenset[str] | None) -> str | None:
    """The inverse of `parse_nodes`, sorted so that equal sets give equal text."""
    if nodes is None:
        return None
    return ",".join(sorted(nodes)) or ","


def parse_node_advertised(text: str | None) -> dict[str, str]:
    """The `advertised` column: `node=host:port` items separated by commas (`[v6]:port` for IPv6); empty or
    NULL is none. Values are checked where they are used (as the `advertised` column is)."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        node, sep, value = item.strip().partition("=")
        if not sep or not _NODE_NAME.match(node) or not value:
            raise NodesError(f"advertised column: {item.strip()!r} is not node=host:port")
        out[node] = value
    return out


def format_node_advertised(values: dict[str, str]) -> str | None:
    return ",".join(f"{node}={values[node]}" for node in sorted(values)) or None


def advertised_here(
    row_advertised: str | None, node_advertised: str | None, node_name: str | None
) -> str | None:
    """The advertised address this proxy uses for a row: its node's own when the side table has one, else
    the row's column."""
    if node_name is not None and node_advertised:
        return parse_node_advertised(node_advertised).get(node_name, row_advertised)
    return row_advertised


def serves_here(nodes: frozenset[str] | None, node_name: str | None) -> bool:
    """Should a proxy on `node_name` serve a socket restricted to `nodes`? A proxy that does not know its node
    serves every socket (it cannot tell; the listing warns)."""
    return nodes is None or node_name is None or node_name in nodes
