"""The certificate a SipSocket names: every way a kubernetes.io/tls Secret can be unusable is reported with
a message a person can act on; a good one gives the PEM for the proxy and the status summary."""

from __future__ import annotations

import base64
import datetime

import pytest
from cryptography.hazmat.primitives import serialization

from sipoperator.certificates import (
    INVALID_CERTIFICATE_REF,
    CertificateProblem,
    CertificateSummary,
    TlsMaterial,
    check_ca_secret,
    check_tls_secret,
    secret_missing,
)
from tests.tlscerts import issue, make_ca, new_key

UTC = datetime.UTC
NOW = datetime.datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
START = datetime.datetime(2027, 1, 1, tzinfo=UTC)
END = datetime.datetime(2027, 4, 1, tzinfo=UTC)
CA = make_ca()
LEAF = issue(
    CA, "sip.example.com", dns=["sip.example.com", "edge.example.com"], not_before=START, not_after=END
)
TLS = "kubernetes.io/tls"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data(**overrides: bytes | str | None) -> dict[str, str]:
    values: dict[str, bytes | str | None] = {"tls.crt": LEAF.cert_pem, "tls.key": LEAF.key_pem}
    values.update({k.replace("_", "."): v for k, v in overrides.items()})
    return {k: (v if isinstance(v, str) else b64(v)) for k, v in values.items() if v is not None}


def problem(
    secret_type: str | None = TLS, secret_data: dict[str, str] | None = None, now: datetime.datetime = NOW
) -> str:
    result = check_tls_secret("voip", "carrier-tls", secret_type, secret_data, now)
    assert isinstance(result, CertificateProblem), result
    assert result.reason == INVALID_CERTIFICATE_REF
    return result.message


def test_a_good_secret_gives_the_pem_and_the_summary() -> None:
    chain = LEAF.cert_pem + CA.cert_pem
    result = check_tls_secret("voip", "carrier-tls", TLS, data(tls_crt=chain, ca_crt=CA.cert_pem), NOW)
    assert isinstance(result, TlsMaterial)
    assert (result.certificate, result.private_key, result.ca) == (chain, LEAF.key_pem, CA.cert_pem)
    assert result.summary == CertificateSummary(
        "CN=sip.example.com", ("sip.example.com", "edge.example.com"), "2027-04-01T00:00:00Z"
    )
    assert result.summary.status() == {
        "subject": "CN=sip.example.com",
        "dnsNames": ["sip.example.com", "edge.example.com"],
        "notAfter": "2027-04-01T00:00:00Z",
    }
    assert "PRIVATE KEY" not in repr(result)


def test_a_certificate_without_dns_names_and_a_naive_now() -> None:
    bare = issue(CA, "bare", not_before=START, not_after=END)
    result = check_tls_secret(
        "voip", "bare", TLS, data(tls_crt=bare.cert_pem, tls_key=bare.key_pem), NOW.replace(tzinfo=None)
    )
    assert isinstance(result, TlsMaterial)
    assert (result.summary.dns_names, result.ca) == ((), None)


def test_missing_secret() -> None:
    missing = secret_missing("voip", "carrier-tls")
    assert (missing.reason, missing.message) == (INVALID_CERTIFICATE_REF, "Secret voip/carrier-tls not found")


def test_wrong_secret_type() -> None:
    assert problem("Opaque", data()) == (
        "Secret voip/carrier-tls has type Opaque; it must be kubernetes.io/tls (with tls.crt and tls.key)"
    )
    assert problem(None, data()).startswith("Secret voip/carrier-tls has type Opaque;")


def test_missing_keys() -> None:
    assert problem(secret_data=data(tls_key=None)) == "Secret voip/carrier-tls has no tls.key"
    assert problem(secret_data=data(tls_crt="")) == "Secret voip/carrier-tls has no tls.crt"
    assert problem(secret_data=None) == "Secret voip/carrier-tls has no tls.crt and no tls.key"


def test_not_base64() -> None:
    assert (
        problem(secret_data=data(tls_crt="not base64!"))
        == "Secret voip/carrier-tls: tls.crt is not valid base64"
    )
    assert problem(secret_data=data(tls_key="@@@")) == "Secret voip/carrier-tls: tls.key is not valid base64"


def test_not_pem() -> None:
    assert (
        problem(secret_data=data(tls_crt=b"hello"))
        == "Secret voip/carrier-tls: tls.crt holds no PEM certificate"
    )
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    assert problem(secret_data=data(tls_crt=broken)).startswith(
        "Secret voip/carrier-tls: tls.crt is not a valid PEM certificate ("
    )
    der = LEAF.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert (
        problem(secret_data=data(tls_key=der)) == "Secret voip/carrier-tls: tls.key holds no PEM private key"
    )
    bad_key = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    assert problem(secret_data=data(tls_key=bad_key)).startswith(
        "Secret voip/carrier-tls: tls.key is not a valid PEM private key ("
    )


def test_encrypted_key() -> None:
    encrypted = LEAF.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    assert problem(secret_data=data(tls_key=encrypted)) == (
        "Secret voip/carrier-tls: tls.key is encrypted; the proxy needs the key unencrypted"
    )


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_key_does_not_match_the_certificate(kind: str) -> None:
    other = new_key(kind).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert problem(secret_data=data(tls_key=other)) == (
        "Secret voip/carrier-tls: tls.key does not match the certificate in tls.crt"
    )


def test_expired_and_not_yet_valid() -> None:
    assert problem(secret_data=data(), now=datetime.datetime(2027, 5, 1, tzinfo=UTC)) == (
        "Secret voip/carrier-tls: the certificate in tls.crt (CN=sip.example.com) expired at "
        "2027-04-01T00:00:00Z; renew it or point the SipSocket at a valid Secret"
    )
    assert problem(secret_data=data(), now=datetime.datetime(2026, 12, 1, tzinfo=UTC)) == (
        "Secret voip/carrier-tls: the certificate in tls.crt (CN=sip.example.com) is not valid before "
        "2027-01-01T00:00:00Z; renew it or point the SipSocket at a valid Secret"
    )


def test_an_expired_intermediate_is_named() -> None:
    expired = issue(
        CA, "old intermediate", not_before=START, not_after=datetime.datetime(2027, 2, 1, tzinfo=UTC)
    )
    chain = LEAF.cert_pem + expired.cert_pem
    assert problem(secret_data=data(tls_crt=chain)) == (
        "Secret voip/carrier-tls: certificate 2 of tls.crt (CN=old intermediate) expired at "
        "2027-02-01T00:00:00Z; renew it or point the SipSocket at a valid Secret"
    )


def test_bad_ca_crt() -> None:
    assert (
        problem(secret_data=data(ca_crt=b"junk"))
        == "Secret voip/carrier-tls: ca.crt holds no PEM certificate"
    )
    assert problem(secret_data=data(ca_crt="%%")) == "Secret voip/carrier-tls: ca.crt is not valid base64"


def test_ca_secret_for_client_authentication() -> None:
    assert check_ca_secret("voip", "clients-ca", {"ca.crt": b64(CA.cert_pem)}) == CA.cert_pem
    missing = check_ca_secret("voip", "clients-ca", {"tls.crt": b64(CA.cert_pem)})
    assert missing == CertificateProblem("Secret voip/clients-ca has no ca.crt")
    assert check_ca_secret("voip", "clients-ca", {"ca.crt": b64(b"junk")}) == CertificateProblem(
        "Secret voip/clients-ca: ca.crt holds no PEM certificate"
    )
