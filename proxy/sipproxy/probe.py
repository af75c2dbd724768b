"""`python -m sipproxy.probe`: a SIP OPTIONS to every Ready SipSocket of a namespace, saying which answered.

The chart's `helm test` Pod runs it from the proxy image, with a ServiceAccount that may only list the
SipSockets of its namespace. Where to send is read from each SipSocket: its own address, or for a wildcard
(0.0.0.0, ::) its advertised address, else `--fallback-host` (the chart's proxy Service in service mode).
UDP and TCP sockets are probed; other transports are reported as not probed. Exit status 0 when every probed
socket answered, 1 otherwise. Standard library only, synchronous: a one-shot tool.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import socket
import ssl
import sys
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}
PROBED = ("udp", "tcp")


@dataclass(frozen=True)
class Target:
    """One Ready SipSocket: where to send its OPTIONS (host, port), the Request-URI's host and port (an
    address the proxy knows as its own, so that it answers instead of forwarding), why it is not probed."""

    name: str
    protocol: str
    host: str
    port: int
    uri_host: str = ""
    uri_port: int = 0
    skip: str = ""

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol} {host}:{self.port}"


def _ready(obj: Mapping[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _wildcard(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def targets(items: Iterable[Mapping[str, Any]], fallback_host: str = "") -> list[Target]:
    """The Ready SipSockets of a list, by name, each with where to send (pure)."""
    out = []
    for obj in sorted(items, key=lambda o: str(o.get("metadata", {}).get("name", ""))):
        if not _ready(obj):
            continue
        name = str(obj["metadata"]["name"])
        spec = obj.get("spec") or {}
        protocol = str(spec.get("protocol", "")).lower()
        port = int(
            (obj.get("status") or {}).get("port") or spec.get("port") or DEFAULT_PORTS.get(protocol, 0)
        )
        address, skip = str(spec.get("address", "")), ""
        host, uri_host, uri_port = address, address, port
        advertised = spec.get("advertised") or {}
        if advertised.get("address"):
            uri_host, uri_port = str(advertised["address"]), int(advertised.get("port") or port)
        if _wildcard(address):
            if advertised.get("address"):
                host, port = uri_host, uri_port
            elif fallback_host:
                host = fallback_host
            else:
                skip = "binds a wildcard address and advertises none: no single address to send to"
        if not skip and protocol not in PROBED:
            skip = f"this test sends OPTIONS over {' and '.join(PROBED)} only"
        out.append(Target(name, protocol, host, port, uri_host, uri_port, skip))
    return out


def options_request(uri_host: str, uri_port: int, local: tuple[str, int], transport: str) -> bytes:
    def bracket(h: str) -> str:
        return f"[{h}]" if ":" in h else h

    me = f"{bracket(local[0])}:{local[1]}"
    lines = [
        f"OPTIONS sip:{bracket(uri_host)}:{uri_port} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {me};branch=z9hG4bK{secrets.token_hex(8)};rport",
        "Max-Forwards: 70",
        f"From: <sip:helm-test@{me}>;tag={secrets.token_hex(4)}",
        f"To: <sip:{bracket(uri_host)}:{uri_port}>",
        f"Call-ID: {secrets.token_hex(12)}",
        "CSeq: 1 OPTIONS",
        f"Contact: <sip:helm-test@{me}>",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def status_line(reply: bytes) -> str:
    return reply.split(b"\r\n", 1)[0].decode(errors="replace")


def send_options(target: Target, timeout: float) -> str:
    """The reply's status line; raises OSError (TimeoutError among them) when nothing answered."""
    if target.protocol == "udp":
        family, _, _, _, address = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as route:
            route.connect(address)  # sends nothing: asks the kernel which local address reaches the target
            local_ip = route.getsockname()[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            # Not connected: a proxy bound to a wildcard address may answer from another of its addresses.
            s.settimeout(timeout)
            s.bind((local_ip, 0))
            s.sendto(options_request(target.uri_host, target.uri_port, s.getsockname()[:2], "udp"), address)
            return status_line(s.recvfrom(65535)[0])
    with socket.create_connection((target.host, target.port), timeout=timeout) as s:
        s.sendall(options_request(target.uri_host, target.uri_port, s.getsockname()[:2], "tcp"))
        reply = b""
        while b"\r\n" not in reply:
            chunk = s.recv(65535)
            if not chunk:
                raise ConnectionError("connection closed without a reply")
            reply += chunk
        return status_line(reply)


def list_sipsockets(namespace: str, api: str = "", token_file: Path = SERVICE_ACCOUNT / "token") -> list[Any]:
    """The SipSockets of the namespace, with the pod's ServiceAccount (in-cluster) or `api` (tests)."""
    if not api:
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        api = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    context = (
        ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
        if api.startswith("https")
        else None
    )
    request = urllib.request.Request(
        f"{api}/apis/sipsockets.io/v1alpha1/namespaces/{namespace}/sipsockets",
        headers={"Authorization": f"Bearer {token_file.read_text().strip()}", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        items: list[Any] = json.load(response).get("items") or []
    return items


def report(found: Sequence[Target], timeout: float) -> tuple[list[str], bool]:
    """One line per SipSocket, and whether every probed one answered."""
    lines, ok = [], True
    for t in found:
        if t.skip:
            lines.append(f"not probed  {t.name}  {t.protocol}: {t.skip}")
            continue
        try:
            reply = send_options(t, timeout)
        except OSError as exc:
            ok = False
            why = (
                f"no reply within {timeout:g}s"
                if isinstance(exc, TimeoutError)
                else str(exc) or type(exc).__name__
            )
            lines.append(f"no answer   {t.name}  {t.endpoint}: {why}")
            continue
        if reply.startswith("SIP/2.0 2"):
            lines.append(f"answered    {t.name}  {t.endpoint}: {reply}")
        else:  # the proxy answers an OPTIONS to itself with 200: anything else is not its own answer
            ok = False
            lines.append(f"bad answer  {t.name}  {t.endpoint}: {reply}")
    return lines, ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sipproxy.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", help="default: the pod's own namespace")
    parser.add_argument(
        "--fallback-host", default="", help="where to send for a wildcard socket with no advertised address"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each reply")
    parser.add_argument("--api", default="", help=argparse.SUPPRESS)  # an API server URL (tests)
    parser.add_argument("--token-file", type=Path, default=SERVICE_ACCOUNT / "token", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    namespace = args.namespace or (SERVICE_ACCOUNT / "namespace").read_text().strip()
    try:
        items = list_sipsockets(namespace, args.api, args.token_file)
    except (OSError, ValueError, KeyError) as exc:
        print(f"cannot list the SipSockets of namespace {namespace}: {exc}", file=sys.stderr)
        return 1
    found = targets(items, args.fallback_host)
    if not found:
        print(f"no Ready SipSocket in namespace {namespace} ({len(items)} in all): nothing to probe")
        return 0
    lines, ok = report(found, args.timeout)
    for line in lines:
        print(line)
    answered = sum(1 for line in lines if line.startswith("answered"))
    probed = sum(1 for t in found if not t.skip)
    print(f"{answered} of {probed} probed Ready SipSockets in namespace {namespace} answered")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
