"""What is refused at `kubectl apply` time: the CRD schema (with CEL) in the API server, and conflicts by the
operator's validating webhook. And the race the webhook cannot see: reconcile picks exactly one winner."""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devenv.processes import free_port
from tests.e2e.operator_support import (
    Env,
    apply,
    condition,
    crd,
    env,
    get,
    sipsocket,
    wait_condition,
    wait_for,
)

__all__ = ["crd", "env"]  # fixtures


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"protocol": "udp", "address": "sbc.example.com"}, "spec.address"),
        ({"protocol": "udp", "address": "10.0.0.1/24"}, "spec.address"),
        ({"protocol": "sctp", "address": "10.0.0.1"}, "spec.protocol"),
        ({"protocol": "udp", "address": "10.0.0.1", "port": 0}, "spec.port"),
        ({"protocol": "udp", "address": "10.0.0.1", "port": 65536}, "spec.port"),
        ({"protocol": "udp", "address": "10.0.0.1", "flags": ["fast"]}, "spec.flags"),
        ({"protocol": "udp", "address": "10.0.0.1", "tos": "IPTOS_FAST"}, "spec.tos"),
        ({"protocol": "udp", "address": "10.0.0.1", "tos": 300}, "spec.tos"),
        (
            {"protocol": "udp", "address": "10.0.0.1", "advertised": {"address": "bad_host!"}},
            "spec.advertised.address",
        ),
        ({"protocol": "udp", "address": "10.0.0.1", "unknown": 1}, "unknown"),
        (
            {"protocol": "udp", "address": "0.0.0.0"},
            "a wildcard address (0.0.0.0 or ::) needs advertised.address",
        ),
        ({"protocol": "tcp", "address": "::"}, "a wildcard address (0.0.0.0 or ::) needs advertised.address"),
        (
            {"protocol": "udp", "address": "10.0.0.1", "advertised": {"address": "0.0.0.0"}},
            "advertised.address must be an address peers can send to",
        ),
        ({"address": "10.0.0.1"}, "spec.protocol"),
        ({"protocol": "tls", "address": "10.0.0.1"}, "protocol tls and wss need spec.tls.secretName"),
        ({"protocol": "wss", "address": "10.0.0.1"}, "protocol tls and wss need spec.tls.secretName"),
        ({"protocol": "udp", "address": "10.0.0.1", "tls": {"secretName": "x"}}, "spec.tls"),
        ({"protocol": "ws", "address": "10.0.0.1", "tls": {"secretName": "x"}}, "spec.tls"),
        ({"protocol": "tls", "address": "10.0.0.1", "tls": {}}, "spec.tls.secretName"),
        (
            {"protocol": "tls", "address": "10.0.0.1", "tls": {"secretName": "Bad_Name"}},
            "spec.tls.secretName",
        ),
        (
            {"protocol": "tls", "address": "10.0.0.1", "tls": {"secretName": "x", "clientAuth": "always"}},
            "spec.tls.clientAuth",
        ),
        (
            {"protocol": "wss", "address": "10.0.0.1", "tls": {"secretName": "x", "clientAuth": "required"}},
            "spec.tls.caSecretName",
        ),
    ],
)
def test_api_server_refuses_invalid_specs_naming_the_field(
    env: Env, spec: dict[str, object], needle: str
) -> None:
    control_plane, namespace = env.cp, env.namespace
    obj = {
        "apiVersion": "sipsockets.io/v1alpha1",
        "kind": "SipSocket",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    out = control_plane.kubectl(
        "apply", "--validate=strict", "-n", namespace, "-f", "-", input=json.dumps(obj), check=False
    )
    assert out.returncode != 0, out.stdout
    assert needle in out.stderr, out.stderr
    assert get(control_plane, namespace, "bad") is None


# Wildcard sockets advertise the address peers reach them on (the proxy refuses them without one).
PUBLIC = {"address": "203.0.113.10"}


def test_api_server_accepts_valid_specs(env: Env) -> None:
    control_plane, namespace = env.cp, env.namespace
    good = [
        sipsocket("v4", "udp", "10.0.5.20"),
        sipsocket(
            "v6",
            "tls",
            "2001:db8::5",
            5061,
            advertised={"address": "sbc.example.com", "port": 5061},
            tls={"secretName": "v6-tls"},
        ),
        sipsocket(
            "mtls",
            "wss",
            "10.0.5.23",
            tls={"secretName": "edge-tls", "clientAuth": "optional", "caSecretName": "clients-ca"},
        ),
        sipsocket(
            "all", "ws", "10.0.5.21", 8080, tag="edge", flags=["reuse_port", "frag"], tos="IPTOS_LOWDELAY"
        ),
        sipsocket("tosnum", "udp", "10.0.5.22", tos=184, advertised={"address": "203.0.113.7"}),
    ]
    for obj in good:
        out = apply(control_plane, namespace, obj, check=False)
        assert out.returncode == 0, out.stderr
    # clientAuth defaults to none.
    v6 = get(control_plane, namespace, "v6")
    assert v6 is not None and v6["spec"]["tls"] == {"secretName": "v6-tls", "clientAuth": "none"}


def _cert(workdir: Path) -> tuple[Path, Path]:
    cert, key = workdir / "webhook.crt", workdir / "webhook.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def webhook(env: Env) -> Iterator[int]:
    """A ValidatingWebhookConfiguration for this test's namespace only, pointing at the operator."""
    cert, key = _cert(env.workdir)
    port = free_port()
    env.operator(webhook_listen=f"127.0.0.1:{port}", webhook_cert_file=str(cert), webhook_key_file=str(key))
    name = f"sipsockets-{env.namespace}"
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "validate.sipsockets.io",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/validate-sipsocket",
                    "caBundle": base64.b64encode(cert.read_bytes()).decode(),
                },
                "rules": [
                    {
                        "apiGroups": ["sipsockets.io"],
                        "apiVersions": ["v1alpha1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["sipsockets"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.namespace}},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
            }
        ],
    }
    env.cp.kubectl("apply", "-f", "-", input=json.dumps(config))
    try:
        yield port
    finally:
        env.cp.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found", check=False)


def test_webhook_refuses_conflicts_with_an_actionable_message(env: Env, webhook: int) -> None:
    cp, ns = env.cp, env.namespace
    env.pod("sipproxy-0")
    addr = env.addresses.next()
    assert apply(cp, ns, sipsocket("first", "tcp", addr, 5061)).returncode == 0
    wait_condition(cp, ns, "first", "Ready", "True")

    # tls shares TCP ports with tcp: same endpoint.
    out = apply(cp, ns, sipsocket("second", "tls", addr, 5061, tls={"secretName": "second-tls"}), check=False)
    assert out.returncode != 0
    assert "admission webhook" in out.stderr
    assert f"SipSocket {ns}/first" in out.stderr, out.stderr
    assert "choose another address or port" in out.stderr
    assert get(cp, ns, "second") is None

    # udp on the same port is another endpoint: allowed.
    assert apply(cp, ns, sipsocket("third", "udp", addr, 5061), check=False).returncode == 0

    # A row written by hand (not owned by the operator) holds its endpoint too.
    with sqlite3.connect(env.db_path) as conn:
        conn.execute("INSERT INTO sockets (socket, tag) VALUES (?, 'by-hand')", (f"udp:{addr}:5090",))
    out = apply(cp, ns, sipsocket("fourth", "udp", addr, 5090), check=False)
    assert out.returncode != 0
    assert "not managed by the operator" in out.stderr, out.stderr

    # Updating an existing object onto a taken endpoint is refused as well; the object keeps its spec.
    out = apply(cp, ns, sipsocket("third", "tcp", addr, 5061), check=False)
    assert out.returncode != 0
    obj = get(cp, ns, "third")
    assert obj is not None and obj["spec"]["protocol"] == "udp"


def test_webhook_admits_a_tls_socket_whose_secret_is_missing_with_a_warning(env: Env, webhook: int) -> None:
    """The cert-manager order: the SipSocket first, its Certificate's Secret later. Admitted; `kubectl apply`
    prints why it will not serve yet, and ResolvedRefs says the same."""
    cp, ns = env.cp, env.namespace
    addr = env.addresses.next()
    out = apply(cp, ns, sipsocket("edge", "tls", addr, 5061, tls={"secretName": "edge-tls"}), check=False)
    assert out.returncode == 0, out.stderr
    assert f"Warning: SipSocket {ns}/edge: Secret {ns}/edge-tls not found; create it" in out.stderr, (
        out.stderr
    )
    obj = wait_condition(cp, ns, "edge", "ResolvedRefs", "False", "InvalidCertificateRef")
    assert condition(obj, "Programmed")["reason"] == "InvalidCertificateRef"


def test_race_without_webhook_has_exactly_one_winner(env: Env) -> None:
    cp, ns = env.cp, env.namespace
    env.pod("sipproxy-0")
    env.operator()
    addr = env.addresses.next()
    names = ["racer-a", "racer-b", "racer-c"]
    apply(cp, ns, *(sipsocket(n, "udp", addr, 5080) for n in names))

    def settled() -> list[dict[str, Any]] | None:
        objs = [get(cp, ns, n) for n in names]
        accepted = [condition(o, "Accepted").get("status") for o in objs]
        return [o for o in objs if o] if all(a in ("True", "False") for a in accepted) else None

    objs = wait_for(settled, "every racer decided")
    winners = [o for o in objs if condition(o, "Accepted")["status"] == "True"]
    losers = [o for o in objs if condition(o, "Accepted")["status"] == "False"]
    assert len(winners) == 1
    winner = winners[0]["metadata"]["name"]
    wait_condition(cp, ns, str(winner), "Ready", "True")
    for loser in losers:
        c = condition(loser, "Accepted")
        assert c["reason"] == "EndpointConflict"
        assert f"SipSocket {ns}/{winner}" in c["message"]
    with sqlite3.connect(env.db_path) as conn:
        assert conn.execute("SELECT socket FROM sockets").fetchall() == [(f"udp:{addr}:5080",)]

    # The holder goes: one of the losers takes the endpoint by itself.
    cp.kubectl("delete", "sipsocket", str(winner), "-n", ns, "--timeout=60s")
    rest = [n for n in names if n != winner]

    def new_winner() -> str | None:
        ready = [n for n in rest if condition(get(cp, ns, n), "Ready").get("status") == "True"]
        return ready[0] if len(ready) == 1 else None

    wait_for(new_winner, "a former loser Ready", timeout=120)


def _free_udp_port() -> int:
    """A port no socket of this host holds on any address: a wildcard SipSocket will take it everywhere."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def test_webhook_refuses_an_address_overlapping_a_wildcard_naming_the_holder(env: Env, webhook: int) -> None:
    """udp 0.0.0.0:X holds X on every IPv4 address (the proxy would fail the second bind with EADDRINUSE):
    whichever comes second is refused, naming the first; IPv6's wildcard is another family."""
    cp, ns = env.cp, env.namespace
    env.pod("sipproxy-0")
    addr = env.addresses.next()

    port = _free_udp_port()
    assert apply(cp, ns, sipsocket("wild", "udp", "0.0.0.0", port, advertised=PUBLIC)).returncode == 0
    wait_condition(cp, ns, "wild", "Accepted", "True")
    out = apply(cp, ns, sipsocket("one", "udp", addr, port), check=False)
    assert out.returncode != 0
    assert f"UDP {addr}:{port} is already used by SipSocket {ns}/wild (UDP 0.0.0.0:{port})" in out.stderr, (
        out.stderr
    )
    assert get(cp, ns, "one") is None
    # The IPv6 wildcard does not cover IPv4 (the proxy binds IPv6 sockets V6ONLY).
    assert apply(cp, ns, sipsocket("six", "udp", "::", port, advertised=PUBLIC), check=False).returncode == 0

    # The other way round: the address first, then the wildcard is refused naming it.
    other = _free_udp_port()
    assert apply(cp, ns, sipsocket("two", "udp", addr, other)).returncode == 0
    wait_condition(cp, ns, "two", "Accepted", "True")
    out = apply(cp, ns, sipsocket("wild2", "udp", "0.0.0.0", other, advertised=PUBLIC), check=False)
    assert out.returncode != 0
    assert f"UDP 0.0.0.0:{other} is already used by SipSocket {ns}/two (UDP {addr}:{other})" in out.stderr, (
        out.stderr
    )
    assert get(cp, ns, "wild2") is None


def test_reconcile_gives_an_address_and_a_wildcard_over_it_to_exactly_one(env: Env) -> None:
    """Without the webhook both objects exist; reconcile accepts one and names it in the other's reason."""
    cp, ns = env.cp, env.namespace
    env.pod("sipproxy-0")
    env.operator()
    addr, port = env.addresses.next(), _free_udp_port()
    apply(
        cp,
        ns,
        sipsocket("wild", "udp", "0.0.0.0", port, advertised=PUBLIC),
        sipsocket("one", "udp", addr, port),
    )

    def settled() -> list[dict[str, Any]] | None:
        objs = [get(cp, ns, n) for n in ("wild", "one")]
        decided = all(condition(o, "Accepted").get("status") in ("True", "False") for o in objs)
        return [o for o in objs if o] if decided else None

    objs = wait_for(settled, "both decided")
    winners = [o["metadata"]["name"] for o in objs if condition(o, "Accepted")["status"] == "True"]
    losers = [o for o in objs if condition(o, "Accepted")["status"] == "False"]
    assert len(winners) == 1 and len(losers) == 1, objs
    c = condition(losers[0], "Accepted")
    assert c["reason"] == "EndpointConflict"
    assert f"SipSocket {ns}/{winners[0]}" in c["message"]
    wait_condition(cp, ns, winners[0], "Ready", "True")
