"""Small real HTTP servers on loopback for the operator's unit tests: a Kubernetes API that keeps SipSocket
statuses and serves Secrets, and proxy MIs. Both record what they were asked."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf
from aiohttp import web
from aiohttp.test_utils import TestServer

STATUS_PATH = "/apis/sipsockets.io/v1alpha1/namespaces/{namespace}/sipsockets/{name}/status"
OBJECT_PATH = "/apis/sipsockets.io/v1alpha1/namespaces/{namespace}/sipsockets/{name}"
LEASES_PATH = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
LEASE_PATH = LEASES_PATH + "/{name}"
EVENTS_PATH = "/api/v1/namespaces/{namespace}/events"
SECRET_PATH = "/api/v1/namespaces/{namespace}/secrets/{name}"


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message}
    return web.json_response({**body, "code": code}, status=code)


@dataclass
class Patch:
    namespace: str
    name: str
    authorization: str
    content_type: str
    body: dict[str, Any]


class FakeAPI:
    """Status subresources of the objects in `objects` ((namespace, name) -> status), whole objects added with
    `add_object` (patched: their finalizers; a merge patch naming another resourceVersion gets 409), Leases
    with the API's optimistic concurrency, Events, and the Secrets in `secrets` ((namespace, name) -> the
    Secret's body); only `token` is let in; `fail_with` answers every call with that HTTP status,
    `lease_fail_with` every Lease call, `secrets_fail_with` every Secret read."""

    def __init__(self, token: str = "t1") -> None:
        self.token = token
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.bodies: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.secret_reads: list[str] = []
        self.secrets_fail_with: int | None = None
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.patches: list[Patch] = []
        self.object_patches: list[dict[str, Any]] = []
        self.lease_writes: list[tuple[str, dict[str, Any]]] = []  # (method, spec) of each accepted write
        self.fail_with: int | None = None
        self.lease_fail_with: int | None = None
        self.server: TestServer | None = None
        self._version = 100

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def put_secret(self, namespace: str, name: str, secret_type: str, data: dict[str, bytes]) -> None:
        """Create or replace a Secret; each write gets a new resourceVersion, as the API server gives."""
        self.secrets[(namespace, name)] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"namespace": namespace, "name": name, "resourceVersion": self._next_version()},
            "type": secret_type,
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }

    async def __aenter__(self) -> FakeAPI:
        app = web.Application()
        app.router.add_patch(STATUS_PATH, self._patch)
        app.router.add_patch(OBJECT_PATH, self._patch_object)
        app.router.add_get(LEASE_PATH, self._get_lease)
        app.router.add_put(LEASE_PATH, self._put_lease)
        app.router.add_post(LEASES_PATH, self._post_lease)
        app.router.add_post(EVENTS_PATH, self._post_event)
        app.router.add_get(SECRET_PATH, self._secret)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        await self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    def login(self, token: str | None = None) -> Callable[[], kopf.ConnectionInfo]:
        return lambda: kopf.ConnectionInfo(server=self.url, token=token or self.token)

    async def _secret(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        self.secret_reads.append(name)
        if self.secrets_fail_with is not None:
            return _status(self.secrets_fail_with, "Forbidden", f'secrets "{name}" is forbidden')
        found = self.secrets.get((namespace, name))
        if found is None:
            return _status(404, "NotFound", f'secrets "{name}" not found')
        return web.json_response(found)

    def _refused(self, request: web.Request, lease: bool = False) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        failure = self.lease_fail_with if lease and self.lease_fail_with is not None else self.fail_with
        if failure is not None:
            return _status(failure, "InternalError", "etcd is having a bad day")
        return None

    def add_object(self, body: dict[str, Any]) -> dict[str, Any]:
        """An object the API knows (a new resourceVersion); returns it as the watch would show it."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        self.objects.setdefault(key, {})
        stored = json.loads(json.dumps(body))
        stored["metadata"]["resourceVersion"] = self._next_version()
        self.bodies[key] = stored
        return self.current(*key)

    def current(self, namespace: str, name: str) -> dict[str, Any]:
        body = json.loads(json.dumps(self.bodies[(namespace, name)]))
        body["status"] = json.loads(json.dumps(self.objects.get((namespace, name), {})))
        return dict(body)

    def touch(self, namespace: str, name: str) -> None:
        """Someone else changed the object (a label, say): a new resourceVersion."""
        self.bodies[(namespace, name)]["metadata"]["resourceVersion"] = self._next_version()

    async def _patch_object(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        key = (request.match_info["namespace"], request.match_info["name"])
        body = json.loads(await request.text())
        self.object_patches.append(body)
        stored = self.bodies.get(key)
        if stored is None:
            return _status(404, "NotFound", f'sipsockets.sipsockets.io "{key[1]}" not found')
        meta = stored["metadata"]
        wanted = body.get("metadata") or {}
        if wanted.get("resourceVersion") not in (None, meta["resourceVersion"]):
            return _status(409, "Conflict", "the object has been modified; please apply your changes")
        if "finalizers" in wanted:
            meta["finalizers"] = list(wanted["finalizers"] or [])
        meta["resourceVersion"] = self._next_version()
        return web.json_response(self.current(*key))

    async def _get_lease(self, request: web.Request) -> web.Response:
        refused = self._refused(request, lease=True)
        if refused is not None:
            return refused
        found = self.leases.get((request.match_info["namespace"], request.match_info["name"]))
        if found is None:
            return _status(404, "NotFound", "leases.coordination.k8s.io not found")
        return web.json_response(found)

    async def _post_lease(self, request: web.Request) -> web.Response:
        refused = self._refused(request, lease=True)
        if refused is not None:
            return refused
        body = json.loads(await request.text())
        key = (request.match_info["namespace"], body["metadata"]["name"])
        if key in self.leases:
            return _status(409, "AlreadyExists", "leases.coordination.k8s.io already exists")
        body["metadata"]["resourceVersion"] = self._next_version()
        self.leases[key] = body
        self.lease_writes.append(("POST", dict(body["spec"])))
        return web.json_response(body, status=201)

    async def _put_lease(self, request: web.Request) -> web.Response:
        refused = self._refused(request, lease=True)
        if refused is not None:
            return refused
        body = json.loads(await request.text())
        key = (request.match_info["namespace"], request.match_info["name"])
        current = self.leases.get(key)
        if current is None:
            return _status(404, "NotFound", "leases.coordination.k8s.io not found")
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", "the object has been modified; please apply your changes")
        body["metadata"]["resourceVersion"] = self._next_version()
        self.leases[key] = body
        self.lease_writes.append(("PUT", dict(body["spec"])))
        return web.json_response(body)

    async def _post_event(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        body = json.loads(await request.text())
        self.events.append(body)
        return web.json_response(body, status=201)

    async def _patch(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        body = json.loads(await request.text())
        self.patches.append(
            Patch(namespace, name, request.headers["Authorization"], request.content_type, body)
        )
        if (namespace, name) not in self.objects:
            return _status(404, "NotFound", f'sipsockets.sipsockets.io "{name}" not found')
        self.objects[(namespace, name)].update(body["status"])
        return web.json_response({"metadata": {"name": name}, "status": self.objects[(namespace, name)]})


# OpenSIPS after 3.6: the sockets_mgm commands by their new names only (an OpenSIPS without the 3.6 aliases).
NEW_NAMES = {"sockets_mgm:reload": "sockets_reload", "sockets_mgm:list": "sockets_list"}


@dataclass
class FakeMI:
    """A proxy's MI: serves `sockets` as listening after each reload, and keeps what `domains` gives as its
    TLS domains after each tls_reload (-32601 without `domains`, as a proxy without TLS); `on_call` sees
    every method. `new_names_only`: answers `sockets_mgm:reload`/`sockets_mgm:list` and -32601 to the 3.6
    names."""

    sockets: Callable[[], list[str]]
    on_call: Callable[[str], None]
    max_sockets: int = 100
    static: list[str] = field(default_factory=list)
    listed: list[str] = field(default_factory=list)
    domains: Callable[[], list[Any]] | None = None
    loaded: list[Any] = field(default_factory=list)  # the TLS domains as of the last tls_reload
    tls_failed: list[dict[str, str]] = field(default_factory=list)  # what tls_reload reports as failed
    new_names_only: bool = False
    warnings: dict[str, str] = field(default_factory=dict)  # sockets_list's warning per socket
    server: TestServer | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_post("/mi", self._handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        assert self.server.port is not None
        return int(self.server.port)

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def _handle(self, request: web.Request) -> web.Response:
        call = await request.json()
        method = call["method"]
        self.on_call(method)
        if self.new_names_only:
            method = NEW_NAMES.get(method, "" if method in NEW_NAMES.values() else method)
        result: Any
        if method == "sockets_reload":
            self.listed = list(self.sockets())
            result = {}
        elif method == "sockets_list":
            result = [
                {
                    "socket": s,
                    "state": "listening",
                    **({"warning": self.warnings[s]} if s in self.warnings else {}),
                }
                for s in self.listed
            ]
        elif method == "list_sockets":
            result = [{"socket": s, "kind": "static"} for s in self.static]
        elif method == "sockets_capacity":
            result = {"max_sockets": self.max_sockets}
        elif method == "tls_reload" and self.domains is not None:
            self.loaded = list(self.domains())
            result = {"generation": 1, "loaded": [], "failed": self.tls_failed}
        else:
            return web.json_response({"jsonrpc": "2.0", "id": call["id"], "error": {"code": -32601}})
        return web.json_response({"jsonrpc": "2.0", "id": call["id"], "result": result})
