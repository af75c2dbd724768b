"""`python -m sipproxy.probe` (what `helm test` runs) against a real proxy on loopback, listing SipSockets
from a loopback stand-in for the API server: it names the Ready SipSockets that answered and those that did
not, and fails then."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Proxy, free_port, loopback_ip

NAMESPACE = "voip"
TOKEN = "probe-token"


class API:
    """GET /apis/sipsockets.io/v1alpha1/namespaces/voip/sipsockets with the bearer token, nothing else."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.seen: list[tuple[str, str]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.seen.append((self.path, self.headers.get("Authorization", "")))
                ok = self.path == f"/apis/sipsockets.io/v1alpha1/namespaces/{NAMESPACE}/sipsockets"
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_response(401)
                    body = b"{}"
                elif not ok:
                    self.send_response(404)
                    body = b"{}"
                else:
                    self.send_response(200)
                    body = json.dumps({"kind": "SipSocketList", "items": api.items}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def api() -> Iterator[API]:
    server = API()
    yield server
    server.server.shutdown()
    server.server.server_close()


def sipsocket(name: str, protocol: str, address: str, port: int, ready: str = "True") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"protocol": protocol, "address": address, "port": port},
        "status": {"port": port, "conditions": [{"type": "Ready", "status": ready, "reason": "Listening"}]},
    }


def probe(api: API, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    return subprocess.run(
        [sys.executable, "-m", "sipproxy.probe", "--namespace", NAMESPACE, "--timeout", "2",
         "--api", api.url, "--token-file", str(token)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_probe_names_the_ready_sipsockets_that_answered_and_fails_for_one_that_did_not(
    proxies: Callable[..., Proxy], api: API, tmp_path: Path
) -> None:
    ip = loopback_ip()
    udp, tcp, silent = free_port(ip), free_port(ip), free_port(ip)
    # The helm-test probe is what this tests (one OPTIONS per socket); one worker each answers it.
    proxies({"sockets": [f"udp:{ip}:{udp}", f"tcp:{ip}:{tcp}"], "udp_workers": 1, "tcp_workers": 1})
    api.items = [
        sipsocket("carrier-a", "udp", ip, udp),
        sipsocket("carrier-b", "tcp", ip, tcp),
        sipsocket("carrier-c", "udp", ip, udp, ready="False"),
        sipsocket("carrier-d", "tls", ip, 5061),
    ]
    ok = probe(api, tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.splitlines()
    assert f"answered    carrier-a  udp {ip}:{udp}: SIP/2.0 200 OK" in lines
    assert f"answered    carrier-b  tcp {ip}:{tcp}: SIP/2.0 200 OK" in lines
    assert not [line for line in lines if "carrier-c" in line]  # not Ready: not asked
    assert next(line for line in lines if "carrier-d" in line).startswith("not probed  carrier-d  tls")
    assert lines[-1] == f"2 of 2 probed Ready SipSockets in namespace {NAMESPACE} answered"
    assert api.seen[0][1] == f"Bearer {TOKEN}"

    api.items.append(sipsocket("carrier-e", "udp", ip, silent))
    failed = probe(api, tmp_path)
    assert failed.returncode == 1
    assert f"no answer   carrier-e  udp {ip}:{silent}: no reply within 2s" in failed.stdout.splitlines()
    assert (
        failed.stdout.splitlines()[-1] == f"2 of 3 probed Ready SipSockets in namespace {NAMESPACE} answered"
    )


def test_the_probe_says_when_it_cannot_list_the_sipsockets(api: API, tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    stale.write_text("stale\n")
    result = subprocess.run(
        [sys.executable, "-m", "sipproxy.probe", "--namespace", NAMESPACE, "--api", api.url,
         "--token-file", str(stale)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot list the SipSockets of namespace {NAMESPACE}" in result.stderr
    assert "401" in result.stderr
