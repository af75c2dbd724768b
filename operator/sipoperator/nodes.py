"""What the operator reads of the platform for a SipSocket: the Nodes its proxy pods run on (their labels for
`spec.nodeSelector`, their addresses for `spec.advertised.fromNode`) and a Service of its namespace
(`spec.advertised.fromService`). placement.py and advertised.py decide with them.

Nodes are read with a GET each (RBAC: `get` on `nodes`, a ClusterRole the chart grants with
`operator.readNodes`), only for SipSockets that need them, and kept for `TTL_SECONDS` (a label change reaches
the next pass after that); the leader's look at node addresses (`sources.py`) reads them fresher. A node
that cannot be read is retried after `ERROR_TTL_SECONDS`. A Service is read at each pass that needs it (RBAC:
`get` on `services` in the namespace); its watch wakes the SipSockets that name it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from sipoperator.kube import KubeClient, KubeError

TTL_SECONDS = 30.0
ERROR_TTL_SECONDS = 5.0


class NodeLabels:
    def __init__(self, kube: KubeClient, ttl: float = TTL_SECONDS) -> None:
        self.kube = kube
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Mapping[str, Any] | str]] = {}  # node -> (read at, Node or why)

    async def node(self, node: str, max_age: float | None = None) -> Mapping[str, Any] | str:
        """The Node, or why it could not be read; read again when older than `max_age` (default the TTL)."""
        now = time.monotonic()
        cached = self._cache.get(node)
        age = self.ttl if max_age is None else max_age
        if cached is not None:
            read_at, value = cached
            if now - read_at < (ERROR_TTL_SECONDS if isinstance(value, str) else age):
                return value
        try:
            body: Mapping[str, Any] | str = await self.kube.get(f"/api/v1/nodes/{node}")
        except KubeError as exc:
            body = f"cannot read Node {node}: {exc}"
            if exc.status == 403:
                body += " (the operator needs get on nodes: the chart's operator.readNodes)"
        self._cache[node] = (now, body)
        return body

    async def labels(self, node: str) -> Mapping[str, str] | str:
        """The node's labels, or why they could not be read."""
        body = await self.node(node)
        if isinstance(body, str):
            return body
        raw = (body.get("metadata") or {}).get("labels") or {}
        return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}

    async def all(self, nodes: Iterable[str]) -> dict[str, Mapping[str, str] | str]:
        names = sorted(set(nodes))
        found = await asyncio.gather(*(self.labels(n) for n in names))
        return dict(zip(names, found, strict=True))

    async def nodes(
        self, names: Iterable[str], max_age: float | None = None
    ) -> dict[str, Mapping[str, Any] | str]:
        ordered = sorted(set(names))
        found = await asyncio.gather(*(self.node(n, max_age) for n in ordered))
        return dict(zip(ordered, found, strict=True))

    async def service(self, namespace: str, name: str) -> Mapping[str, Any] | str:
        """A Service of the namespace, or why it could not be read."""
        try:
            return await self.kube.get(f"/api/v1/namespaces/{namespace}/services/{name}")
        except KubeError as exc:
            if exc.not_found:
                return f"Service {name} does not exist"
            return f"cannot read Service {name}: {exc}"
