"""Checks of the certificate a SipSocket names: a `kubernetes.io/tls` Secret (pure).

`check_tls_secret(namespace, name, secret_type, data, now)` takes the Secret's type and its `data` (base64
values, as the API returns them) and returns either `TlsMaterial` (the PEM to write into the proxy's
`tls_mgm` row, and the `CertificateSummary` that `status.certificate` shows: subject, DNS names, notAfter
in RFC 3339) or a `CertificateProblem` (reason `InvalidCertificateRef`, the Gateway API's, for the
`ResolvedRefs` condition) whose message says what to fix, naming the Secret and the key:
the Secret is not of type kubernetes.io/tls; tls.crt or tls.key is missing, not base64 or not PEM; the key
is encrypted (the proxy has no passphrase); the key does not match the first certificate of tls.crt; a
certificate of tls.crt has expired or is not valid yet at `now`; ca.crt, when present, is not PEM.
`check_ca_secret` does the same for the Secret of trusted CAs (`ca.crt`) that client authentication uses,
and `secret_missing` words the problem of a Secret that does not exist.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)

INVALID_CERTIFICATE_REF = "InvalidCertificateRef"
TLS_SECRET_TYPE = "kubernetes.io/tls"
TLS_CRT, TLS_KEY, CA_CRT = "tls.crt", "tls.key", "ca.crt"


@dataclass(frozen=True)
class CertificateProblem:
    message: str
    reason: str = INVALID_CERTIFICATE_REF


@dataclass(frozen=True)
class CertificateSummary:
    subject: str  # RFC 4514, e.g. "CN=sip.example.com,O=Example"
    dns_names: tuple[str, ...]  # the subjectAltName DNS entries
    not_after: str  # RFC 3339, UTC

    def status(self) -> dict[str, Any]:
        """The `status.certificate` object."""
        return {"subject": self.subject, "dnsNames": list(self.dns_names), "notAfter": self.not_after}


@dataclass(frozen=True)
class TlsMaterial:
    certificate: bytes  # PEM: tls.crt as it is (the certificate, then any intermediates)
    private_key: bytes = field(repr=False)  # PEM: tls.key
    ca: bytes | None  # PEM: ca.crt, when the Secret has one
    summary: CertificateSummary


def rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def secret_missing(namespace: str, name: str) -> CertificateProblem:
    return CertificateProblem(f"Secret {namespace}/{name} not found")


def check_tls_secret(
    namespace: str,
    name: str,
    secret_type: str | None,
    data: Mapping[str, str] | None,
    now: datetime.datetime,
) -> TlsMaterial | CertificateProblem:
    where = f"Secret {namespace}/{name}"
    if secret_type != TLS_SECRET_TYPE:
        return CertificateProblem(
            f"{where} has type {secret_type or 'Opaque'}; "
            f"it must be {TLS_SECRET_TYPE} (with {TLS_CRT} and {TLS_KEY})"
        )
    data = data or {}
    missing = [key for key in (TLS_CRT, TLS_KEY) if not data.get(key)]
    if missing:
        return CertificateProblem(f"{where} has no {' and no '.join(missing)}")
    cert_pem = _decode(data, TLS_CRT)
    if cert_pem is None:
        return CertificateProblem(f"{where}: {TLS_CRT} is not valid base64")
    key_pem = _decode(data, TLS_KEY)
    if key_pem is None:
        return CertificateProblem(f"{where}: {TLS_KEY} is not valid base64")
    chain = _certificates(cert_pem)
    if isinstance(chain, str):
        return CertificateProblem(f"{where}: {TLS_CRT} {chain}")
    key = _private_key(key_pem)
    if isinstance(key, str):
        return CertificateProblem(f"{where}: {TLS_KEY} {key}")
    leaf = chain[0]
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        return CertificateProblem(f"{where}: {TLS_KEY} does not match the certificate in {TLS_CRT}")
    expiry = _validity(chain, now)
    if expiry is not None:
        return CertificateProblem(f"{where}: {expiry}; renew it or point the SipSocket at a valid Secret")
    ca_pem: bytes | None = None
    if CA_CRT in data:
        ca = _ca(data)
        if isinstance(ca, str):
            return CertificateProblem(f"{where}: {ca}")
        ca_pem = ca
    return TlsMaterial(cert_pem, key_pem, ca_pem, summarize(leaf))


def check_ca_secret(namespace: str, name: str, data: Mapping[str, str] | None) -> bytes | CertificateProblem:
    """The PEM bundle of trusted CAs held in a Secret's ca.crt."""
    data = data or {}
    if not data.get(CA_CRT):
        return CertificateProblem(f"Secret {namespace}/{name} has no {CA_CRT}")
    ca = _ca(data)
    if isinstance(ca, str):
        return CertificateProblem(f"Secret {namespace}/{name}: {ca}")
    return ca


def summarize(cert: x509.Certificate) -> CertificateSummary:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns = ()
    return CertificateSummary(cert.subject.rfc4514_string(), dns, rfc3339(cert.not_valid_after_utc))


def _decode(data: Mapping[str, str], key: str) -> bytes | None:
    try:
        return base64.b64decode(data[key], validate=True)
    except (binascii.Error, ValueError):
        return None


def _certificates(pem: bytes) -> list[x509.Certificate] | str:
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        return "holds no PEM certificate"
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        return f"is not a valid PEM certificate ({exc})"


def _private_key(pem: bytes) -> PrivateKeyTypes | str:
    if b"PRIVATE KEY-----" not in pem:
        return "holds no PEM private key"
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        return "is encrypted; the proxy needs the key unencrypted"
    except (ValueError, UnsupportedAlgorithm) as exc:
        return f"is not a valid PEM private key ({exc})"


def _spki(public_key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _validity(chain: list[x509.Certificate], now: datetime.datetime) -> str | None:
    if now.tzinfo is None:
        now = now.replace(tzinfo=datetime.UTC)
    for n, cert in enumerate(chain):
        which = f"the certificate in {TLS_CRT}" if n == 0 else f"certificate {n + 1} of {TLS_CRT}"
        which += f" ({cert.subject.rfc4514_string()})"
        if now > cert.not_valid_after_utc:
            return f"{which} expired at {rfc3339(cert.not_valid_after_utc)}"
        if now < cert.not_valid_before_utc:
            return f"{which} is not valid before {rfc3339(cert.not_valid_before_utc)}"
    return None


def _ca(data: Mapping[str, str]) -> bytes | str:
    pem = _decode(data, CA_CRT)
    if pem is None:
        return f"{CA_CRT} is not valid base64"
    parsed = _certificates(pem)
    if isinstance(parsed, str):
        return f"{CA_CRT} {parsed}"
    return pem
