"""Kubernetes Events about SipSockets (core/v1, created through the operator's own API client). Only the
leader's passes post them; a failed post is logged and never fails a pass."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sipoperator.kube import KubeClient, KubeError
from sipoperator.status import GROUP, VERSION

log = logging.getLogger(__name__)
COMPONENT = "sipsockets-operator"
MAX_MESSAGE = 1024


def event_body(
    obj: Mapping[str, Any], type_: str, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SipSocket",
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "source": {"component": COMPONENT},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventPoster:
    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self._pending: set[asyncio.Task[None]] = set()

    def emit(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Post in the background: a pass does not wait for its Events."""
        task = asyncio.get_running_loop().create_task(self.post(obj, type_, reason, message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        await asyncio.gather(*self._pending, return_exceptions=True)

    async def post(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        body = event_body(obj, type_, reason, message, datetime.now(UTC))
        namespace = body["metadata"]["namespace"]
        try:
            await self.kube.create(f"/api/v1/namespaces/{namespace}/events", body, within=10)
        except KubeError as exc:
            log.warning(
                "event %s for %s/%s not posted: %s", reason, namespace, body["involvedObject"]["name"], exc
            )
