"""The webhook registration and its certificate: the chart's own CA, or cert-manager's."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

from tests.unit.chart.rendering import OPTION_SETS, RELEASE, rendered


def test_webhook_is_registered_for_sipsocket_create_and_update() -> None:
    r = rendered()
    (vwc,) = r.of_kind("ValidatingWebhookConfiguration")
    (hook,) = vwc["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["rules"] == [
        {
            "apiGroups": ["sipsockets.io"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["sipsockets"],
            "scope": "Namespaced",
        }
    ]
    assert hook["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "voip"}}
    svc = r.one("Service", "-webhook")
    assert hook["clientConfig"]["service"] == {
        "name": svc["metadata"]["name"],
        "namespace": "voip",
        "path": "/validate-sipsocket",
        "port": 443,
    }
    assert svc["spec"]["ports"][0]["targetPort"] == "webhook"


def test_generated_certificate_is_signed_by_the_registered_ca(tmp_path: Path) -> None:
    r = rendered({"operator": {"webhook": {"extraIpAddresses": ["127.0.0.1"]}}})
    (vwc,) = r.of_kind("ValidatingWebhookConfiguration")
    secret = r.one("Secret", "-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert vwc["webhooks"][0]["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    for key in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "tls.crt"), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    svc = f"{RELEASE}-webhook"
    for name in (svc, f"{svc}.voip", f"{svc}.voip.svc", f"{svc}.voip.svc.cluster.local"):
        assert f"DNS:{name}" in text
    assert "IP Address:127.0.0.1" in text
    # The key belongs to the certificate.
    pub_cert = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "tls.crt"), "-noout", "-pubkey"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pub_key = subprocess.run(
        ["openssl", "pkey", "-in", str(tmp_path / "tls.key"), "-pubout"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert pub_cert == pub_key


def test_cert_manager_issues_the_certificate_and_injects_the_ca() -> None:
    r = rendered(OPTION_SETS["certManager"])
    assert not [s for s in r.of_kind("Secret") if s["metadata"]["name"].endswith("-webhook-tls")]
    (vwc,) = r.of_kind("ValidatingWebhookConfiguration")
    cert = r.one("Certificate", "-webhook-tls")
    assert (
        vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"voip/{cert['metadata']['name']}"
    )
    assert "caBundle" not in vwc["webhooks"][0]["clientConfig"]
    assert cert["spec"]["secretName"] == f"{RELEASE}-webhook-tls"
    assert f"{RELEASE}-webhook.voip.svc" in cert["spec"]["dnsNames"]
    issuer = r.one("Issuer", "-webhook-issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    assert cert["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    theirs = rendered(OPTION_SETS["certManagerIssuer"])
    assert not theirs.of_kind("Issuer")
    assert theirs.one("Certificate")["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


def test_webhook_url_for_an_operator_outside_the_cluster() -> None:
    url = "https://127.0.0.1:9443/validate-sipsocket"
    (vwc,) = rendered({"operator": {"webhook": {"url": url}}}).of_kind("ValidatingWebhookConfiguration")
    client = vwc["webhooks"][0]["clientConfig"]
    assert client["url"] == url
    assert "service" not in client


def test_webhook_disabled_registers_nothing() -> None:
    r = rendered(OPTION_SETS["everythingOff"])
    assert not r.of_kind("ValidatingWebhookConfiguration")
    op = r.one("Deployment", "-operator")
    env = {e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SIPSOCKETS_WEBHOOK_LISTEN"] == ""
    assert "SIPSOCKETS_WEBHOOK_CERT_FILE" not in env
