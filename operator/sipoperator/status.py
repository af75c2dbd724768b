"""The one way a SipSocket's status is written: a JSON merge patch of the changed top-level fields to the
status subresource, from kopf's handlers and from the keeper daemon alike."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sipoperator.kube import KubeClient, KubeError
from sipoperator.lease import UNFENCED, Fence

GROUP, VERSION, PLURAL = "sipsockets.io", "v1alpha1", "sipsockets"
log = logging.getLogger(__name__)


class StatusSink(Protocol):
    async def write(
        self, namespace: str, name: str, new: Mapping[str, Any], seen: Sequence[Mapping[str, Any]]
    ) -> bool: ...


def changes(new: Mapping[str, Any], seen: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The top-level status fields that differ from any status seen: the watched body's, and what this
    process last wrote (the body may lag behind our own patch, or someone else may have changed it). A
    resync that finds nothing new costs no call."""
    return {key: value for key, value in new.items() if any(s.get(key) != value for s in seen)}


def status_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"


class StatusWriter:
    def __init__(self, kube: KubeClient, fence: Fence = UNFENCED) -> None:
        self.kube = kube
        self.fence = fence  # only the Lease's holder patches statuses (election.py)

    async def write(
        self, namespace: str, name: str, new: Mapping[str, Any], seen: Sequence[Mapping[str, Any]]
    ) -> bool:
        """Patch what changed; True when a patch was sent and taken. Raises KubeError except for 404 (the
        object was deleted meanwhile: nothing left to report on), and NotLeader."""
        patch = changes(new, seen)
        if not patch:
            return False
        budget = self.fence.budget()  # raises NotLeader
        try:
            await self.kube.patch(
                status_path(namespace, name), {"status": patch}, within=min(self.kube.timeout, budget)
            )
        except KubeError as exc:
            if exc.not_found:
                log.debug("%s/%s was deleted before its status was written", namespace, name)
                return False
            raise
        return True
