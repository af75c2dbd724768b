"""The operator's side of the MI's mutual TLS: its client certificate, and the CA the proxies' certificate
must come from.

The proxies are called by pod IP. A certificate shared by a whole DaemonSet or Deployment cannot name its
pods' IPs (they are known only once the pods run), so the proxies' certificate is checked against the CA and a
fixed name instead, which the client sends as the TLS server name and matches against the certificate
(`--mi-tls-server-name`; the chart's certificates carry the DNS name of its headless proxy Service, whose
addresses are exactly the proxy pods' IPs). A certificate of another CA, or of this CA for another name, is
refused. The files are re-read when they change (`ReloadingContext`), so a renewed client certificate or CA
is used from the next call on, without a restart."""

from __future__ import annotations

import ssl

from sipproxy.shared.tls_files import ReloadingContext


def client_context(ca_file: str, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer's chain and name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=ca_file)
    if cert_file and key_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def reloading_client_context(ca_file: str, cert_file: str | None, key_file: str | None) -> ReloadingContext:
    paths = [ca_file, *([cert_file, key_file] if cert_file and key_file else [])]
    return ReloadingContext(paths, lambda: client_context(ca_file, cert_file, key_file), "MI client TLS")
