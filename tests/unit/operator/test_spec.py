"""Spec validation, defaults and the row written to the OpenSIPS table."""

from __future__ import annotations

from typing import Any

import pytest

from sipoperator.spec import Row, SpecError, TlsSpec, endpoint_key, row_key, same_row, validate
from sipproxy.shared.socketspec import parse_row


@pytest.mark.parametrize(
    ("protocol", "port"), [("udp", 5060), ("tcp", 5060), ("tls", 5061), ("ws", 80), ("wss", 443)]
)
def test_port_defaults_per_protocol(protocol: str, port: int) -> None:
    tls = {"tls": {"secretName": "edge-tls"}} if protocol in ("tls", "wss") else {}
    got = validate({"protocol": protocol, "address": "10.0.5.20", **tls})
    assert got.port == port
    assert got.socket == f"{protocol}:10.0.5.20:{port}"


def test_full_spec_becomes_the_row_opensips_reads() -> None:
    got = validate(
        {
            "protocol": "udp",
            "address": "10.0.5.20",
            "port": 5070,
            "advertised": {"address": "sbc.example.com"},
            "tag": "carrier-a",
            "flags": ["reuse_port", "anycast"],
            "tos": "IPTOS_LOWDELAY",
        }
    )
    assert got.row == Row(
        socket="udp:10.0.5.20:5070",
        advertised="sbc.example.com:5070",
        tag="carrier-a",
        flags="anycast,reuse_port",
        tos="IPTOS_LOWDELAY",
    )
    # The proxy's own parser reads it back to the same socket.
    r = got.row
    parsed = parse_row(r.socket, r.advertised, r.tag, r.flags, r.tos)
    assert (parsed.proto, parsed.host, parsed.port, parsed.tos) == ("udp", "10.0.5.20", 5070, 16)
    assert parsed.flags == frozenset({"anycast", "reuse_port"})


def test_ipv6_is_compressed_and_bracketed() -> None:
    got = validate(
        {
            "protocol": "tcp",
            "address": "2001:DB8:0:0::5",
            "port": 5080,
            "advertised": {"address": "2001:db8::9"},
        }
    )
    assert got.socket == "tcp:[2001:db8::5]:5080"
    assert got.row.advertised == "[2001:db8::9]:5080"
    assert got.key == ("tcp", "2001:db8::5", 5080)


def test_numeric_tos_is_written_as_digits_and_zero_as_nothing() -> None:
    assert validate({"protocol": "udp", "address": "10.0.0.1", "tos": 184}).row.tos == "184"
    assert validate({"protocol": "udp", "address": "10.0.0.1", "tos": 0}).row.tos is None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"protocol": "sctp", "address": "10.0.0.1"}, "protocol"),
        ({"protocol": "udp", "address": "sbc.example.com"}, "address"),
        ({"protocol": "udp", "address": "10.0.0.1/24"}, "address"),
        ({"protocol": "udp", "address": "10.0.0.1", "port": 0}, "port"),
        ({"protocol": "udp", "address": "10.0.0.1", "port": 70000}, "port"),
        ({"protocol": "udp", "address": "10.0.0.1", "flags": ["fast"]}, "flags"),
        ({"protocol": "udp", "address": "10.0.0.1", "tos": "IPTOS_FAST"}, "tos"),
        ({"protocol": "udp", "address": "10.0.0.1", "tos": 256}, "tos"),
        ({"protocol": "udp", "address": "10.0.0.1", "tag": "has space"}, "tag"),
        (
            {"protocol": "udp", "address": "10.0.0.1", "advertised": {"address": "bad_host!"}},
            "advertised.address",
        ),
        (
            {"protocol": "udp", "address": "10.0.0.1", "advertised": {"address": "1.2.3.4", "port": 0}},
            "advertised.port",
        ),
    ],
)
def test_invalid_specs_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        validate(spec)
    assert info.value.field == field
    assert str(info.value).startswith(f"spec.{field}:")


def test_tcp_family_shares_one_endpoint_key_udp_does_not() -> None:
    assert endpoint_key("tcp", "10.0.0.1", 5061) == endpoint_key("tls", "10.0.0.1", 5061)
    assert endpoint_key("ws", "10.0.0.1", 80) == endpoint_key("wss", "10.0.0.1", 80)
    assert endpoint_key("udp", "10.0.0.1", 5060) != endpoint_key("tcp", "10.0.0.1", 5060)


def test_row_key_of_hand_written_rows() -> None:
    assert row_key("UDP:10.0.0.1") == ("udp", "10.0.0.1", 5060)
    assert row_key("tls:[2001:db8::1]") == ("tcp", "2001:db8::1", 5061)
    assert row_key("garbage") is None
    assert row_key(None) is None


def test_same_row_sees_hand_edits_but_not_blank_versus_null() -> None:
    row = Row(socket="udp:10.0.0.1:5060", tag="a")
    base = {"socket": "udp:10.0.0.1:5060", "advertised": "", "tag": "a", "flags": None, "tos": None}
    assert same_row(base, row)
    assert not same_row({**base, "tag": "b"}, row)
    assert not same_row({**base, "socket": "udp:10.0.0.1:5061"}, row)


# -- spec.tls ------------------------------------------------------------------------------------------------


def test_tls_and_wss_take_their_certificate_from_spec_tls() -> None:
    got = validate({"protocol": "wss", "address": "10.0.5.20", "tls": {"secretName": "edge-tls"}})
    assert got.tls == TlsSpec("edge-tls", "none", None)
    assert got.row == Row(socket="wss:10.0.5.20:443")  # the sockets row does not change with TLS


def test_client_auth_references_the_ca_secret_too() -> None:
    spec = {"secretName": "edge-tls", "clientAuth": "required", "caSecretName": "clients-ca"}
    got = validate({"protocol": "tls", "address": "10.0.5.20", "tls": spec})
    assert got.tls == TlsSpec("edge-tls", "required", "clients-ca")
    assert got.tls.secrets == ("edge-tls", "clients-ca")
    # The same Secret for both (cert-manager's ca.crt) is read once; without client auth the CA is unused.
    same = {"secretName": "edge-tls", "clientAuth": "optional", "caSecretName": "edge-tls"}
    assert referenced(same) == ("edge-tls",)
    assert referenced({"secretName": "edge-tls", "caSecretName": "clients-ca"}) == ("edge-tls",)


def referenced(tls: dict[str, Any]) -> tuple[str, ...]:
    got = validate({"protocol": "tls", "address": "10.0.5.20", "tls": tls}).tls
    assert got is not None
    return got.secrets


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"protocol": "tls", "address": "10.0.0.1"}, "tls", "needs spec.tls.secretName"),
        ({"protocol": "wss", "address": "10.0.0.1"}, "tls", "needs spec.tls.secretName"),
        ({"protocol": "tcp", "address": "10.0.0.1", "tls": {"secretName": "x"}}, "tls", "only for protocol"),
        ({"protocol": "ws", "address": "10.0.0.1", "tls": {"secretName": "x"}}, "tls", "only for protocol"),
        ({"protocol": "tls", "address": "10.0.0.1", "tls": {}}, "tls.secretName", "is required"),
        (
            {"protocol": "tls", "address": "10.0.0.1", "tls": {"secretName": "Bad_Name"}},
            "tls.secretName",
            "not a",
        ),
        (
            {"protocol": "tls", "address": "10.0.0.1", "tls": {"secretName": "x", "clientAuth": "always"}},
            "tls.clientAuth",
            "none, optional, required",
        ),
        (
            {"protocol": "tls", "address": "10.0.0.1", "tls": {"secretName": "x", "clientAuth": "required"}},
            "tls.caSecretName",
            "is required with clientAuth required",
        ),
    ],
)
def test_tls_specs_that_cannot_work_name_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        validate(spec)
    assert info.value.field == field
    assert words in str(info.value)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "0:0::0"])
def test_a_wildcard_without_advertised_is_invalid_naming_why(address: str) -> None:
    with pytest.raises(
        SpecError, match=r"a wildcard address \((0\.0\.0\.0|::)\) needs an advertised address"
    ):
        validate({"protocol": "udp", "address": address})
    assert validate({"protocol": "udp", "address": address, "advertised": {"address": "203.0.113.10"}})


def test_an_unspecified_advertised_address_is_invalid() -> None:
    with pytest.raises(SpecError, match=r"advertised address 0\.0\.0\.0 is not one a peer can send to"):
        validate({"protocol": "udp", "address": "10.0.0.1", "advertised": {"address": "0.0.0.0"}})
