"""The Secrets a SipSocket references (`spec.tls`), judged (pure): the `ResolvedRefs` condition's input, and
which SipSockets a Secret's change concerns.

A pass reads the Secrets it references (`SecretState` each: read, missing, or not readable) and `resolve`
checks them with `certificates`: the kubernetes.io/tls Secret's certificate and key, and, with client
authentication, the CA Secret's `ca.crt`. The Secret watch tells the reconciler a Secret's name and
resourceVersion; `objects_woken` says which SipSockets referenced it at a version other than the one their
last pass saw, so a renewal wakes exactly those and the operator's own start-up listing wakes none.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sipoperator.certificates import (
    INVALID_CERTIFICATE_REF,
    CertificateProblem,
    TlsMaterial,
    check_ca_secret,
    check_tls_secret,
    secret_missing,
)
from sipoperator.spec import TlsSpec

RESOLVED_REFS = "ResolvedRefs"  # the condition's reason when every reference resolved (Gateway API)


@dataclass(frozen=True)
class SecretRead:
    """A Secret as the API returned it: type, base64 data, resourceVersion."""

    type: str | None
    data: Mapping[str, str]
    version: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SecretRead:
        meta = body.get("metadata") or {}
        data = body.get("data") or {}
        return cls(
            type=body.get("type"),
            data={str(k): str(v) for k, v in data.items()} if isinstance(data, Mapping) else {},
            version=str(meta.get("resourceVersion") or ""),
        )


@dataclass(frozen=True)
class SecretUnreadable:
    """The API could not be asked or refused (not a 404): the message says why."""

    message: str


SecretState = SecretRead | SecretUnreadable | None  # None: the Secret does not exist


@dataclass(frozen=True)
class Resolution:
    """What the references of one SipSocket resolve to. `material` and `ca_list` are set when `ok`."""

    ok: bool
    reason: str
    message: str
    material: TlsMaterial | None = None
    ca_list: bytes | None = None  # PEM of the CAs that verify client certificates (clientAuth not none)


def resolve(
    namespace: str, tls: TlsSpec, secrets: Mapping[str, SecretState], now: datetime.datetime
) -> Resolution:
    """Check the certificate Secret, then the CA Secret; the first problem is the answer."""
    cert = _material(namespace, tls.secret_name, secrets.get(tls.secret_name), now)
    if isinstance(cert, CertificateProblem):
        return Resolution(False, cert.reason, cert.message)
    ca_list: bytes | None = None
    where = f"Secret {namespace}/{tls.secret_name}"
    if tls.client_auth != "none" and tls.ca_secret_name:
        ca = _ca(namespace, tls.ca_secret_name, secrets.get(tls.ca_secret_name))
        if isinstance(ca, CertificateProblem):
            return Resolution(False, ca.reason, ca.message)
        ca_list = ca
        where += f" and client CAs of Secret {namespace}/{tls.ca_secret_name}"
    summary = cert.summary
    names = ", ".join(summary.dns_names) or "no DNS names"
    message = f"{where}: {summary.subject} ({names}), valid until {summary.not_after}"
    return Resolution(True, RESOLVED_REFS, message, cert, ca_list)


def _material(
    namespace: str, name: str, state: SecretState, now: datetime.datetime
) -> TlsMaterial | CertificateProblem:
    if state is None:
        return _missing(namespace, name)
    if isinstance(state, SecretUnreadable):
        return CertificateProblem(f"cannot read Secret {namespace}/{name}: {state.message}")
    return check_tls_secret(namespace, name, state.type, state.data, now)


def _ca(namespace: str, name: str, state: SecretState) -> bytes | CertificateProblem:
    if state is None:
        return _missing(namespace, name)
    if isinstance(state, SecretUnreadable):
        return CertificateProblem(f"cannot read Secret {namespace}/{name}: {state.message}")
    return check_ca_secret(namespace, name, state.data)


def _missing(namespace: str, name: str) -> CertificateProblem:
    problem = secret_missing(namespace, name)
    return CertificateProblem(
        f"{problem.message}; create it (kubernetes.io/tls, with tls.crt and tls.key), for example with a "
        "cert-manager Certificate whose secretName is this name",
        INVALID_CERTIFICATE_REF,
    )


def versions(secrets: Mapping[str, SecretState]) -> dict[str, str]:
    """name -> the resourceVersion a pass saw ("" for a Secret missing or not readable)."""
    return {name: state.version if isinstance(state, SecretRead) else "" for name, state in secrets.items()}


def objects_woken(
    references: Mapping[str, TlsSpec | None],
    seen: Mapping[str, Mapping[str, str]],
    name: str,
    version: str | None,
) -> list[str]:
    """The SipSockets (uid) a change of Secret `name` concerns: those referencing it, unless their last pass
    saw this very version. `references`: uid -> spec.tls; `seen`: uid -> versions of its last pass;
    `version`: the Secret's resourceVersion, None when it was deleted."""
    now_is = version or ""
    return sorted(
        uid
        for uid, tls in references.items()
        if tls is not None and name in tls.secrets and seen.get(uid, {}).get(name) != now_is
    )


def referenced(tls_specs: Iterable[TlsSpec | None]) -> frozenset[str]:
    """Every Secret name these specs reference."""
    return frozenset(name for tls in tls_specs if tls is not None for name in tls.secrets)
