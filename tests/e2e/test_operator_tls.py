"""A `tls` SipSocket from a Kubernetes Secret against a real API server, the operator and real proxies: the
cert-manager order (SipSocket first, Secret later), the certificate served to an `ssl` client, a renewal while
a connection stays open (it keeps working; a new one gets the new certificate; no restart), and a Secret that
goes missing (ResolvedRefs False; the last good certificate still served). Also: the TLS examples are valid
SipSockets for the API server (schema and CEL)."""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
import ssl
import time
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.serialization import Encoding

from devenv.cluster_client import ClusterClient
from devenv.sipclient import options_request, status_code
from tests.e2e.operator_support import (
    REPO,
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
from tests.tlscerts import Issued, issue, make_ca

__all__ = ["crd", "env"]  # fixtures

HOST = "sip.example.com"


def put_secret(cp: ClusterClient, namespace: str, name: str, leaf: Issued) -> None:
    """Create or replace a kubernetes.io/tls Secret, as cert-manager writes one."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(leaf.cert_pem).decode(),
            "tls.key": base64.b64encode(leaf.key_pem).decode(),
        },
    }
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(secret))


def connect(address: str, port: int, ca: Issued) -> ssl.SSLSocket:
    """A TLS connection verifying the proxy's certificate against `ca` and the name, with SNI."""
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    raw = socket.create_connection((address, port), timeout=5)
    try:
        return context.wrap_socket(raw, server_hostname=HOST)
    except BaseException:
        raw.close()
        raise


def served_certificate(address: str, port: int, ca: Issued) -> bytes | None:
    """The DER certificate a new connection gets; None when the handshake fails or nothing listens."""
    try:
        with connect(address, port, ca) as conn:
            return conn.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None


def der(leaf: Issued) -> bytes:
    return leaf.cert.public_bytes(Encoding.DER)


def options_over(conn: ssl.SSLSocket, address: str, port: int) -> int:
    """Send an OPTIONS on an established TLS connection; the status code of the reply."""
    conn.sendall(options_request(address, port, conn.getsockname()[:2], transport="TLS"))
    reply = b""
    deadline = time.monotonic() + 10
    while b"\r\n\r\n" not in reply and time.monotonic() < deadline:
        chunk = conn.recv(65535)
        if not chunk:
            break
        reply += chunk
    return status_code(reply.decode(errors="replace"))


def domains(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT domain, match_ip_address FROM tls_mgm").fetchall()
    return [(str(r[0]).strip(), str(r[1]).strip()) for r in rows]


def test_tls_socket_from_a_secret_renewed_while_a_connection_stays_open_then_missing(env: Env) -> None:
    cp, ns = env.cp, env.namespace
    env.pod("sipproxy-0")
    env.operator()
    addr, port = env.addresses.next(), 5061
    ca = make_ca()
    first = issue(ca, HOST, dns=[HOST])
    renewed = issue(ca, HOST, dns=[HOST, "edge.example.com"])

    # cert-manager's order: the SipSocket names a Secret that does not exist yet.
    apply(cp, ns, sipsocket("edge", "tls", addr, port, tls={"secretName": "edge-tls"}))
    obj = wait_condition(cp, ns, "edge", "ResolvedRefs", "False", "InvalidCertificateRef")
    assert condition(obj, "ResolvedRefs")["message"].startswith(f"Secret {ns}/edge-tls not found")
    assert condition(obj, "Ready")["reason"] == "InvalidCertificateRef"
    assert served_certificate(addr, port, ca) is None  # nothing listens without a certificate

    put_secret(cp, ns, "edge-tls", first)
    obj = wait_condition(cp, ns, "edge", "Ready", "True", "Listening")
    assert condition(obj, "ResolvedRefs")["status"] == "True"
    assert obj["status"]["certificate"]["subject"] == f"CN={HOST}"
    assert obj["status"]["certificate"]["dnsNames"] == [HOST]
    assert domains(env.db_path) == [(f"{ns}/edge", f"{addr}:{port}")]
    assert wait_for(lambda: served_certificate(addr, port, ca) == der(first), "the first certificate served")

    # Renewal while a connection stays open.
    with connect(addr, port, ca) as held:
        assert held.getpeercert(binary_form=True) == der(first)
        assert options_over(held, addr, port) == 200
        put_secret(cp, ns, "edge-tls", renewed)
        replaced = time.monotonic()
        wait_for(
            lambda: served_certificate(addr, port, ca) == der(renewed), "a new connection gets the renewal"
        )
        print(f"renewed certificate served {time.monotonic() - replaced:.1f}s after the Secret was replaced")
        assert options_over(held, addr, port) == 200  # not closed, the proxy not restarted

    def renewal_reported() -> dict[str, Any] | None:
        found = get(cp, ns, "edge")
        names = ((found or {}).get("status", {}).get("certificate") or {}).get("dnsNames")
        return found if names == [HOST, "edge.example.com"] else None

    obj = wait_for(renewal_reported, "status.certificate shows the renewal")
    assert condition(obj, "Ready")["status"] == "True"

    # The Secret goes missing: the last good certificate stays, ResolvedRefs says so.
    cp.kubectl("delete", "secret", "edge-tls", "-n", ns)
    obj = wait_condition(cp, ns, "edge", "ResolvedRefs", "False", "InvalidCertificateRef")
    message = condition(obj, "ResolvedRefs")["message"]
    assert message.startswith(f"Secret {ns}/edge-tls not found"), message
    assert "the proxies keep serving the certificate of" in message
    assert format(renewed.cert.serial_number, "X") in message
    assert condition(obj, "Ready")["status"] == "True"
    assert served_certificate(addr, port, ca) == der(renewed)

    # Deletion takes the domain row with the socket.
    cp.kubectl("delete", "sipsocket", "edge", "-n", ns, "--wait=true", "--timeout=60s")
    assert domains(env.db_path) == []
    assert wait_for(lambda: served_certificate(addr, port, ca) is None, "the socket closed")


def _example_sipsockets() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((REPO / "examples" / "tls").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    return [d for d in docs if d.get("kind") == "SipSocket"]


def test_the_tls_examples_are_valid_sipsockets(
    crd: Path, control_plane: ClusterClient, namespace: str
) -> None:
    examples = _example_sipsockets()
    assert {e["spec"]["protocol"] for e in examples} >= {"tls", "wss", "udp"}
    for obj in examples:
        out = apply(
            control_plane, namespace, {**obj, "metadata": {"name": obj["metadata"]["name"]}}, check=False
        )
        assert out.returncode == 0, out.stderr
