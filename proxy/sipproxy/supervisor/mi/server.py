"""The HTTP side of the MI: POST /<root> (JSON-RPC), GET /healthz, /readyz, /metrics; one app may serve
either part or both (see `listeners.py`)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence

from aiohttp import web

from sipproxy.supervisor.mi.rpc import Method, encode_response, handle_body
from sipproxy.supervisor.mi.token import authorized

MAX_BODY = 1 << 20


def make_app(
    root: str,
    methods: Mapping[str, Method],
    token: str | None,
    ready: Callable[[], bool],
    metrics: Callable[[], Awaitable[str]],
    *,
    rpc: bool = True,
    probes: bool = True,
) -> web.Application:
    async def json_rpc(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"}, text="Method Not Allowed\n")
        if not authorized(request.headers.get("Authorization"), token):
            return web.Response(
                status=401, headers={"WWW-Authenticate": 'Bearer realm="sipproxy-mi"'}, text="Unauthorized\n"
            )
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return web.Response(status=413, text="Request Entity Too Large\n")
        response = await handle_body(body, methods)
        if response is None:
            return web.Response(status=202)
        return web.Response(status=200, content_type="application/json", text=encode_response(response))

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def prometheus(request: web.Request) -> web.Response:
        text = await metrics()
        return web.Response(
            text=text, content_type="text/plain", charset="utf-8", headers={"X-Format": "0.0.4"}
        )

    app = web.Application(client_max_size=MAX_BODY)
    if rpc:
        app.router.add_route("*", "/" + root.strip("/"), json_rpc)
    if probes:
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", prometheus)
    return app


async def serve(
    app: web.Application,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    socks: Sequence[socket.socket] = (),
) -> web.AppRunner:
    """Serve `app` on host:port, or on `socks` (listening sockets bound already) when given."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        sites: list[web.BaseSite] = [
            web.SockSite(runner, sock, shutdown_timeout=5.0, ssl_context=ssl_context) for sock in socks
        ] or [
            web.TCPSite(runner, host, port, reuse_address=True, shutdown_timeout=5.0, ssl_context=ssl_context)
        ]
        for site in sites:
            await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
