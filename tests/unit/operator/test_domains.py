"""The tls_mgm row of a TLS SipSocket: derived from the spec and the Secret, kept from the last good row while
the Secret is bad, and read by the proxy's own tls_mgm code as the server domain of exactly that socket."""

from __future__ import annotations

import base64
import datetime
import ssl

import pytest

from sipoperator.domains import (
    DOMAIN_COLUMN,
    DomainRow,
    domain_name,
    match_address,
    planned,
    same_domain,
    served,
)
from sipoperator.refs import Resolution, SecretRead, resolve
from sipoperator.spec import DesiredSocket, validate
from sipproxy.shared.tls_domains import (
    SERVER_DOMAIN,
    ServerContexts,
    TlsDomain,
    select_server_domain,
)
from tests.tlscerts import Issued, issue, make_ca

UTC = datetime.UTC
NOW = datetime.datetime.now(UTC)
CA = make_ca()
OLD = issue(CA, "sip.example.com", dns=["sip.example.com"])
NEW = issue(CA, "sip.example.com", dns=["sip.example.com", "edge.example.com"])


def socket(address: str = "10.0.5.20", port: int = 5061, tls: dict[str, str] | None = None) -> DesiredSocket:
    spec: dict[str, object] = {"protocol": "tls", "address": address, "port": port}
    spec["tls"] = {"secretName": "edge-tls", **(tls or {})}
    if address in ("0.0.0.0", "::"):
        spec["advertised"] = {"address": "sip.example.com"}  # a wildcard needs one
    return validate(spec)


def resolved(leaf: Issued = OLD, ca: bytes | None = None) -> Resolution:
    pem = {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem}
    data = {k: base64.b64encode(v).decode() for k, v in pem.items()}
    secrets: dict[str, SecretRead | None] = {"edge-tls": SecretRead("kubernetes.io/tls", data, "1")}
    if ca is not None:
        secrets["clients-ca"] = SecretRead("Opaque", {"ca.crt": base64.b64encode(ca).decode()}, "1")
    tls = socket(tls=MTLS).tls if ca else socket().tls
    assert tls is not None
    return resolve("voip", tls, secrets, NOW)


MTLS = {"clientAuth": "required", "caSecretName": "clients-ca"}
BAD = Resolution(False, "InvalidCertificateRef", "Secret voip/edge-tls not found")


def test_the_domain_is_named_after_the_sipsocket_and_fits_the_column() -> None:
    assert domain_name("voip", "edge") == "voip/edge"
    long_a, long_b = domain_name("voip", "a" * 100), domain_name("voip", "a" * 99 + "b")
    assert len(long_a) == len(long_b) == DOMAIN_COLUMN
    assert long_a != long_b and long_a.startswith("voip/aaa")


@pytest.mark.parametrize(
    ("address", "port", "match"),
    [
        ("10.0.5.20", 5061, "10.0.5.20:5061"),
        ("2001:db8::5", 5061, "[2001:db8::5]:5061"),
        ("0.0.0.0", 443, "*"),
    ],
)
def test_the_domain_matches_the_socket_address_and_a_wildcard_matches_any(
    address: str, port: int, match: str
) -> None:
    assert match_address(socket(address, port)) == match


@pytest.mark.parametrize(
    ("client_auth", "flags"), [("none", (0, 0)), ("optional", (1, 0)), ("required", (1, 1))]
)
def test_client_auth_sets_verify_and_require(client_auth: str, flags: tuple[int, int]) -> None:
    extra = {"clientAuth": client_auth, "caSecretName": "clients-ca"} if client_auth != "none" else {}
    resolution = resolved(ca=CA.cert_pem if client_auth != "none" else None)
    row = planned("voip", "edge", socket(tls=extra), resolution, None)
    assert row is not None
    assert (row.verify_cert, row.require_cert) == flags
    assert row.ca_list == (CA.cert_pem if client_auth != "none" else None)


def test_a_resolved_secret_gives_the_row_of_its_certificate() -> None:
    row = planned("voip", "edge", socket(), resolved(NEW), None)
    assert row is not None
    assert (row.domain, row.type, row.match_ip_address, row.match_sip_domain) == (
        "voip/edge",
        SERVER_DOMAIN,
        "10.0.5.20:5061",
        "*",
    )
    assert (row.certificate, row.private_key) == (NEW.cert_pem, NEW.key_pem)


def test_a_bad_secret_keeps_the_last_good_certificate_and_follows_the_address() -> None:
    last = planned("voip", "edge", socket(), resolved(OLD), None)
    assert last is not None
    kept = planned("voip", "edge", socket(port=5062), BAD, last)
    assert kept is not None
    assert (kept.certificate, kept.private_key) == (OLD.cert_pem, OLD.key_pem)
    assert kept.match_ip_address == "10.0.5.20:5062"
    assert same_domain(planned("voip", "edge", socket(), BAD, last), last)


def test_no_valid_secret_and_no_last_good_row_is_nothing_to_serve() -> None:
    assert planned("voip", "edge", socket(), BAD, None) is None


def test_served_names_the_certificate_by_date_and_serial() -> None:
    row = planned("voip", "edge", socket(), resolved(OLD), None)
    got = served(row)
    assert got is not None
    assert got.summary.subject == "CN=sip.example.com"
    assert got.serial == format(OLD.cert.serial_number, "X")
    date = OLD.cert.not_valid_before_utc.strftime("%Y-%m-%d")
    assert got.describe().startswith(
        f"the certificate of {date}/{got.serial} (CN=sip.example.com, valid until "
    )
    assert served(None) is None


def test_the_digest_follows_what_the_proxies_would_load() -> None:
    a, again, b = (planned("voip", "edge", socket(), resolved(leaf), None) for leaf in (OLD, OLD, NEW))
    assert a is not None and again is not None and b is not None
    assert a.digest() == again.digest()
    assert a.digest() != b.digest()


def test_read_back_from_the_table_it_is_the_same_row() -> None:
    row = planned("voip", "edge", socket(), resolved(OLD), None)
    assert row is not None
    padded = {k: (f"{v}   " if isinstance(v, str) else v) for k, v in row.columns().items()}
    padded["certificate"] = memoryview(row.certificate)
    assert same_domain(DomainRow.from_columns(padded), row)


def test_the_proxy_reads_the_row_as_the_server_domain_of_that_socket_and_serves_its_certificate() -> None:
    """The contract with the proxy's tls_mgm code: the row parses, builds a context, and is chosen for a
    connection to the socket's address (and SNI, or none); not for another port."""
    row = planned("voip", "edge", socket(), resolved(NEW), None)
    assert row is not None
    domain = TlsDomain.from_row({"id": 1, **row.columns()})
    assert domain.kind == "server" and not domain.verify_cert and not domain.require_cert
    for sni in ("sip.example.com", None):
        assert select_server_domain([domain], "10.0.5.20", 5061, sni).domain == domain
    assert select_server_domain([domain], "10.0.5.20", 5062, None).domain is None
    context = ServerContexts([domain]).for_address("10.0.5.20", 5061)
    assert isinstance(context, ssl.SSLContext)


def test_with_required_client_auth_the_proxy_requires_a_certificate_from_the_ca() -> None:
    row = planned(
        "voip",
        "edge",
        socket(tls=MTLS),
        resolved(ca=CA.cert_pem),
        None,
    )
    assert row is not None
    domain = TlsDomain.from_row({"id": 1, **row.columns()})
    assert domain.verify_cert and domain.require_cert and domain.ca_list == CA.cert_pem
    context = ServerContexts([domain]).for_address("10.0.5.20", 5061)
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
