"""The MI's mutual TLS as the chart sets it up: the certificates it generates work between the proxy's real MI
server and the operator's real client with the settings the chart gives them; cert-manager's objects form a
chain of the release's own; the mounts carry whole Secrets (renewals reach running pods); the schema refuses
an MI open to all."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from sipoperator.proxies import MIClient, Unreachable
from sipoperator.settings import Settings
from sipproxy.supervisor.config import parse_config
from sipproxy.supervisor.mi.server import make_app, serve
from sipproxy.supervisor.mi.tls import ServerTLS
from tests.unit.chart.rendering import (
    OPTION_SETS,
    RELEASE,
    Rendered,
    env_of,
    pod_spec,
    rendered,
    template_text,
)


def secret_files(r: Rendered, suffix: str, directory: Path) -> Path:
    directory.mkdir(parents=True)
    for key, value in r.one("Secret", suffix)["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))
    return directory


def localised(path: str, mount: str, local: Path) -> str:
    assert path.startswith(mount + "/"), path
    return str(local / path[len(mount) + 1 :])


async def _version(params: Any) -> Any:
    return {"Server": "sipproxy"}


async def _metrics() -> str:
    return ""


async def test_the_generated_certificates_work_between_the_real_proxy_and_operator(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    r = rendered()
    proxy_dir = secret_files(r, "-mi-proxy-tls", tmp_path / "proxy")
    operator_dir = secret_files(r, "-mi-operator-tls", tmp_path / "operator")
    # The proxy: its config's mi.tls, with the Secret's files where the chart mounts them.
    config = parse_config(
        yaml.safe_load(r.one("ConfigMap", "-proxy")["data"]["proxy.yaml"]) | {"sockets_mgm": None}
    )
    assert config.mi.tls is not None and config.mi.tls.client_ca is not None
    mount = "/etc/sipsockets/mi-tls"
    tls = type(config.mi.tls)(
        localised(config.mi.tls.certificate, mount, proxy_dir),
        localised(config.mi.tls.private_key, mount, proxy_dir),
        localised(config.mi.tls.client_ca, mount, proxy_dir),
    )
    server = ServerTLS(tls)
    app = make_app("mi", {"version": _version}, None, lambda: True, _metrics)
    runner: web.AppRunner = await serve(app, "127.0.0.1", unused_tcp_port, server.context)
    # The operator: the chart's environment, with the same files.
    env = env_of(pod_spec(r.one("Deployment", "-operator"))["containers"][0])
    settings = Settings(
        namespace="voip",
        db_url="sqlite:///x.db",
        mi_tls_ca_file=localised(env["SIPSOCKETS_MI_TLS_CA_FILE"], mount, operator_dir),
        mi_tls_cert_file=localised(env["SIPSOCKETS_MI_TLS_CERT_FILE"], mount, operator_dir),
        mi_tls_key_file=localised(env["SIPSOCKETS_MI_TLS_KEY_FILE"], mount, operator_dir),
        mi_tls_server_name=env["SIPSOCKETS_MI_TLS_SERVER_NAME"],
    )
    client = MIClient(settings)
    try:
        assert await client.call("127.0.0.1", "version", port=unused_tcp_port) == {"Server": "sipproxy"}
        # Without the operator's certificate (the CA alone), the proxy refuses the handshake.
        bare = MIClient(
            Settings(
                namespace="voip",
                db_url="sqlite:///x.db",
                mi_tls_ca_file=settings.mi_tls_ca_file,
                mi_tls_server_name=settings.mi_tls_server_name,
            )
        )
        try:
            with pytest.raises(Unreachable):
                await bare.call("127.0.0.1", "version", port=unused_tcp_port)
        finally:
            await bare.close()
        # The certificates of another release (another CA) are refused both ways.
        other = rendered({"fullnameOverride": "other"})
        other_dir = secret_files(other, "-mi-operator-tls", tmp_path / "other")
        stranger = MIClient(
            Settings(
                namespace="voip",
                db_url="sqlite:///x.db",
                mi_tls_ca_file=str(other_dir / "ca.crt"),
                mi_tls_cert_file=str(other_dir / "tls.crt"),
                mi_tls_key_file=str(other_dir / "tls.key"),
                mi_tls_server_name=settings.mi_tls_server_name,
            )
        )
        try:
            with pytest.raises(Unreachable, match="not trusted"):
                await stranger.call("127.0.0.1", "version", port=unused_tcp_port)
        finally:
            await stranger.close()
    finally:
        await client.close()
        await runner.cleanup()


def test_both_sides_mount_whole_secrets_so_renewals_reach_running_pods() -> None:
    r = rendered()
    for suffix, secret in (("-proxy", "-mi-proxy-tls"), ("-operator", "-mi-operator-tls")):
        spec = pod_spec(r.one("Deployment", suffix))
        volume = next(v for v in spec["volumes"] if v["name"] == "mi-tls")
        assert volume["secret"] == {"secretName": f"{RELEASE}{secret}"}  # every key, no items
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                if m["name"] == "mi-tls":
                    assert m["mountPath"] == "/etc/sipsockets/mi-tls" and "subPath" not in m
    off = rendered(OPTION_SETS["miTokenOnly"])
    assert not [
        s for s in off.of_kind("Secret") if "-mi-" in s["metadata"]["name"] and "tls" in s["metadata"]["name"]
    ]
    for w in off.workloads():
        assert "mi-tls" not in [v["name"] for v in pod_spec(w).get("volumes", [])]


def test_cert_manager_issues_a_ca_of_the_release_and_both_certificates() -> None:
    for values, extra in ((OPTION_SETS["miCertManager"], ()), ({}, ("--api-versions", "cert-manager.io/v1"))):
        r = rendered(values, *extra)
        assert not [
            s
            for s in r.of_kind("Secret")
            if s["metadata"]["name"].endswith("-tls") and "-mi-" in s["metadata"]["name"]
        ]
        issuers = {i["metadata"]["name"]: i["spec"] for i in r.of_kind("Issuer")}
        certs = {c["metadata"]["name"]: c["spec"] for c in r.of_kind("Certificate")}
        ca = certs[f"{RELEASE}-mi-ca"]
        assert ca["isCA"] is True
        assert issuers[ca["issuerRef"]["name"]] == {"selfSigned": {}}
        assert issuers[f"{RELEASE}-mi-ca"] == {"ca": {"secretName": ca["secretName"]}}
        server = certs[f"{RELEASE}-mi-proxy-tls"]
        client = certs[f"{RELEASE}-mi-operator-tls"]
        for cert in (server, client):
            assert cert["issuerRef"]["name"] == f"{RELEASE}-mi-ca"
        assert "server auth" in server["usages"] and "client auth" in client["usages"]
        env = env_of(pod_spec(r.one("Deployment", "-operator"))["containers"][0])
        assert server["dnsNames"][0] == env["SIPSOCKETS_MI_TLS_SERVER_NAME"] == f"{RELEASE}-proxy-mi.voip.svc"
        # The Secrets the Certificates fill are the ones the pods mount.
        mounted = {
            v["secret"]["secretName"]
            for w in r.workloads()
            for v in pod_spec(w).get("volumes", [])
            if v["name"] == "mi-tls"
        }
        assert mounted == {server["secretName"], client["secretName"]}
    assert (
        rendered(OPTION_SETS["miCertManager"]).one("Certificate", "-mi-proxy-tls")["spec"]["duration"]
        == "720h"
    )
    # auto without cert-manager in the cluster, or false: the chart's own.
    assert not rendered({}).of_kind("Certificate")
    forced_off = rendered(
        {"mi": {"tls": {"certManager": {"enabled": False}}}}, "--api-versions", "cert-manager.io/v1"
    )
    assert not forced_off.of_kind("Certificate") and forced_off.one("Secret", "-mi-proxy-tls")


@pytest.mark.parametrize(
    ("values", "mentions"),
    [
        ({"proxy": {"mode": "hostNetwork"}, "mi": {"listenOn": "all"}}, "/mi/listenOn"),
        ({"mi": {"tls": {"enabled": False}}}, "/mi/token/enabled"),
        ({"mi": {"tls": {"certManager": {"enabled": "yes"}}}}, "/mi/tls/certManager/enabled"),
        ({"mi": {"metricsPort": 0}}, "/mi/metricsPort"),
        ({"mi": {"existingSecret": "old-key"}}, "existingSecret"),
        ({"networkPolicy": {"database": {"nodeCIDRs": ["10.0.0.1"]}}}, "nodeCIDRs"),
    ],
)
def test_the_schema_refuses_an_mi_open_to_all(values: dict[str, Any], mentions: str) -> None:
    result = template_text(values, check=False)
    assert result.returncode != 0, f"accepted {values}"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert mentions in result.stderr, result.stderr


def test_listen_on_all_stays_possible_outside_host_network() -> None:
    for mode in ("service", "multus"):
        values = {**OPTION_SETS["multus"]} if mode == "multus" else {}
        values = {**values, "mi": {"listenOn": "all"}}
        assert template_text(values, check=False).returncode == 0, mode
