"""`sipsockets-operator`: the health/metrics server, the admission webhook, kopf's watches and the leader
election in one event loop. Every replica watches and answers the webhook; only the Lease's holder runs the
keepers and the fleet check, which are the only writers (rows, statuses, finalizers, reloads)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys

import kopf
from aiohttp import web

from sipoperator import collector, handlers
from sipoperator.election import AllOf, Elector
from sipoperator.events import EventPoster
from sipoperator.fleetsync import FleetSync
from sipoperator.keepers import Keepers
from sipoperator.kube import KubeClient
from sipoperator.metrics import Metrics
from sipoperator.nodes import NodeLabels
from sipoperator.proxies import Fleet
from sipoperator.reconciler import Reconciler
from sipoperator.settings import Settings, SettingsError, load, split_listen
from sipoperator.sources import SourceWatch
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
    store = Store(settings.db_url, settings.table_name, tls_table_name=settings.tls_table_name)
    fleet = Fleet(settings, metrics)
    registry = kopf.OperatorRegistry()
    kopf_settings = kopf.OperatorSettings()
    handlers.configure(kopf_settings)
    kube = KubeClient(functools.partial(handlers.login, kopf_settings))
    status = StatusWriter(kube)
    rec = Reconciler(settings, store, fleet, metrics, status, kube, NodeLabels(kube))
    events = EventPoster(kube)
    fleet_sync = FleetSync(settings, store, fleet, metrics)
    keepers = Keepers(rec, kube, events, reload_missed=fleet_sync.wake)
    # The leader's work: the keepers' passes, the fleet check and the look at node addresses (fromNode).
    work = AllOf([keepers, fleet_sync, SourceWatch(rec)])
    elector = Elector(kube, settings.namespace, settings.lease_name, settings.timing, metrics, work)
    # Every writer asks the elector first (lease.py: fencing by lease time).
    store.fence = status.fence = keepers.fence = fleet.client.fence = elector
    handlers.register(registry, rec, keepers)

    runners = [await _serve(health_app(metrics), settings.health_listen, "health and metrics")]
    if settings.webhook_listen:
        assert settings.webhook_cert_file and settings.webhook_key_file
        ctx = tls_context(settings.webhook_cert_file, settings.webhook_key_file)
        runners.append(await _serve(Webhook(rec).app(), settings.webhook_listen, "admission webhook", ctx))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    election = asyncio.create_task(elector.run(stop), name="leader election")
    collections = asyncio.create_task(collector.run(rec.idle, stop), name="garbage collection")
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings,
            namespaces=[settings.namespace],
            standalone=True,
            stop_flag=stop,
        )
    finally:
        stop.set()
        await election  # the leader's work stops and the Lease is released before anything closes
        await collections
        await events.close()
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
