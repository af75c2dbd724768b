"""`sipsockets-operator`: the health/metrics server, the admission webhook and kopf in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys

import kopf
from aiohttp import web

from sipoperator import handlers
from sipoperator.kube import KubeClient
from sipoperator.metrics import Metrics
from sipoperator.nodes import NodeLabels
from sipoperator.proxies import Fleet
from sipoperator.reconciler import Reconciler
from sipoperator.settings import Settings, SettingsError, load, split_listen
from sipoperator.status import StatusWriter
from sipoperator.store import Store
from sipoperator.webhook import Webhook, tls_context

log = logging.getLogger("sipoperator")


def health_app(metrics: Metrics) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def render(_: web.Request) -> web.Response:
        return web.Response(text=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", render)
    return app


async def _serve(app: web.Application, listen: str, what: str, ssl_context: object = None) -> web.AppRunner:
    host, port = split_listen(listen, what)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)  # type: ignore[arg-type]
    await site.start()
    log.info("%s listening on %s", what, listen)
    return runner


async def run(settings: Settings) -> None:
    metrics = Metrics()
    store = Store(settings.db_url, settings.table_name)
    fleet = Fleet(settings, metrics)
    registry = kopf.OperatorRegistry()
    kopf_settings = kopf.OperatorSettings()
    handlers.configure(kopf_settings, settings.peering)
    kube = KubeClient(functools.partial(handlers.login, kopf_settings))
    rec = Reconciler(settings, store, fleet, metrics, StatusWriter(kube), NodeLabels(kube))
    handlers.register(registry, rec, settings.peering)

    runners = [await _serve(health_app(metrics), settings.health_listen, "health and metrics")]
    if settings.webhook_listen:
        assert settings.webhook_cert_file and settings.webhook_key_file
        ctx = tls_context(settings.webhook_cert_file, settings.webhook_key_file)
        runners.append(await _serve(Webhook(rec).app(), settings.webhook_listen, "admission webhook", ctx))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings,
            namespaces=[settings.namespace],
            standalone=not settings.peering,
            peering_name=settings.peering or None,
            priority=settings.priority,
            stop_flag=stop,
        )
    finally:
        for runner in runners:
            await runner.cleanup()
        await fleet.client.close()
        await kube.close()
        await store.close()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load(argv)
    except SettingsError as exc:
        print(f"sipsockets-operator: {exc}", file=sys.stderr)
        return 2
    kopf.configure(
        verbose=False,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # kopf logs every handler and timer success per object; at a thousand SipSockets that drowns the rest.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
