"""The labels of the nodes proxy pods run on, for `spec.nodeSelector` (placement.py decides with them).

Read with a GET of each Node (RBAC: `get` on `nodes`, a ClusterRole the chart grants with
`operator.readNodes`), only for SipSockets that have a selector, and kept for `TTL_SECONDS`: a label change
reaches the next pass after that (at the latest the resync period later). A node that cannot be read is
retried after `ERROR_TTL_SECONDS`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping

from sipoperator.kube import KubeClient, KubeError

TTL_SECONDS = 30.0
ERROR_TTL_SECONDS = 5.0


class NodeLabels:
    def __init__(self, kube: KubeClient, ttl: float = TTL_SECONDS) -> None:
        self.kube = kube
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Mapping[str, str] | str]] = {}

    async def labels(self, node: str) -> Mapping[str, str] | str:
        """The node's labels, or why they could not be read."""
        now = time.monotonic()
        cached = self._cache.get(node)
        if cached is not None and now < cached[0]:
            return cached[1]
        try:
            body = await self.kube.get(f"/api/v1/nodes/{node}")
        except KubeError as exc:
            why = f"cannot read Node {node}: {exc}"
            if exc.status == 403:
                why += " (the operator needs get on nodes: the chart's operator.readNodes)"
            self._cache[node] = (now + ERROR_TTL_SECONDS, why)
            return why
        raw = (body.get("metadata") or {}).get("labels") or {}
        labels = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}
        self._cache[node] = (now + self.ttl, labels)
        return labels

    async def all(self, nodes: Iterable[str]) -> dict[str, Mapping[str, str] | str]:
        names = sorted(set(nodes))
        found = await asyncio.gather(*(self.labels(n) for n in names))
        return dict(zip(names, found, strict=True))
