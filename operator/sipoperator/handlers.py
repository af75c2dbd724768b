"""kopf wiring: which Kubernetes events call which reconciler step. No decisions here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from sipoperator.conditions import Condition
from sipoperator.kube import KubeError
from sipoperator.proxies import mi_port_of
from sipoperator.reconciler import Reconciler
from sipoperator.status import GROUP, PLURAL, VERSION
from sipoperator.store import DatabaseUnavailable

FINALIZER = "sipsockets.io/finalizer"
log = logging.getLogger(__name__)


def _emit(body: kopf.Body, changed: list[Condition]) -> None:
    for c in changed:
        log.info(
            "%s/%s: %s=%s %s: %s",
            body.metadata.namespace,
            body.metadata.name,
            c.type,
            c.status,
            c.reason,
            c.message,
        )
        kopf.event(
            body,
            type="Normal" if c.status == "True" else "Warning",
            reason=c.reason,
            message=f"{c.type}={c.status}: {c.message}"[:1024],
        )


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """The pod's service account, else the kubeconfig: for kopf's client and the operator's own alike."""
    in_cluster: kopf.ConnectionInfo | None = kopf.login_with_service_account(settings=settings)
    return in_cluster or kopf.login_with_kubeconfig(settings=settings)


def configure(settings: kopf.OperatorSettings, peering: str) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="sipsockets.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="sipsockets.io", key="last-handled-configuration"
    )
    # Namespaced operator: no cluster-wide namespace or CRD watches, so RBAC stays namespaced.
    settings.scanning.disabled = True
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    if peering:
        settings.peering.name = peering
        settings.peering.mandatory = True
        settings.peering.clusterwide = False
        settings.peering.stealth = True  # keep-alives every few seconds are not worth a log line


def register(registry: kopf.OperatorRegistry, rec: Reconciler, peering: str) -> None:
    selector = rec.settings.selector_labels

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, peering)
        try:
            await rec.store.ensure_schema()
        except DatabaseUnavailable as exc:
            log.warning("database not reachable at start-up (will retry in reconcile): %s", exc)

    @kopf.on.login(registry=registry)
    def kopf_login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
        return login(settings)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def watch_sipsockets(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
        if event.get("type") == "DELETED":
            rec.forget(str(body.metadata.uid))
        else:
            rec.observe(body)

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, backoff=3)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, backoff=3)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, backoff=3, field="spec")
    async def reconcile(body: kopf.Body, **_: Any) -> None:
        result = await rec.reconcile(body)  # writes the status itself; kopf retries if that failed
        _emit(body, result.changed)

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=1.0, backoff=3)
    async def keeper(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
        """Per SipSocket: sleeps until a resync or retry is due or the fleet or table changed (no polling,
        so a thousand idle SipSockets cost nothing), then runs a pass (which writes the status)."""
        uid = str(body.metadata.uid)
        wake = rec.waker(uid)
        while not stopped:
            timeout = 0.5 if rec.busy(uid) else rec.seconds_until_due(uid)
            try:
                await asyncio.wait_for(wake.wait(), timeout)
            except TimeoutError:
                pass
            wake.clear()
            if stopped or body.metadata.get("deletionTimestamp") or not rec.due(uid):
                continue
            try:
                result = await rec.reconcile(body)
            except KubeError as exc:
                # The pass counts as failed: the next one comes with backoff and writes the status again.
                log.warning("%s/%s: status not written: %s", body.metadata.namespace, body.metadata.name, exc)
                continue
            _emit(body, result.changed)

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, backoff=3)
    async def finalize(body: kopf.Body, **_: Any) -> None:
        try:
            errors = await rec.finalize(str(body.metadata.uid))
        except DatabaseUnavailable as exc:
            kopf.warn(body, reason="DatabaseUnavailable", message=f"cannot remove the socket row yet: {exc}")
            raise kopf.TemporaryError(f"database unavailable: {exc}", delay=5) from exc
        for pod, error in sorted(errors.items()):
            log.warning(
                "proxy pod %s missed the reload after deleting %s: %s", pod, body.metadata.name, error
            )

    @kopf.on.startup(registry=registry)
    async def start_source_watch(memo: kopf.Memo, **_: Any) -> None:
        memo["sources"] = asyncio.get_running_loop().create_task(rec.watch_sources())

    @kopf.on.cleanup(registry=registry)
    async def stop_source_watch(memo: kopf.Memo, **_: Any) -> None:
        task = memo.get("sources")
        if isinstance(task, asyncio.Task):
            task.cancel()

    @kopf.on.event("", "v1", "services", registry=registry)
    async def watch_services(body: kopf.Body, **_: Any) -> None:
        """A Service changed (a new load-balancer address) or went: the SipSockets advertising its address
        run a pass, within moments; the others are not woken."""
        rec.service_changed(str(body.metadata.name))

    @kopf.on.event("", "v1", "pods", labels=selector, registry=registry)
    def watch_pods(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
        name = str(body.metadata.name)
        if event.get("type") == "DELETED" or body.metadata.get("deletionTimestamp"):
            rec.fleet.forget(name)
            return
        status = body.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ()
        )
        mi_port, problem = mi_port_of(body.metadata.annotations)
        if problem:
            log.warning("proxy pod %s: %s; using --mi-port %d", name, problem, rec.settings.mi_port)
        node = (body.get("spec") or {}).get("nodeName")
        rec.fleet.observe(name, str(body.metadata.uid), status.get("podIP"), ready, mi_port, node or None)
