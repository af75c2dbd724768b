"""The MI over mutual TLS on a real proxy process: a client without the operator's certificate gets nothing,
with it the calls work, the token can be required on top, the certificates rotate without a restart, and
/metrics, /healthz and /readyz are plain HTTP on a port of their own."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from devenv.mitls import SERVER_NAME, Authority, Issued, MiPki, install
from tests.integration.conftest import Proxy, free_port

VERSION = json.dumps({"jsonrpc": "2.0", "method": "version", "id": 1}).encode()


def client_context(ca_pem: bytes | None, tmp: Path, client: Issued | None = None) -> ssl.SSLContext:
    """A client that verifies the proxy against `ca_pem` and the pinned name, presenting `client` if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_pem is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca_pem.decode())
    if client is not None:
        (tmp / "c.crt").write_bytes(client.cert_pem)
        (tmp / "c.key").write_bytes(client.key_pem)
        ctx.load_cert_chain(tmp / "c.crt", tmp / "c.key")
    return ctx


def exchange(proxy: Proxy, ctx: ssl.SSLContext, request: bytes) -> tuple[bytes, bytes]:
    """Send `request` over TLS to the MI, read until the proxy closes: (what came back, its certificate)."""
    host, _, port = proxy.config["mi"]["listen"].rpartition(":")
    raw = socket.create_connection((host, int(port)), timeout=20)
    with ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
        peer = tls.getpeercert(binary_form=True) or b""
        tls.sendall(request)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data, peer


def https_call(
    proxy: Proxy, ctx: ssl.SSLContext, body: bytes = VERSION, headers: dict[str, str] | None = None
) -> tuple[int, bytes, bytes]:
    """One HTTP/1.1 POST over TLS by hand (the proxy is addressed by IP, its name is pinned as the operator
    does): (status, body, the proxy's certificate in DER). Raises what the TLS layer raises."""
    host = proxy.config["mi"]["listen"].rpartition(":")[0]
    head = [
        f"POST /{proxy.config['mi'].get('root', 'mi')} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    data, peer = exchange(proxy, ctx, ("\r\n".join(head) + "\r\n\r\n").encode() + body)
    if not data:
        raise ConnectionResetError("the proxy closed the connection without an answer")
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2], peer


def gets_nothing(proxy: Proxy, ctx: ssl.SSLContext) -> bool:
    """True when the call gets no HTTP answer at all: the TLS handshake (or the first read after it, with
    TLS 1.3's late client-certificate check) is refused."""
    try:
        https_call(proxy, ctx)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    return False


def der_of(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


@pytest.fixture
def pki(tmp_path: Path) -> MiPki:
    return MiPki.create(tmp_path / "pki")


def start_tls_proxy(
    proxies: Callable[..., Proxy], pki: MiPki, tmp_path: Path, token: str | None = None
) -> tuple[Proxy, Issued]:
    operator = pki.renew_operator()
    # The MI's TLS is what this tests; worker counts do not touch it and one keeps start-up short.
    proxy = proxies({"udp_workers": 1}, token=token, start=False)
    proxy.config["mi"]["tls"] = pki.proxy_config()
    proxy.config["metrics"] = {"listen": f"{proxy.ip}:{free_port(proxy.ip)}"}
    # The harness's own calls (ps at stop) verify the CA but not the name: urllib checks the IP it dials.
    harness = client_context(pki.authority.cert_pem, tmp_path, operator)
    harness.check_hostname = False
    proxy.client_tls = harness
    return proxy.start(), operator


def test_only_a_client_with_the_operators_certificate_gets_an_answer(
    proxies: Callable[..., Proxy], pki: MiPki, tmp_path: Path
) -> None:
    proxy, operator = start_tls_proxy(proxies, pki, tmp_path)
    ca = pki.authority.cert_pem
    # With the operator's certificate: the call works, and the proxy is who it says (CA + pinned name).
    status, body, _ = https_call(proxy, client_context(ca, tmp_path, operator))
    assert status == 200 and json.loads(body)["result"]["Server"].startswith("sipproxy ")
    # Without a client certificate, with one from another CA, or in plain HTTP: nothing.
    assert gets_nothing(proxy, client_context(ca, tmp_path))
    stranger = Authority("someone-else").client()
    assert gets_nothing(proxy, client_context(ca, tmp_path, stranger))
    assert gets_nothing(proxy, client_context(None, tmp_path, stranger))
    req = urllib.request.Request(f"http://{proxy.config['mi']['listen']}/mi", data=VERSION, method="POST")
    with pytest.raises((OSError, ConnectionError)):
        urllib.request.urlopen(req, timeout=10)
    # A client that checks names refuses a proxy certificate without the pinned one.
    pki.renew_proxy(name="someone-else")
    with pytest.raises(ssl.SSLCertVerificationError):
        https_call(proxy, client_context(ca, tmp_path, operator))


def test_metrics_and_probes_are_plain_http_on_their_own_port(
    proxies: Callable[..., Proxy], pki: MiPki, tmp_path: Path
) -> None:
    proxy, operator = start_tls_proxy(proxies, pki, tmp_path)
    assert proxy.get("/healthz")[0] == 200 and proxy.get("/readyz")[0] == 200
    status, text = proxy.get("/metrics")
    assert status == 200 and "sipproxy_reloads_total" in text
    # The metrics port has no JSON-RPC, the MI port nothing but JSON-RPC.
    req = urllib.request.Request(f"http://{proxy.probe_listen}/mi", data=VERSION, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code in (404, 405)
    ctx = client_context(pki.authority.cert_pem, tmp_path, operator)
    answer, _ = exchange(proxy, ctx, b"GET /metrics HTTP/1.1\r\nHost: mi\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404"), answer[:100]


def test_the_token_on_top_of_mutual_tls(proxies: Callable[..., Proxy], pki: MiPki, tmp_path: Path) -> None:
    proxy, operator = start_tls_proxy(proxies, pki, tmp_path, token="t0ken-456")
    ctx = client_context(pki.authority.cert_pem, tmp_path, operator)
    assert https_call(proxy, ctx)[0] == 401
    assert https_call(proxy, ctx, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert https_call(proxy, ctx, headers={"Authorization": "Bearer t0ken-456"})[0] == 200
    assert gets_nothing(proxy, client_context(pki.authority.cert_pem, tmp_path))


def test_https_with_the_token_for_clients_without_a_certificate(
    proxies: Callable[..., Proxy], pki: MiPki, tmp_path: Path
) -> None:
    """No client CA: the proxy proves who it is, the token says who the client is (curl --cacert -H ...)."""
    # The MI's TLS is what this tests; worker counts do not touch it and one keeps start-up short.
    proxy = proxies({"udp_workers": 1}, token="t0ken-789", start=False)
    tls = pki.proxy_config()
    del tls["client_ca"]
    proxy.config["mi"]["tls"] = tls
    harness = client_context(pki.authority.cert_pem, tmp_path)
    harness.check_hostname = False
    proxy.client_tls = harness
    proxy.start()
    ctx = client_context(pki.authority.cert_pem, tmp_path)
    assert https_call(proxy, ctx)[0] == 401
    status, body, _ = https_call(proxy, ctx, headers={"Authorization": "Bearer t0ken-789"})
    assert status == 200 and "result" in json.loads(body)
    # Without metrics.listen the probes stay on the MI listener (here HTTPS).
    assert proxy.probe_url("/readyz").startswith("https://") and proxy.get("/readyz")[0] == 200


def test_rotated_certificates_are_used_without_a_restart(
    proxies: Callable[..., Proxy], pki: MiPki, tmp_path: Path
) -> None:
    proxy, operator = start_tls_proxy(proxies, pki, tmp_path)
    assert proxy.proc is not None
    pid = proxy.proc.pid
    ca = pki.authority.cert_pem
    first = https_call(proxy, client_context(ca, tmp_path, operator))[2]
    # cert-manager renews the proxy's certificate: the Secret volume's files are swapped at once.
    renewed = pki.renew_proxy()
    status, _, served = https_call(proxy, client_context(ca, tmp_path, operator))
    assert status == 200
    assert served == der_of(renewed.cert_pem) != first
    # A new CA (both sides' certificates reissued from it): the old CA's clients are refused from the next
    # connection on, the new one's accepted, by the same process.
    new_ca = Authority("sipsockets-mi-ca-2")
    server = new_ca.server()
    install(pki.proxy_dir, {"tls.crt": server.cert_pem, "tls.key": server.key_pem, "ca.crt": new_ca.cert_pem})
    assert gets_nothing(proxy, client_context(new_ca.cert_pem, tmp_path, operator))
    status, _, served = https_call(proxy, client_context(new_ca.cert_pem, tmp_path, new_ca.client()))
    assert status == 200 and served == der_of(server.cert_pem)
    # Files that do not load (a key of another certificate) leave the last good ones in use.
    install(
        pki.proxy_dir,
        {"tls.crt": server.cert_pem, "tls.key": new_ca.server().key_pem, "ca.crt": new_ca.cert_pem},
    )
    status, _, served = https_call(proxy, client_context(new_ca.cert_pem, tmp_path, new_ca.client()))
    assert status == 200 and served == der_of(server.cert_pem)
    assert proxy.proc.pid == pid and proxy.proc.poll() is None
    assert "do not load, keeping the previous ones" in proxy.log()


def test_unusable_tls_files_stop_start_up_naming_the_key(pki: MiPki, tmp_path: Path) -> None:
    from tests.integration.test_mi_and_cli import run_cli

    def start_with(tls: dict[str, str]) -> str:
        config = tmp_path / "p.yaml"
        # A config refused before any worker starts: the worker count plays no part.
        config.write_text(json.dumps({"udp_workers": 1, "mi": {"listen": "127.0.0.1:1", "tls": tls}}))
        result = run_cli("--config", str(config))
        assert result.returncode == 2, result.stderr
        return result.stderr

    files = pki.proxy_config()
    assert "config: mi.tls.client_ca: cannot read /nowhere/ca.crt" in start_with(
        {**files, "client_ca": "/nowhere/ca.crt"}
    )
    other_key = tmp_path / "other.key"
    other_key.write_bytes(pki.authority.server().key_pem)
    assert "config: mi.tls.certificate: " in start_with({**files, "private_key": str(other_key)})
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    assert "config: mi.tls.client_ca: " in start_with({**files, "client_ca": str(not_pem)})
