"""The OpenSIPS `tls_mgm` row a TLS SipSocket owns: one server domain per socket (pure).

- name: `<namespace>/<name>` (shortened with a hash to the column's 64 characters);
- `type` 2 (server), `match_ip_address` the socket's `IP:port` (`*` for a wildcard address: a connection's
  local address is never the wildcard, so only `*` matches it), `match_sip_domain` `*` (any SNI, and none);
- `verify_cert`/`require_cert` from clientAuth: none 0/0, optional 1/0, required 1/1; `ca_list` the CA
  Secret's ca.crt (with client authentication only);
- `certificate`/`private_key`: tls.crt and tls.key as they are (the chain, then the key).

`planned` decides the row a pass writes: from the Secret when it resolved; otherwise the row already in the
table keeps its certificate, key and client-authentication settings (the last good ones) and only follows
the socket's address, so a bad Secret never takes a serving socket down; with neither there is no row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from sipoperator.certificates import CertificateSummary, rfc3339, summarize
from sipoperator.refs import Resolution
from sipoperator.spec import DesiredSocket
from sipproxy.shared.tls_domains import ANY, SERVER_DOMAIN, address_key

DOMAIN_COLUMN = 64  # CHAR(64)
CLIENT_AUTH_FLAGS = {"none": (0, 0), "optional": (1, 0), "required": (1, 1)}  # verify_cert, require_cert


@dataclass(frozen=True)
class DomainRow:
    """The columns of tls_mgm the operator writes; every other column is left at its default (NULL, 0)."""

    domain: str
    match_ip_address: str
    certificate: bytes
    private_key: bytes = field(repr=False)
    verify_cert: int = 0
    require_cert: int = 0
    ca_list: bytes | None = None
    match_sip_domain: str = ANY
    type: int = SERVER_DOMAIN
    method: str = "SSLv23"

    def columns(self) -> dict[str, Any]:
        """Every column the operator controls, the ones it leaves unset as NULL/0 (a hand edit is undone)."""
        return {
            "domain": self.domain,
            "match_ip_address": self.match_ip_address,
            "match_sip_domain": self.match_sip_domain,
            "type": self.type,
            "method": self.method,
            "verify_cert": self.verify_cert,
            "require_cert": self.require_cert,
            "certificate": self.certificate,
            "private_key": self.private_key,
            "crl_check_all": 0,
            "crl_dir": None,
            "ca_list": self.ca_list,
            "ca_dir": None,
            "cipher_list": None,
            "dh_params": None,
            "ec_curve": None,
        }

    @classmethod
    def from_columns(cls, row: Mapping[str, Any]) -> DomainRow:
        """The row as read back (CHAR blank-padded, PEM as bytes or text)."""
        return cls(
            domain=_text(row.get("domain")) or "",
            match_ip_address=_text(row.get("match_ip_address")) or ANY,
            certificate=_pem(row.get("certificate")) or b"",
            private_key=_pem(row.get("private_key")) or b"",
            verify_cert=int(row.get("verify_cert") or 0),
            require_cert=int(row.get("require_cert") or 0),
            ca_list=_pem(row.get("ca_list")),
            match_sip_domain=_text(row.get("match_sip_domain")) or ANY,
            type=int(row.get("type") or 0),
            method=_text(row.get("method")) or "SSLv23",
        )

    def digest(self) -> str:
        """Changes whenever what the proxies would load changes: a proxy that applied it is current."""
        h = hashlib.sha256()
        for key, value in sorted(self.columns().items()):
            h.update(f"{key}={value!r};".encode())
        return h.hexdigest()[:16]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8", "replace")
    return str(value).strip() or None


def _pem(value: Any) -> bytes | None:
    if value is None:
        return None
    data = value.encode() if isinstance(value, str) else bytes(value)
    return data if data.strip() else None


def same_domain(current: DomainRow | None, wanted: DomainRow | None) -> bool:
    return (current.columns() if current else None) == (wanted.columns() if wanted else None)


def domain_name(namespace: str, name: str) -> str:
    """The domain's name, unique per SipSocket; readable in `tls_list` where it fits the column."""
    full = f"{namespace}/{name}"
    if len(full) <= DOMAIN_COLUMN:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:10]
    return f"{full[: DOMAIN_COLUMN - len(digest) - 1]}~{digest}"


def match_address(wanted: DesiredSocket) -> str:
    if ipaddress.ip_address(wanted.address).is_unspecified:
        return ANY
    return address_key(wanted.address, wanted.port)


def planned(
    namespace: str, name: str, wanted: DesiredSocket, resolution: Resolution, current: DomainRow | None
) -> DomainRow | None:
    """The row to write for a TLS socket, or None: nothing to serve (no valid Secret, no last good row)."""
    assert wanted.tls is not None
    domain, address = domain_name(namespace, name), match_address(wanted)
    if resolution.ok and resolution.material is not None:
        verify, require = CLIENT_AUTH_FLAGS[wanted.tls.client_auth]
        return DomainRow(
            domain=domain,
            match_ip_address=address,
            certificate=resolution.material.certificate,
            private_key=resolution.material.private_key,
            verify_cert=verify,
            require_cert=require,
            ca_list=resolution.ca_list if wanted.tls.client_auth != "none" else None,
        )
    if current is None or not current.certificate or not current.private_key:
        return None
    return dataclasses.replace(current, domain=domain, match_ip_address=address)


@dataclass(frozen=True)
class Served:
    """The certificate of a domain row: what the proxies hand out for the socket."""

    summary: CertificateSummary
    serial: str  # hex
    not_before: str  # RFC 3339

    def describe(self) -> str:
        return (
            f"the certificate of {self.not_before[:10]}/{self.serial} "
            f"({self.summary.subject}, valid until {self.summary.not_after})"
        )


def served(row: DomainRow | None) -> Served | None:
    if row is None or not row.certificate:
        return None
    try:
        cert = x509.load_pem_x509_certificates(row.certificate)[0]
    except (ValueError, IndexError):
        return None
    return Served(summarize(cert), format(cert.serial_number, "X"), rfc3339(cert.not_valid_before_utc))
