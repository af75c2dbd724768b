"""Validating admission webhook (`POST /validate-sipsocket`): refuses invalid and conflicting SipSockets at
`kubectl apply` time. Fast feedback only; reconcile stays the authority (it re-checks everything)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sipoperator.conflicts import Claim, Verdict
from sipoperator.reconciler import Reconciler
from sipoperator.spec import SpecError, validate
from sipoperator.spec import describe_key as _describe
from sipoperator.store import DatabaseUnavailable, TableRow

PATH = "/validate-sipsocket"
log = logging.getLogger(__name__)


def review_response(uid: str, allowed: bool, message: str = "", code: int = 200) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": code, "message": message, "reason": "Invalid" if code == 422 else ""}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


class Webhook:
    def __init__(self, rec: Reconciler) -> None:
        self.rec = rec
        self._rows: list[TableRow] = []

    async def decide(self, request: Mapping[str, Any]) -> tuple[bool, str]:
        if request.get("operation") not in ("CREATE", "UPDATE"):
            return True, ""
        obj = request.get("object") or {}
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or request.get("name") or "")
        namespace = str(meta.get("namespace") or request.get("namespace") or "")
        try:
            desired = validate(obj.get("spec"))
        except SpecError as exc:
            return False, f"SipSocket {namespace}/{name} is invalid: {exc}"
        if request.get("operation") == "UPDATE" and (request.get("oldObject") or {}).get("spec") == obj.get(
            "spec"
        ):
            return True, ""  # metadata or status only: never block finalizer removal and the like
        try:
            self._rows = await self.rec.store.snapshot()
        except DatabaseUnavailable as exc:
            log.warning("webhook: database unavailable, checking against the last table seen: %s", exc)
        uid = str(meta.get("uid") or f"new:{namespace}/{name}")
        # The newcomer ranks after everything that exists: whoever is there keeps the endpoint.
        me = Claim(uid, namespace, name, "9999-12-31T23:59:59Z", desired.key)
        rows = [
            r
            for r in self._rows
            if r.owner_uid != uid and (r.owner_namespace, r.owner_name) != (namespace, name)
        ]
        known = {k: v for k, v in self.rec.known.items() if (v.namespace, v.name) != (namespace, name)}
        verdict: Verdict = self.rec.verdict_among(me, rows, known)
        if verdict.accepted:
            return True, ""
        holder = verdict.holder or "another socket"
        return False, (
            f"SipSocket {namespace}/{name}: {_describe(desired.key)} is already used by {holder}; "
            "choose another address or port"
        )

    async def handle(self, request: web.Request) -> web.Response:
        try:
            review = await request.json()
            req = review["request"]
            uid = str(req["uid"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected an admission.k8s.io/v1 AdmissionReview"}, status=400)
        try:
            allowed, message = await self.decide(req)
        except Exception:  # never block the API on our own bug; reconcile re-checks
            log.exception("webhook failed; allowing")
            allowed, message = True, ""
        return web.json_response(review_response(uid, allowed, message, 422 if not allowed else 200))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(PATH, self.handle)
        return app


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx
