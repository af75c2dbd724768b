"""kopf wiring: kopf watches the SipSockets and the proxy pods on every replica and hands each event over.
No decisions here, and kopf writes nothing to any object: the leader's keepers do (keepers.py).

Every handler is a coroutine: kopf runs plain functions in a thread pool, and the reconciler's state (its
dicts, the keepers' asyncio.Events) belongs to the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from sipoperator.keepers import FINALIZER, Keepers
from sipoperator.proxies import mi_port_of
from sipoperator.reconciler import Reconciler
from sipoperator.status import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)
# kopf removes *its* finalizer from any object being deleted when no kopf handler needs one (none does):
# it must never be ours.
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
assert KOPF_FINALIZER != FINALIZER


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """The pod's service account, else the kubeconfig: for kopf's client and the operator's own alike."""
    in_cluster: kopf.ConnectionInfo | None = kopf.login_with_service_account(settings=settings)
    return in_cluster or kopf.login_with_kubeconfig(settings=settings)


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = KOPF_FINALIZER
    # Namespaced operator: no cluster-wide namespace or CRD watches, so RBAC stays namespaced.
    settings.scanning.disabled = True
    settings.posting.enabled = False  # Events are posted by the leader only (events.py)
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300


def _raw(event: Mapping[str, Any], body: kopf.Body) -> dict[str, Any]:
    raw = event.get("object")
    return dict(raw) if isinstance(raw, Mapping) else dict(body)


def register(registry: kopf.OperatorRegistry, rec: Reconciler, keepers: Keepers) -> None:
    selector = rec.settings.selector_labels

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)

    @kopf.on.login(registry=registry)
    def kopf_login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
        return login(settings)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def watch_sipsockets(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
        uid = str(body.metadata.uid)
        if event.get("type") == "DELETED":
            rec.forget(uid)
            keepers.gone(uid)
            return
        raw = _raw(event, body)
        rec.observe(raw)
        keepers.seen(raw)

    @kopf.on.event("", "v1", "secrets", registry=registry)
    async def watch_secrets(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
        """A renewed, replaced or deleted Secret: the SipSockets referencing it run a pass (new domain row,
        tls_reload); the others are not woken. The pass reads the Secret itself: nothing is kept here.
        Async, so it runs in the event loop (kopf runs plain functions in a thread, where setting an
        asyncio.Event is not safe)."""
        deleted = event.get("type") == "DELETED"
        version = None if deleted else str(body.metadata.get("resourceVersion") or "")
        rec.secret_changed(str(body.metadata.name), version)

    @kopf.on.event("", "v1", "services", registry=registry)
    async def watch_services(body: kopf.Body, **_: Any) -> None:
        """A Service changed (a new load-balancer address) or went: the SipSockets advertising its address
        are woken (their keepers, on the leader, run a pass within moments); the others are not."""
        rec.service_changed(str(body.metadata.name))

    @kopf.on.event("", "v1", "pods", labels=selector, registry=registry)
    async def watch_pods(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
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
        rec.fleet.discover_soon()
