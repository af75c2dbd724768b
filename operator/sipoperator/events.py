"""Kubernetes Events about SipSockets (core/v1, created through the operator's own API client). Only the
leader's passes post them, from a queue; a failed post is logged and never fails a pass."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sipoperator.kube import KubeClient, KubeError
from sipoperator.status import GROUP, VERSION

log = logging.getLogger(__name__)
COMPONENT = "sipsockets-operator"
MAX_MESSAGE = 1024
POSTERS = 2  # Events posted at once
Queued = tuple[Mapping[str, Any], str, str, str, datetime]  # (object, type, reason, message, when)


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
    """Posts in the background, `posters` at a time, in the order emitted: a burst (a thousand SipSockets
    becoming Ready after a start, three Events each) waits in the queue instead of taking the API server and
    the event loop from the passes themselves (client-go's recorder posts from one queue too)."""

    def __init__(self, kube: KubeClient, posters: int = POSTERS) -> None:
        self.kube = kube
        self.posters = posters
        self._queue: collections.deque[Queued] = collections.deque()
        self._running: set[asyncio.Task[None]] = set()

    def emit(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Queue an Event (stamped now); a pass does not wait for its Events."""
        self._queue.append((obj, type_, reason, message, datetime.now(UTC)))
        if len(self._running) < self.posters:
            task = asyncio.get_running_loop().create_task(self._drain())
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _drain(self) -> None:
        while self._queue:
            await self.post(*self._queue.popleft())

    async def close(self) -> None:
        """Post what is queued, then return."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def post(
        self, obj: Mapping[str, Any], type_: str, reason: str, message: str, now: datetime | None = None
    ) -> None:
        body = event_body(obj, type_, reason, message, now or datetime.now(UTC))
        namespace = body["metadata"]["namespace"]
        try:
            await self.kube.create(f"/api/v1/namespaces/{namespace}/events", body, within=10)
        except KubeError as exc:
            log.warning(
                "event %s for %s/%s not posted: %s", reason, namespace, body["involvedObject"]["name"], exc
            )
