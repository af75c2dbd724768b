"""The Secrets of spec.tls, judged: what ResolvedRefs says for each way they can be wrong, and which
SipSockets a change of a Secret wakes."""

from __future__ import annotations

import base64
import datetime

import pytest

from sipoperator.certificates import INVALID_CERTIFICATE_REF
from sipoperator.refs import (
    RESOLVED_REFS,
    Resolution,
    SecretRead,
    SecretState,
    SecretUnreadable,
    objects_woken,
    resolve,
    versions,
)
from sipoperator.spec import TlsSpec
from tests.tlscerts import issue, make_ca, new_key

UTC = datetime.UTC
NOW = datetime.datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
CA = make_ca()
LEAF = issue(
    CA,
    "sip.example.com",
    dns=["sip.example.com"],
    not_before=datetime.datetime(2027, 1, 1, tzinfo=UTC),
    not_after=datetime.datetime(2027, 4, 1, tzinfo=UTC),
)
TLS = "kubernetes.io/tls"


def secret(version: str = "7", secret_type: str = TLS, **data: bytes) -> SecretRead:
    values = data or {"tls.crt": LEAF.cert_pem, "tls.key": LEAF.key_pem}
    encoded = {k.replace("_", "."): base64.b64encode(v).decode() for k, v in values.items()}
    return SecretRead(secret_type, encoded, version)


def judged(tls: TlsSpec, secrets: dict[str, SecretState]) -> Resolution:
    return resolve("voip", tls, secrets, NOW)


def test_a_valid_secret_resolves_with_the_certificate_and_no_client_cas() -> None:
    got = judged(TlsSpec("edge-tls"), {"edge-tls": secret()})
    assert (got.ok, got.reason) == (True, RESOLVED_REFS)
    assert got.message == (
        "Secret voip/edge-tls: CN=sip.example.com (sip.example.com), valid until 2027-04-01T00:00:00Z"
    )
    assert got.material is not None and got.material.certificate == LEAF.cert_pem
    assert got.ca_list is None


def test_client_authentication_takes_its_cas_from_the_ca_secret() -> None:
    tls = TlsSpec("edge-tls", "required", "clients-ca")
    got = judged(tls, {"edge-tls": secret(), "clients-ca": secret(ca_crt=CA.cert_pem)})
    assert got.ok and got.ca_list == CA.cert_pem
    assert "client CAs of Secret voip/clients-ca" in got.message


@pytest.mark.parametrize(
    ("secrets", "words"),
    [
        ({}, "Secret voip/edge-tls not found; create it (kubernetes.io/tls, with tls.crt and tls.key)"),
        ({"edge-tls": secret(tls_crt=b"junk", tls_key=LEAF.key_pem)}, "tls.crt holds no PEM certificate"),
        (
            {"edge-tls": secret(tls_crt=LEAF.cert_pem, tls_key=issue(CA, "x", key=new_key()).key_pem)},
            "tls.key does not match the certificate in tls.crt",
        ),
        ({"edge-tls": secret(secret_type="Opaque")}, "has type Opaque; it must be kubernetes.io/tls"),
        (
            {"edge-tls": SecretUnreadable('403 Forbidden: secrets "edge-tls" is forbidden')},
            "cannot read Secret voip/edge-tls: 403 Forbidden",
        ),
    ],
)
def test_every_problem_is_invalid_certificate_ref_with_what_to_fix(
    secrets: dict[str, SecretState], words: str
) -> None:
    got = judged(TlsSpec("edge-tls"), secrets)
    assert (got.ok, got.reason, got.material) == (False, INVALID_CERTIFICATE_REF, None)
    assert words in got.message


@pytest.mark.parametrize(
    ("now", "words"),
    [
        (datetime.datetime(2027, 5, 1, tzinfo=UTC), "expired at 2027-04-01T00:00:00Z"),
        (datetime.datetime(2026, 12, 1, tzinfo=UTC), "is not valid before 2027-01-01T00:00:00Z"),
    ],
)
def test_a_certificate_outside_its_validity_does_not_resolve(now: datetime.datetime, words: str) -> None:
    got = resolve("voip", TlsSpec("edge-tls"), {"edge-tls": secret()}, now)
    assert not got.ok and words in got.message


def test_a_missing_ca_secret_does_not_resolve_even_with_a_good_certificate() -> None:
    got = judged(TlsSpec("edge-tls", "optional", "clients-ca"), {"edge-tls": secret(), "clients-ca": None})
    assert not got.ok
    assert got.message.startswith("Secret voip/clients-ca not found")


def test_versions_record_what_a_pass_saw() -> None:
    seen = versions({"a": secret("12"), "b": None, "c": SecretUnreadable("down")})
    assert seen == {"a": "12", "b": "", "c": ""}


REFS = {
    "uid-edge": TlsSpec("edge-tls"),
    "uid-mtls": TlsSpec("trunk-tls", "required", "edge-tls"),
    "uid-udp": None,
    "uid-other": TlsSpec("other-tls"),
}


def test_a_renewal_wakes_exactly_the_sipsockets_that_reference_the_secret() -> None:
    seen = {"uid-edge": {"edge-tls": "5"}, "uid-mtls": {"trunk-tls": "3", "edge-tls": "5"}}
    assert objects_woken(REFS, seen, "edge-tls", "6") == ["uid-edge", "uid-mtls"]
    assert objects_woken(REFS, seen, "unrelated", "9") == []


def test_the_version_a_pass_already_read_wakes_nobody() -> None:
    """The watch's initial listing at operator start repeats what the first passes read."""
    seen = {"uid-edge": {"edge-tls": "5"}, "uid-mtls": {"trunk-tls": "3", "edge-tls": "6"}}
    assert objects_woken(REFS, seen, "edge-tls", "6") == ["uid-edge"]


def test_a_deleted_secret_wakes_those_that_had_it_and_a_created_one_those_that_missed_it() -> None:
    had = {"uid-edge": {"edge-tls": "5"}}
    assert objects_woken({"uid-edge": REFS["uid-edge"]}, had, "edge-tls", None) == ["uid-edge"]
    missed = {"uid-edge": {"edge-tls": ""}}
    assert objects_woken({"uid-edge": REFS["uid-edge"]}, missed, "edge-tls", None) == []
    assert objects_woken({"uid-edge": REFS["uid-edge"]}, missed, "edge-tls", "1") == ["uid-edge"]
