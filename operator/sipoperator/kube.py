"""A small async client of the Kubernetes API: JSON get, create, replace and patch over aiohttp.

The operator's own writes go through it: status patches, the finalizer, Events and the leader-election Lease;
so do its reads of the Secrets that SipSockets reference. kopf keeps its own client for the watches.
Credentials come from kopf's public login functions (`kopf.ConnectionInfo`: server, CA, token or client
certificate), asked again once when the API answers 401 (a rotated service-account token).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf

log = logging.getLogger(__name__)
MERGE_PATCH = "application/merge-patch+json"
Login = Callable[[], "kopf.ConnectionInfo | None"]


class KubeError(Exception):
    """The API refused or could not be reached (`status` 0). `reason` is the Status reason (NotFound, ...)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: the object changed since the resourceVersion written with (or already exists, on create)."""
        return self.status == 409


class KubeClient:
    def __init__(self, login: Login, timeout: float = 30.0) -> None:
        self._login = login
        self.timeout = timeout
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None

    async def _connect(self, fresh: bool) -> tuple[aiohttp.ClientSession, kopf.ConnectionInfo]:
        if fresh or self._info is None or self._session is None or self._session.closed:
            await self.close()
            info = self._login()
            if info is None:
                raise KubeError(0, "NoCredentials", "no service account and no kubeconfig to log in with")
            self._info = info
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()),
                headers={"Accept": "application/json", **info.as_http_headers()},
                trust_env=bool(info.trust_env),
            )
        assert self._info is not None
        return self._session, self._info

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        within: float | None = None,
    ) -> dict[str, Any]:
        """One call; `path` is absolute (/api/..., /apis/...). Returns the answer's JSON object. `within`
        (seconds, default the client's timeout) bounds the whole call, a retry after 401 included."""
        deadline = time.monotonic() + (self.timeout if within is None else within)
        for attempt in (1, 2):
            wait = aiohttp.ClientTimeout(total=max(deadline - time.monotonic(), 0.001))
            session, info = await self._connect(fresh=attempt == 2)
            headers = {"Content-Type": content_type or "application/json"} if body is not None else {}
            try:
                async with session.request(
                    method,
                    info.server.rstrip("/") + path,
                    json=body,
                    headers=headers,
                    proxy=info.proxy_url,
                    timeout=wait,
                ) as resp:
                    if resp.status == 401 and attempt == 1:
                        log.info("the API answered 401 to %s %s; logging in again", method, path)
                        continue
                    status, text = resp.status, await resp.text()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise KubeError(0, "Unreachable", f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            payload = _json(text)
            if status >= 400:
                raise _error(status, payload, text)
            return payload if isinstance(payload, dict) else {}
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, path: str, within: float | None = None) -> dict[str, Any]:
        return await self.request("GET", path, within=within)

    async def create(self, path: str, body: Mapping[str, Any], within: float | None = None) -> dict[str, Any]:
        return await self.request("POST", path, body, within=within)

    async def replace(
        self, path: str, body: Mapping[str, Any], within: float | None = None
    ) -> dict[str, Any]:
        """PUT: with metadata.resourceVersion set, the API refuses it (409 Conflict) if the object changed."""
        return await self.request("PUT", path, body, within=within)

    async def patch(
        self,
        path: str,
        body: Mapping[str, Any],
        content_type: str = MERGE_PATCH,
        within: float | None = None,
    ) -> dict[str, Any]:
        return await self.request("PATCH", path, body, content_type, within)

    async def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret, or None when it does not exist. Raises KubeError for anything else (403, 5xx, ...)."""
        try:
            return await self.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except KubeError as exc:
            if exc.not_found:
                return None
            raise


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _error(status: int, payload: Any, text: str) -> KubeError:
    if isinstance(payload, Mapping) and payload.get("kind") == "Status":
        return KubeError(status, str(payload.get("reason") or ""), str(payload.get("message") or ""))
    return KubeError(status, "", text.strip()[:200])
