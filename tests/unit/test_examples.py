"""The manifests of examples/ are what they claim: every SipSocket passes the CRD's structural schema (CEL is
checked by the API server in tests/e2e/test_operator_tls.py) and the operator's own validation; the TLS
examples fit together (the Secret a Certificate writes is the one a SipSocket names, the routes' tags are
the SipSockets' tags) and the WebRTC edge's Helm values render into a proxy config whose routes the proxy
takes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipoperator.spec import validate
from sipproxy.sip.routing import parse_routes
from tests.unit.chart.rendering import rendered

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CRD = yaml.safe_load((ROOT / "crds" / "sipsockets.io_sipsockets.yaml").read_text())
SPEC_SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def sipsockets() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in documents(path):
            if doc.get("kind") == "SipSocket":
                found.append((f"{path.relative_to(EXAMPLES)}:{doc['metadata']['name']}", doc))
    return found


def schema_problems(value: Any, schema: dict[str, Any], path: str = "spec") -> list[str]:
    """The structural part of an OpenAPI v3 schema as the API server applies it (types, required, unknown
    fields, enum, lengths, patterns, bounds); CEL rules are the API server's."""
    if schema.get("x-kubernetes-int-or-string"):
        return (
            [] if isinstance(value, int | str) and not isinstance(value, bool) else [f"{path}: int or string"]
        )
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{path}: not an object"]
        problems = [f"{path}.{k}: required" for k in schema.get("required", ()) if k not in value]
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key not in properties:
                problems.append(f"{path}.{key}: unknown field")
            else:
                problems += schema_problems(item, properties[key], f"{path}.{key}")
        return problems
    if kind == "array":
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        return [
            p for i, item in enumerate(value) for p in schema_problems(item, schema["items"], f"{path}[{i}]")
        ]
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{path}: not an integer"]
        low, high = schema.get("minimum", value), schema.get("maximum", value)
        return [] if low <= value <= high else [f"{path}: out of range"]
    if kind == "string":
        if not isinstance(value, str):
            return [f"{path}: not a string"]
        problems = []
        if "enum" in schema and value not in schema["enum"]:
            problems.append(f"{path}: not one of {schema['enum']}")
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            problems.append(f"{path}: length")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{path}: pattern")
        return problems
    return []


def test_the_schema_check_is_not_blind() -> None:
    assert (
        schema_problems({"protocol": "udp", "address": "10.0.0.1", "tls": {"secretName": "x"}}, SPEC_SCHEMA)
        == []
    )
    assert schema_problems(
        {"protocol": "udp", "address": "10.0.0.1", "port": 0, "bogus": 1}, SPEC_SCHEMA
    ) == [
        "spec.port: out of range",
        "spec.bogus: unknown field",
    ]
    assert schema_problems({"protocol": "tls", "tls": {"secretName": "A_B"}}, SPEC_SCHEMA) == [
        "spec.address: required",
        "spec.tls.secretName: pattern",
    ]


@pytest.mark.parametrize(("where", "doc"), sipsockets(), ids=[w for w, _ in sipsockets()])
def test_every_example_sipsocket_is_valid(where: str, doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "sipsockets.io/v1alpha1"
    assert schema_problems(doc["spec"], SPEC_SCHEMA) == [], where
    validate(doc["spec"])  # the operator's own rules (raises SpecError naming the field)


def test_the_tls_examples_cover_tls_and_wss() -> None:
    protocols = {doc["spec"]["protocol"] for where, doc in sipsockets() if where.startswith("tls/")}
    assert {"tls", "wss", "udp"} <= protocols


def test_the_cert_manager_example_names_the_secret_its_certificate_writes() -> None:
    docs = documents(EXAMPLES / "tls" / "cert-manager.yaml")
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Issuer", "Certificate", "SipSocket"}
    assert kinds["Certificate"]["spec"]["issuerRef"]["name"] == kinds["Issuer"]["metadata"]["name"]
    assert kinds["SipSocket"]["spec"]["tls"]["secretName"] == kinds["Certificate"]["spec"]["secretName"]
    assert kinds["SipSocket"]["spec"]["advertised"]["address"] in kinds["Certificate"]["spec"]["dnsNames"]


def test_the_webrtc_edge_values_render_and_route_between_its_two_sockets() -> None:
    values = yaml.safe_load((EXAMPLES / "tls" / "webrtc-edge-values.yaml").read_text())
    config_maps = [c for c in rendered(values).of_kind("ConfigMap") if "proxy.yaml" in c.get("data", {})]
    assert len(config_maps) == 1
    config = yaml.safe_load(config_maps[0]["data"]["proxy.yaml"])
    routes = parse_routes(config["routes"])  # the proxy's own parser: it would start with these
    assert len(routes) == 2
    tags = {doc["spec"]["tag"] for where, doc in sipsockets() if where.startswith("tls/webrtc-edge")}
    assert tags == {"webrtc", "carrier"}
    raw = config["routes"]
    assert {r["match"]["tag"] for r in raw} == tags
    assert raw[0]["socket"] == "carrier"
