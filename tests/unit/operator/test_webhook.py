"""The validating webhook over real HTTP: the chain reconcile runs, a denial when it cannot run, warnings for
the Secrets of spec.tls."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sipoperator.kube import KubeClient
from sipoperator.metrics import Metrics
from sipoperator.proxies import Fleet
from sipoperator.reconciler import Reconciler
from sipoperator.settings import Settings
from sipoperator.spec import Row
from sipoperator.status import StatusWriter
from sipoperator.store import Store
from sipoperator.webhook import PATH, Webhook
from tests.tlscerts import issue, make_ca
from tests.unit.operator.servers import FakeAPI, FakeMI

Review = Callable[..., Any]


def request(
    operation: str, name: str, spec: Any, old_spec: Any = None, **object_fields: Any
) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": "voip"}, "spec": spec, **object_fields}
    req: dict[str, Any] = {"uid": "req-1", "operation": operation, "object": obj}
    if old_spec is not None:
        req["oldObject"] = {"metadata": {"name": name, "namespace": "voip"}, "spec": old_spec}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


async def served(
    db_url: str, kube: KubeClient | None = None
) -> tuple[Reconciler, TestClient[Any, Any], list[Callable[[], Any]]]:
    settings = Settings(namespace="voip", db_url=db_url)
    store, metrics = Store(db_url, timeout=2), Metrics()
    fleet = Fleet(settings, metrics)
    kube = kube or KubeClient(lambda: None)  # the webhook writes no status; it reads Secrets
    rec = Reconciler(settings, store, fleet, metrics, StatusWriter(kube), kube)
    client = TestClient(TestServer(Webhook(rec).app(), host="127.0.0.1"))
    await client.start_server()
    return rec, client, [client.close, kube.close, fleet.client.close, store.close]


@pytest.fixture
async def webhook(tmp_path: Path) -> AsyncIterator[tuple[Reconciler, Review]]:
    rec, client, closers = await served(f"sqlite:///{tmp_path / 'sockets.db'}")

    async def review(body: dict[str, Any]) -> dict[str, Any]:
        resp = await client.post(PATH, json=body)
        assert resp.status == 200
        answer: dict[str, Any] = (await resp.json())["response"]
        return answer

    try:
        yield rec, review
    finally:
        for close in closers:
            await close()


def udp(address: str, port: int = 5070) -> dict[str, Any]:
    spec: dict[str, Any] = {"protocol": "udp", "address": address, "port": port}
    if address in ("0.0.0.0", "::"):  # a wildcard needs the address peers reach it on
        spec["advertised"] = {"address": "203.0.113.10"}
    return spec


def watched(rec: Reconciler, name: str, spec: dict[str, Any], created: str = "2026-01-01T00:00:00Z") -> None:
    meta = {"uid": f"uid-{name}", "namespace": "voip", "name": name, "creationTimestamp": created}
    rec.observe({"metadata": meta, "spec": spec})


async def test_a_check_that_fails_internally_denies_and_says_it_could_not_run(
    webhook: tuple[Reconciler, Review],
) -> None:
    """failurePolicy Fail: the webhook's own failure must not let an unchecked object through."""
    _, review = webhook
    body = request("CREATE", "odd", udp("10.0.0.1"))
    body["request"]["object"]["metadata"] = ["not", "an", "object"]  # reading it fails inside the check
    answer = await review(body)
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 500
    assert "could not run" in answer["status"]["message"]
    assert "AttributeError" in answer["status"]["message"]


async def test_the_same_chain_as_reconcile_refuses_an_overlapping_wildcard_naming_the_holder(
    webhook: tuple[Reconciler, Review],
) -> None:
    rec, review = webhook
    watched(rec, "wild", udp("0.0.0.0"))
    answer = await review(request("CREATE", "one", udp("127.0.0.1")))
    assert answer["allowed"] is False
    message = answer["status"]["message"]
    assert message == (
        "SipSocket voip/one: UDP 127.0.0.1:5070 is already used by SipSocket voip/wild (UDP 0.0.0.0:5070); "
        "choose another address or port"
    )
    assert (await review(request("CREATE", "six", udp("::"))))["allowed"]
    assert (await review(request("CREATE", "other", udp("127.0.0.1", 5071))))["allowed"]


async def test_capacity_is_refused_at_apply_time_too(
    webhook: tuple[Reconciler, Review], tmp_path: Path
) -> None:
    rec, review = webhook
    await rec.store.write("uid-a", "voip", "a", 1, Row("udp:10.0.0.1:5070"))
    mi = FakeMI(lambda: [], lambda _: None, max_sockets=1)
    rec.fleet.observe("proxy-0", "uid-p", "127.0.0.1", True, await mi.start())
    try:
        await rec.fleet.discover_all()
        answer = await review(request("CREATE", "b", udp("10.0.0.1", 5071)))
        assert answer["allowed"] is False
        assert "max_sockets=1" in answer["status"]["message"]
        # "a" itself has its row: a change of its spec needs no new slot.
        assert (await review(request("UPDATE", "a", udp("10.0.0.1", 5072), old_spec=udp("10.0.0.1"))))[
            "allowed"
        ]
    finally:
        await mi.close()


async def test_metadata_only_updates_are_never_blocked_even_of_an_invalid_object(
    webhook: tuple[Reconciler, Review],
) -> None:
    """Removing the finalizer of an object that slipped past validation must stay possible."""
    _, review = webhook
    invalid = {"protocol": "udp", "address": "sbc.example.com"}
    assert (await review(request("UPDATE", "x", invalid, old_spec=invalid)))["allowed"]
    answer = await review(request("CREATE", "x", invalid))
    assert answer["allowed"] is False and answer["status"]["code"] == 422
    assert answer["status"]["message"].startswith("SipSocket voip/x is invalid: spec.address:")


async def test_with_the_database_down_it_judges_from_the_last_table_seen_and_the_watch(
    tmp_path: Path,
) -> None:
    """A deliberate choice: an unreachable database does not block every apply; reconcile re-checks."""
    db = tmp_path / "sockets.db"
    rec, client, closers = await served(f"sqlite:///{db}")
    try:
        await rec.store.ensure_schema()
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO sockets (socket) VALUES ('udp:10.0.0.9:5070')")

        async def allowed(body: dict[str, Any]) -> bool:
            return bool((await (await client.post(PATH, json=body)).json())["response"]["allowed"])

        assert await allowed(request("CREATE", "seen", udp("10.0.0.2")))  # the table is read and kept
        db.unlink()
        db.mkdir()  # the database file is now a directory: every statement fails
        watched(rec, "first", udp("10.0.0.1"))
        assert not await allowed(request("CREATE", "hand", udp("10.0.0.9")))  # the row last seen
        assert not await allowed(request("CREATE", "second", udp("10.0.0.1")))  # the watched object
        assert await allowed(request("CREATE", "free", udp("10.0.0.3")))
    finally:
        for close in closers:
            await close()


# -- spec.tls: the Secrets are warned about, never refused ---------------------------------------------------


async def test_a_missing_or_invalid_secret_is_accepted_with_a_warning_a_good_one_without(
    tmp_path: Path,
) -> None:
    """cert-manager writes a Certificate's Secret after the SipSocket naming it exists: refusing would break
    that flow, so the webhook admits and `kubectl apply` prints the warning; ResolvedRefs reports it."""
    leaf = issue(make_ca(), "sip.example.com", dns=["sip.example.com"])
    async with FakeAPI() as api:
        kube = KubeClient(api.login())
        _, client, closers = await served(f"sqlite:///{tmp_path / 'sockets.db'}", kube)
        spec = {"protocol": "tls", "address": "10.0.0.1", "tls": {"secretName": "edge-tls"}}

        async def review(body: dict[str, Any]) -> dict[str, Any]:
            answer: dict[str, Any] = (await (await client.post(PATH, json=body)).json())["response"]
            return answer

        try:
            missing = await review(request("CREATE", "edge", spec))
            assert missing["allowed"] is True
            [warning] = missing["warnings"]
            assert warning.startswith("SipSocket voip/edge: Secret voip/edge-tls not found; create it")

            api.put_secret(
                "voip", "edge-tls", "kubernetes.io/tls", {"tls.crt": leaf.cert_pem, "tls.key": b"x"}
            )
            invalid = await review(request("CREATE", "edge", spec))
            assert invalid["allowed"] is True
            assert "tls.key holds no PEM private key" in invalid["warnings"][0]

            api.put_secret(
                "voip", "edge-tls", "kubernetes.io/tls", {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem}
            )
            good = await review(request("CREATE", "edge", spec))
            assert good["allowed"] is True and "warnings" not in good

            # What the schema refuses, the webhook refuses too: tls without its Secret, or on udp.
            bare = await review(request("CREATE", "edge", {"protocol": "tls", "address": "10.0.0.1"}))
            assert bare["allowed"] is False
            assert bare["status"]["message"].startswith(
                "SipSocket voip/edge is invalid: spec.tls: protocol tls"
            )
            wrong = await review(request("CREATE", "u", {**spec, "protocol": "udp"}))
            assert wrong["allowed"] is False
        finally:
            for close in closers:
                await close()
