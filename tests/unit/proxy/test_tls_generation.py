"""The supervisor's TLS decisions: which domains of the config and of the table load, what tls_list and
tls_reload say (never a private key), which TLS socket no domain serves, and the certificate summary."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sipproxy.shared.socketspec import parse_row
from sipproxy.shared.tls_domains import CLIENT_DOMAIN, SERVER_DOMAIN, TlsDomain, TlsDomainError, parse_domains
from sipproxy.supervisor.certinfo import count_certificates, describe_pem
from sipproxy.supervisor.config import StaticTlsDomain
from sipproxy.supervisor.tls import (
    TlsGeneration,
    build_generation,
    reload_result,
    socket_warning,
    static_rows,
    tls_list,
)
from tests.tlscerts import issue, make_ca

CA = make_ca()
LEAF = issue(CA, "edge.example.com", dns=["edge.example.com", "sip.example.com"])
OTHER = issue(CA, "other.example.com")


def server(name: str = "edge", **changes: object) -> TlsDomain:
    base = TlsDomain(
        name,
        SERVER_DOMAIN,
        verify_cert=False,
        require_cert=False,
        certificate=LEAF.cert_pem,
        private_key=LEAF.key_pem,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def client(name: str = "carriers") -> TlsDomain:
    return TlsDomain(name, CLIENT_DOMAIN, ca_list=CA.cert_pem)


def test_a_generation_loads_what_builds_and_says_why_the_rest_does_not() -> None:
    table = (
        [server("edge", id=1), server("broken", private_key=OTHER.key_pem, id=2), client("carriers")],
        [TlsDomainError("id 4", "the domain column is empty")],
    )
    static: tuple[list[TlsDomain], list[TlsDomainError]] = ([server("edge"), server("static-only")], [])
    gen = build_generation(3, static, table)
    states = [(e.name, e.kind, e.source, e.error) for e in gen.entries]
    assert states == [
        ("edge", "server", "config", None),
        ("static-only", "server", "config", None),
        ("id 4", "unknown", "table", "the domain column is empty"),
        ("edge", "server", "table", "a server domain of this name is already defined"),
        ("broken", "server", "table", "private_key does not match the certificate"),
        ("carriers", "client", "table", None),
    ]
    assert [d.name for d in gen.domains] == ["edge", "static-only", "carriers"]
    result = reload_result(gen)
    assert result["generation"] == 3
    assert [(f["domain"], f["error"]) for f in result["failed"]][-1] == (
        "broken",
        "private_key does not match the certificate",
    )


def test_a_client_domain_that_cannot_be_built_fails() -> None:
    bad = dataclasses.replace(
        client(), ca_list=b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
    )
    (entry,) = build_generation(1, ([], []), ([bad], [])).entries
    assert entry.error is not None and entry.error.startswith("ca_list is not a valid PEM bundle")


def test_tls_list_has_opensips_fields_then_ours_and_never_a_private_key() -> None:
    gen = build_generation(2, ([], []), ([client(), server(match_domains=("sip.example.com",), id=9)], []))
    listed = tls_list(gen)
    assert listed["generation"] == 2
    carriers, edge = listed["Domains"]  # OpenSIPS lists client domains first
    assert (carriers["name"], carriers["type"], carriers["ca_certificates"]) == (
        "carriers",
        "TLS_DOMAIN_CLI",
        1,
    )
    assert edge["type"] == "TLS_DOMAIN_SRV" and edge["SIP DOMAIN FILTERS"] == ["sip.example.com"]
    assert (edge["id"], edge["domain"], edge["kind"], edge["state"]) == (9, "edge", "server", "loaded")
    assert (edge["match_ip_address"], edge["match_sip_domain"]) == ("*", "sip.example.com")
    assert edge["subject"] == "CN=edge.example.com" and edge["issuer"] == "CN=sipsockets test CA"
    assert edge["dns_names"] == ["edge.example.com", "sip.example.com"]
    assert edge["notAfter"] == LEAF.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = json.dumps(listed)
    assert "PRIVATE KEY" not in text and "private_key" not in text.lower()


def test_static_domains_are_read_from_their_files_at_each_load(tmp_path: Path) -> None:
    cert, key = tmp_path / "edge.crt", tmp_path / "edge.key"
    cert.write_bytes(LEAF.cert_pem)
    key.write_bytes(LEAF.key_pem)
    config = [
        StaticTlsDomain(
            "edge", SERVER_DOMAIN, certificate=str(cert), private_key=str(key), verify_cert=False
        ),
        StaticTlsDomain("gone", SERVER_DOMAIN, certificate=str(tmp_path / "gone.crt"), private_key=str(key)),
    ]
    rows, errors = static_rows(config)
    assert [str(e) for e in errors] == [
        f"TLS domain 'gone': certificate: cannot read {tmp_path / 'gone.crt'}: No such file or directory"
    ]
    (domain,), parse_errors = parse_domains(rows)
    assert parse_errors == [] and domain.certificate == LEAF.cert_pem and not domain.verify_cert
    cert.write_bytes(OTHER.cert_pem)  # a renewed file: the next load reads it
    rows, _ = static_rows(config[:1])
    assert rows[0]["certificate"] == OTHER.cert_pem


def test_a_tls_socket_no_server_domain_serves_is_warned_about() -> None:
    spec = parse_row("tls:10.0.0.1:5061")
    assert socket_warning(spec, []) == (
        "no TLS server domain matches 10.0.0.1:5061 (match_ip_address, or *): "
        "connections to this socket fail their handshake"
    )
    assert socket_warning(spec, [client()]) is not None  # a client domain serves nothing
    assert socket_warning(spec, [server(match_addresses=("10.0.0.2:5061",))]) is not None
    assert socket_warning(spec, [server(match_addresses=("10.0.0.1:5061",))]) is None
    assert socket_warning(spec, [server()]) is None  # "*"
    assert socket_warning(parse_row("wss:10.0.0.1"), []) is not None
    assert socket_warning(parse_row("ws:10.0.0.1"), []) is None
    assert socket_warning(parse_row("tcp:10.0.0.1"), []) is None
    assert socket_warning(parse_row("tls:0.0.0.0:5061"), [server(match_addresses=("10.0.0.1:5061",))]) is None


def test_an_empty_generation_lists_nothing() -> None:
    assert tls_list(TlsGeneration(0)) == {"generation": 0, "Domains": []}


def test_certificate_summaries() -> None:
    assert describe_pem(CA.cert_pem + LEAF.cert_pem)["subject"] == "CN=sipsockets test CA"
    assert describe_pem(None) == {} and describe_pem(b"no PEM here") == {}
    assert describe_pem(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----") == {}
    truncated = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    assert describe_pem(truncated) == {}
    assert count_certificates(CA.cert_pem * 3) == 3
