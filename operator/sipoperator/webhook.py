"""Validating admission webhook (`POST /validate-sipsocket`): refuses at `kubectl apply` time what reconcile
would not accept (invalid spec, endpoint conflict, no free slot), by running reconcile's chain of checks.
Fast feedback only; reconcile stays the authority (it re-checks everything, and decides races).

The Secrets of spec.tls are checked too, but a problem there is a warning (`kubectl apply` prints it), never a
refusal: cert-manager writes a Certificate's Secret after the SipSocket naming it is applied, and a Secret may
be fixed at any time; reconcile reports it as ResolvedRefs=False."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sipoperator.checks import ENDPOINT_CONFLICT, INVALID_SPEC, Refusal, first_refusal, resolve_refs
from sipoperator.reconciler import Reconciler
from sipoperator.refs import SecretState
from sipoperator.snapshot import NEWCOMER_CREATED, Known, for_admission
from sipoperator.spec import describe_key
from sipoperator.store import DatabaseUnavailable, TableRow

PATH = "/validate-sipsocket"
SECRET_READ_SECONDS = 3.0  # the API server waits for the webhook; a slow Secret read only costs the warning
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    message: str = ""
    warnings: list[str] = field(default_factory=list)


def review_response(
    uid: str, allowed: bool, message: str = "", code: int = 200, warnings: list[str] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        reason = {422: "Invalid", 500: "InternalError"}.get(code, "")
        response["status"] = {"code": code, "message": message, "reason": reason}
    if warnings:
        response["warnings"] = warnings
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def refusal_message(subject: Known, refusal: Refusal) -> str:
    ref = f"SipSocket {subject.namespace}/{subject.name}"
    if refusal.reason == INVALID_SPEC:
        return f"{ref} is invalid: {refusal.message}"
    if refusal.reason == ENDPOINT_CONFLICT and subject.wanted is not None:
        holder = refusal.holder or "another socket"
        return (
            f"{ref}: {describe_key(subject.wanted.key)} is already used by {holder}; "
            "choose another address or port"
        )
    return f"{ref}: {refusal.message}"


class Webhook:
    def __init__(self, rec: Reconciler) -> None:
        self.rec = rec
        self._rows: list[TableRow] = []

    async def decide(self, request: Mapping[str, Any]) -> Decision:
        """The chain reconcile runs (`checks.CHAIN`, then the Secrets), on the object as a newcomer."""
        if request.get("operation") not in ("CREATE", "UPDATE"):
            return Decision(True)
        obj = request.get("object") or {}
        if request.get("operation") == "UPDATE" and (request.get("oldObject") or {}).get("spec") == obj.get(
            "spec"
        ):
            return Decision(True)  # metadata or status only: never block finalizer removal and the like
        meta = obj.get("metadata") or {}
        spec = obj.get("spec")
        name = str(meta.get("name") or request.get("name") or "")
        namespace = str(meta.get("namespace") or request.get("namespace") or "")
        subject = Known(
            uid=str(meta.get("uid") or f"new:{namespace}/{name}"),
            namespace=namespace,
            name=name,
            created=NEWCOMER_CREATED,
            spec=spec if isinstance(spec, Mapping) else {},
        )
        if subject.wanted is not None:  # an invalid spec needs no table to be refused
            try:
                self._rows = await self.rec.store.snapshot()
            except DatabaseUnavailable as exc:
                log.warning("webhook: database unavailable, checking against the last table seen: %s", exc)
        fleet = self.rec.fleet
        secrets = await self._secrets(subject)
        snap = for_admission(
            subject,
            self._rows,
            fleet.static_sockets(),
            fleet.capacity(),
            self.rec.known,
            self.rec.settings.table_name,
            secrets or {},
        )
        refusal = first_refusal(snap)
        if refusal is not None:
            return Decision(False, refusal_message(subject, refusal))
        resolution = resolve_refs(snap) if secrets is not None else None
        if resolution is None or resolution.ok:
            return Decision(True)
        return Decision(
            True, warnings=[f"SipSocket {subject.namespace}/{subject.name}: {resolution.message}"]
        )

    async def _secrets(self, subject: Known) -> dict[str, SecretState]:
        """The Secrets of spec.tls, read as reconcile reads them; {} when they could not be read in time (the
        warning is left out, reconcile will report)."""
        try:
            return await asyncio.wait_for(self.rec.read_secrets(subject), SECRET_READ_SECONDS)
        except TimeoutError:
            log.warning(
                "webhook: reading the Secrets of %s/%s took too long", subject.namespace, subject.name
            )
            return {}

    async def handle(self, request: web.Request) -> web.Response:
        try:
            review = await request.json()
            req = review["request"]
            uid = str(req["uid"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected an admission.k8s.io/v1 AdmissionReview"}, status=400)
        try:
            decision = await self.decide(req)
        except Exception as exc:
            # failurePolicy Fail: what could not be checked is not let through, and the person applying it
            # learns why (an unreachable webhook is refused by the API server in the same way).
            log.exception("webhook: the admission check failed; denying")
            why = f"{type(exc).__name__}: {exc}".rstrip(": ")[:300]
            message = f"the sipsockets admission check could not run ({why}); retry, or see the operator log"
            return web.json_response(review_response(uid, False, message, 500))
        code = 200 if decision.allowed else 422
        return web.json_response(
            review_response(uid, decision.allowed, decision.message, code, decision.warnings)
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(PATH, self.handle)
        return app


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx
