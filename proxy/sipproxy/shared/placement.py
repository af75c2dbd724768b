"""Where a dynamic socket is served: on which nodes (`nodes`), and whether it binds an address the node may
not hold (`freebind`). Written by the operator into the side table `sipsockets_socket_options` (schema.py),
read by the proxy with the `sockets` rows. OpenSIPS never reads that table, so its rows stay valid for
OpenSIPS, which serves every row on every proxy and has no free bind.

The node list is the operator's answer to a SipSocket's `spec.nodeSelector`: the names of the nodes it
selects, among the nodes the proxy pods run on. A proxy knows its own node by name (the chart's `NODE_NAME`,
from the downward API); node labels stay with the operator, which can read Nodes."""

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


def serves_here(nodes: frozenset[str] | None, node_name: str | None) -> bool:
    """Should a proxy on `node_name` serve a socket restricted to `nodes`? A proxy that does not know its node
    serves every socket (it cannot tell; the listing warns)."""
    return nodes is None or node_name is None or node_name in nodes
