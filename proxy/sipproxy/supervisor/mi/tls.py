"""The MI's TLS server side: HTTPS with the proxy's certificate, and with a client CA mutual TLS.

The listening server keeps the one `ssl.SSLContext` it was started with, so rotation happens per connection:
that context's SNI callback (OpenSSL calls it for every ClientHello, with or without a server name) hands the
handshake the context built from the files as they are now (`ReloadingContext`). A renewed certificate, key
or client CA is therefore used from the next connection on; connections already open keep theirs."""

from __future__ import annotations

import ssl

from sipproxy.shared.tls_files import ReloadingContext
from sipproxy.supervisor.config import MiTls


def server_context(tls: MiTls) -> ssl.SSLContext:
    """One context from the files as they are; raises OSError or ssl.SSLError when they do not load."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.certificate, tls.private_key)
    if tls.client_ca is not None:
        ctx.load_verify_locations(cafile=tls.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED  # no certificate from that CA: the handshake fails
    return ctx


class ServerTLS:
    """`context` is what the server listens with; each handshake is moved onto the current files' context."""

    def __init__(self, tls: MiTls) -> None:
        paths = [tls.certificate, tls.private_key, *([tls.client_ca] if tls.client_ca else [])]
        self.files = ReloadingContext(paths, lambda: server_context(tls), "mi.tls")
        self.context = server_context(tls)
        self.context.sni_callback = self._on_client_hello

    def _on_client_hello(self, conn: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        # Switching the context takes its certificate, key and trust store for this handshake; the
        # verify mode stays the one of `context`, which every context built here shares.
        current = self.files.current()
        if conn.context is not current:
            conn.context = current
