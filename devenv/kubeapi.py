"""A small synchronous client of the Kubernetes API from a kubeconfig, and a watch of one resource kept in
memory: for harnesses that make or follow hundreds of objects (the reliability checks), where a kubectl
process per call or per poll would be the slowest part of the measurement.

Not the operator's client (operator/sipoperator/kube.py): this one belongs to the test environment only.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ApiError(Exception):
    """The API answered with an error status (`status`), or could not be reached (`status` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


class ApiClient:
    """JSON over HTTPS with the kubeconfig's current context (client certificate or bearer token)."""

    def __init__(self, kubeconfig: Path, timeout: float = 30.0) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        context = next(c for c in config["contexts"] if c["name"] == config["current-context"])["context"]
        cluster = next(c for c in config["clusters"] if c["name"] == context["cluster"])["cluster"]
        user = next(u for u in config["users"] if u["name"] == context["user"])["user"]
        url = urllib.parse.urlsplit(cluster["server"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.timeout = timeout
        self.headers = {"Accept": "application/json"}
        ctx = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        if "token" in user:
            self.headers["Authorization"] = f"Bearer {user['token']}"
        else:
            # ssl loads a client certificate from files only.
            with tempfile.TemporaryDirectory() as tmp:
                cert, key = Path(tmp) / "client.crt", Path(tmp) / "client.key"
                cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
                key.write_bytes(base64.b64decode(user["client-key-data"]))
                ctx.load_cert_chain(str(cert), str(key))
        self.ssl = ctx

    def _connection(self, timeout: float | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host, self.port, context=self.ssl, timeout=timeout or self.timeout
        )

    def raw(self, method: str, path: str) -> tuple[int, str]:
        """One call whose answer is not JSON (`/metrics`): status and text."""
        conn = self._connection()
        try:
            conn.request(method, path, headers={k: v for k, v in self.headers.items() if k != "Accept"})
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(0, f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = dict(self.headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        conn = self._connection()
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(0, f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
        payload = json.loads(text) if text.strip().startswith("{") else {}
        if resp.status >= 400:
            raise ApiError(resp.status, str(payload.get("message") or text[:200]))
        return payload if isinstance(payload, dict) else {}

    def stream(
        self, path: str, timeout: float, opened: Callable[[http.client.HTTPSConnection], None] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The JSON lines of a watch, until the server ends it, `timeout` passes without a line, or the
        connection breaks (ApiError). `opened` is given the connection (to close it from another thread)."""
        conn = self._connection(timeout)
        if opened is not None:
            opened(conn)
        try:
            conn.request("GET", path, headers=self.headers)
            resp = conn.getresponse()
            if resp.status >= 400:
                raise ApiError(resp.status, resp.read().decode(errors="replace")[:200])
            while True:
                line = resp.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise ApiError(0, f"watch {path}: {type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()


def crd_path(group: str, version: str, plural: str, namespace: str, name: str = "") -> str:
    base = f"/apis/{group}/{version}/namespaces/{namespace}/{plural}"
    return f"{base}/{name}" if name else base


@dataclass
class Seen:
    body: dict[str, Any]
    at: float  # time.monotonic() of the event that brought this body


class Watch:
    """Every object of one namespaced collection as the API last said, kept by a background thread (list,
    then watch from its resourceVersion; a broken or expired watch lists again, so an API server restart is
    followed). `on_event(name, body_or_None)` is called in that thread for each change."""

    def __init__(
        self,
        api: ApiClient,
        path: str,
        on_event: Callable[[str, dict[str, Any] | None], None] | None = None,
    ) -> None:
        self.api = api
        self.path = path
        self.on_event = on_event
        self.objects: dict[str, Seen] = {}
        self.lock = threading.Lock()
        self.synced = threading.Event()  # the first list has been read
        self.errors = 0
        self._stop = threading.Event()
        self._conn: http.client.HTTPSConnection | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        if not self.synced.wait(60):
            raise TimeoutError(f"could not list {self.path}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)  # ends the blocked read of the watch at once
        self._thread.join(timeout=10)

    def _opened(self, conn: http.client.HTTPSConnection) -> None:
        self._conn = conn

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {name: seen.body for name, seen in self.objects.items()}

    def _set(self, name: str, body: dict[str, Any] | None) -> None:
        with self.lock:
            if body is None:
                self.objects.pop(name, None)
            else:
                self.objects[name] = Seen(body, time.monotonic())
        if self.on_event is not None:
            self.on_event(name, body)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listing = self.api.request("GET", self.path)
            except ApiError:
                self.errors += 1
                self._stop.wait(0.5)
                continue
            current = {str(o["metadata"]["name"]): o for o in listing.get("items") or ()}
            for name in set(self.objects) - set(current):
                self._set(name, None)
            for name, body in current.items():
                if self.objects.get(name) is None or self.objects[name].body != body:
                    self._set(name, body)
            self.synced.set()
            version = str(listing.get("metadata", {}).get("resourceVersion", ""))
            with contextlib.suppress(ApiError):
                self._follow(version)
            self.errors += 1

    def _follow(self, version: str) -> None:
        while not self._stop.is_set():
            query = urllib.parse.urlencode(
                {
                    "watch": "true",
                    "resourceVersion": version,
                    "timeoutSeconds": "60",
                    "allowWatchBookmarks": "true",
                }
            )
            for event in self.api.stream(f"{self.path}?{query}", timeout=90, opened=self._opened):
                if self._stop.is_set():
                    return
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise ApiError(int(obj.get("code") or 0), str(obj.get("message") or "watch error"))
                version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                name = str(obj["metadata"]["name"])
                self._set(name, None if kind == "DELETED" else obj)
