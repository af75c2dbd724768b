"""The operator's MI client over mutual TLS, against the proxy's own MI server on loopback: it presents its
certificate, trusts only the proxies' CA and the pinned name, follows rotated files without a restart, and
says what is wrong when the proxy's certificate is not the expected one. Bad TLS settings stop the start."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from devenv.mitls import Authority, MiPki, install
from sipoperator.proxies import MIClient, Unreachable
from sipoperator.settings import Settings, SettingsError, load
from sipproxy.supervisor.config import MiTls
from sipproxy.supervisor.mi.server import make_app, serve
from sipproxy.supervisor.mi.tls import ServerTLS


async def _version(params: Any) -> Any:
    return {"Server": "sipproxy test"}


@pytest.fixture
async def mi_server(unused_tcp_port: int) -> AsyncIterator[Callable[[ServerTLS | None], Any]]:
    """Start the proxy's MI app on 127.0.0.1:<port> with the given TLS; returns the port."""
    runners: list[web.AppRunner] = []

    async def start(tls: ServerTLS | None) -> int:
        app = make_app("mi", {"version": _version}, None, lambda: True, _text)
        runners.append(await serve(app, "127.0.0.1", unused_tcp_port, tls.context if tls else None))
        return unused_tcp_port

    yield start
    for runner in runners:
        await runner.cleanup()


async def _text() -> str:
    return ""


def settings_for(pki: MiPki | None, **extra: Any) -> Settings:
    tls: dict[str, Any] = {}
    if pki is not None:
        tls = {
            "mi_tls_ca_file": str(pki.operator_dir / "ca.crt"),
            "mi_tls_cert_file": str(pki.operator_dir / "tls.crt"),
            "mi_tls_key_file": str(pki.operator_dir / "tls.key"),
        }
    return Settings(namespace="voip", db_url="sqlite:///x.db", mi_timeout=5, **tls, **extra)


def proxy_tls(pki: MiPki) -> ServerTLS:
    return ServerTLS(MiTls(**pki.proxy_config()))


async def test_calls_over_mutual_tls_with_the_pinned_name(mi_server: Any, tmp_path: Path) -> None:
    pki = MiPki.create(tmp_path)
    port = await mi_server(proxy_tls(pki))
    client = MIClient(settings_for(pki))
    try:
        assert client.url("127.0.0.1", port).startswith("https://")
        assert await client.call("127.0.0.1", "version", port=port) == {"Server": "sipproxy test"}
        # The proxy's certificate for another name (issued by the same CA) is refused, and the reason said.
        pki.renew_proxy(name="not-the-proxy")
        with pytest.raises(Unreachable, match=r"not trusted .*sipsockets-proxy"):
            await client.call("127.0.0.1", "version", port=port)
    finally:
        await client.close()


async def test_a_proxy_of_another_ca_is_refused(mi_server: Any, tmp_path: Path) -> None:
    pki = MiPki.create(tmp_path / "ours")
    theirs = MiPki.create(tmp_path / "theirs")
    port = await mi_server(proxy_tls(theirs))
    client = MIClient(settings_for(pki))
    try:
        with pytest.raises(Unreachable, match="not trusted"):
            await client.call("127.0.0.1", "version", port=port)
    finally:
        await client.close()


async def test_rotated_client_files_are_used_without_a_restart(mi_server: Any, tmp_path: Path) -> None:
    pki = MiPki.create(tmp_path)
    port = await mi_server(proxy_tls(pki))
    client = MIClient(settings_for(pki))
    try:
        assert await client.call("127.0.0.1", "version", port=port)
        # Both sides move to a new CA, the proxy first: the operator's old certificate is refused...
        new = Authority("ca-2")
        server = new.server()
        install(
            pki.proxy_dir, {"tls.crt": server.cert_pem, "tls.key": server.key_pem, "ca.crt": new.cert_pem}
        )
        with pytest.raises(Unreachable):
            await client.call("127.0.0.1", "version", port=port)
        # ...until the operator's Secret is renewed too; the same client then gets through.
        op = new.client()
        install(pki.operator_dir, {"tls.crt": op.cert_pem, "tls.key": op.key_pem, "ca.crt": new.cert_pem})
        assert await client.call("127.0.0.1", "version", port=port) == {"Server": "sipproxy test"}
    finally:
        await client.close()


async def test_plain_http_without_tls_settings(mi_server: Any) -> None:
    """OpenSIPS' MI and the local environment without the chart: plain HTTP as before."""
    port = await mi_server(None)
    client = MIClient(settings_for(None))
    try:
        assert client.url("127.0.0.1", port).startswith("http://")
        assert await client.call("127.0.0.1", "version", port=port)
    finally:
        await client.close()


def test_tls_settings_are_loaded_and_checked(tmp_path: Path) -> None:
    pki = MiPki.create(tmp_path)
    env = {"SIPSOCKETS_DB_URL": "sqlite:///x", **pki.operator_env()}
    s = load([], env)
    assert (s.mi_tls_ca_file, s.mi_tls_server_name) == (str(pki.operator_dir / "ca.crt"), "sipsockets-proxy")
    assert load(["--mi-tls-server-name", "p.voip.svc"], env).mi_tls_server_name == "p.voip.svc"
    assert load([], {"SIPSOCKETS_DB_URL": "sqlite:///x"}).mi_tls_ca_file is None


@pytest.mark.parametrize(
    ("drop", "replace", "needle"),
    [
        ("SIPSOCKETS_MI_TLS_KEY_FILE", {}, "go together"),
        ("SIPSOCKETS_MI_TLS_CA_FILE", {}, "needs --mi-tls-ca-file"),
        ("", {"SIPSOCKETS_MI_TLS_CA_FILE": "/nonexistent/ca.crt"}, "SIPSOCKETS_MI_TLS_CA_FILE: /nonexistent"),
        ("", {"SIPSOCKETS_MI_TLS_KEY_FILE": "ca"}, "SIPSOCKETS_MI_TLS_CERT_FILE with --mi-tls-key-file"),
    ],
)
def test_bad_tls_settings_name_the_setting(
    tmp_path: Path, drop: str, replace: dict[str, str], needle: str
) -> None:
    pki = MiPki.create(tmp_path)
    env = {"SIPSOCKETS_DB_URL": "sqlite:///x", **pki.operator_env(), **replace}
    if env.get("SIPSOCKETS_MI_TLS_KEY_FILE") == "ca":
        env["SIPSOCKETS_MI_TLS_KEY_FILE"] = env["SIPSOCKETS_MI_TLS_CA_FILE"]
    env.pop(drop, None)
    with pytest.raises(SettingsError, match=needle):
        load([], env)
