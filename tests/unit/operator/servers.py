"""Small real HTTP servers on loopback for the operator's unit tests: a Kubernetes API that keeps SipSocket
statuses, and proxy MIs. Both record what they were asked."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf
from aiohttp import web
from aiohttp.test_utils import TestServer

STATUS_PATH = "/apis/sipsockets.io/v1alpha1/namespaces/{namespace}/sipsockets/{name}/status"


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
    """Status subresources of the objects in `objects` ((namespace, name) -> status); only `token` is let in;
    `fail_with` answers every call with that HTTP status."""

    def __init__(self, token: str = "t1") -> None:
        self.token = token
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.patches: list[Patch] = []
        self.fail_with: int | None = None
        self.server: TestServer | None = None

    async def __aenter__(self) -> FakeAPI:
        app = web.Application()
        app.router.add_patch(STATUS_PATH, self._patch)
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

    async def _patch(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        if self.fail_with is not None:
            return _status(self.fail_with, "InternalError", "etcd is having a bad day")
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
    """A proxy's MI: serves `sockets` as listening after each reload; `on_call` sees every method.
    `new_names_only`: answers `sockets_mgm:reload`/`sockets_mgm:list` and -32601 to the 3.6 names."""

    sockets: Callable[[], list[str]]
    on_call: Callable[[str], None]
    max_sockets: int = 100
    static: list[str] = field(default_factory=list)
    listed: list[str] = field(default_factory=list)
    new_names_only: bool = False
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
            result = [{"socket": s, "state": "listening"} for s in self.listed]
        elif method == "list_sockets":
            result = [{"socket": s, "kind": "static"} for s in self.static]
        elif method == "sockets_capacity":
            result = {"max_sockets": self.max_sockets}
        else:
            return web.json_response({"jsonrpc": "2.0", "id": call["id"], "error": {"code": -32601}})
        return web.json_response({"jsonrpc": "2.0", "id": call["id"], "result": result})
