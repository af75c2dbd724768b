"""Which proxy pods serve a SipSocket (pure): `spec.nodeSelector` matched against the labels of the nodes the
ready proxy pods run on, and what goes into the placement side table for the proxies (shared/placement.py).

The `sockets` table is shared by the whole fleet and OpenSIPS reads it, so a per-node choice cannot live in
it. The operator reads the Nodes (their labels), writes the names of the selected nodes next to the row, and
each proxy, knowing its own node's name, serves the row or lists it as `unselected`. A SipSocket without a
selector has no node list: every node, as OpenSIPS serves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sipproxy.shared.placement import format_nodes

Selector = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SocketOptions:
    """The placement side table's columns for one row; the default is no entry at all."""

    freebind: bool = False
    nodes: str | None = None  # shared.placement's text: None every node, "a,b" those nodes, "," none
    advertised: str | None = None  # per node, "node=host:port,..." (spec.advertised.fromNode)

    @property
    def default(self) -> bool:
        return not self.freebind and self.nodes is None and self.advertised is None


@dataclass(frozen=True)
class Placement:
    """`nodes`: the selected nodes (None: no selector, every node). `unknown`: nodes of proxy pods whose
    labels could not be read, with why (their pods are reported failed: the operator cannot tell)."""

    nodes: frozenset[str] | None = None
    unknown: Mapping[str, str] = field(default_factory=dict)

    def selects(self, node: str | None) -> bool:
        """Does a pod on `node` serve the socket? A pod whose node is not known serves only unrestricted
        sockets."""
        if self.nodes is None:
            return True
        return node is not None and node in self.nodes

    def options(self, freebind: bool, advertised: str | None = None) -> SocketOptions:
        return SocketOptions(freebind, format_nodes(self.nodes), advertised)


EVERYWHERE = Placement()


def matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    """A nodeSelector: every label present with that value."""
    return all(labels.get(key) == value for key, value in selector)


def place(selector: Selector | None, node_labels: Mapping[str, Mapping[str, str] | str]) -> Placement:
    """`node_labels`: each node of the fleet -> its labels, or why they could not be read."""
    if selector is None:
        return EVERYWHERE
    chosen = frozenset(
        node
        for node, labels in node_labels.items()
        if not isinstance(labels, str) and matches(selector, labels)
    )
    unknown = {node: labels for node, labels in node_labels.items() if isinstance(labels, str)}
    return Placement(chosen, unknown)


def describe(selector: Selector) -> str:
    return ",".join(f"{key}={value}" for key, value in selector)
