"""TLS in a worker: the domains new connections use (one generation at a time, replaced by `tls_reload`), the
TLS layer of a stream connection, and the transport serving `tls` sockets.

The layer is OpenSSL over memory BIOs (`ssl.SSLContext.wrap_bio`) inside the stream's own protocol, not
`loop.start_tls`: asyncio's and uvloop's TLS protocols keep a 256 KiB read buffer per connection, which ten
thousand idle clients cannot afford, and an accepted connection must choose its context by the local address
it arrived on, which a listener-wide context cannot do.

Server side (`ServerSecuring`): the context is the one the generation's `ServerContexts` gives the local
address (SNI then switches it to the domain `match_sip_domain` selects); no domain for the address fails the
connection at once (`tls_no_server_domain`), a failed handshake is `tls_handshake_failed`, and after the
handshake `check_peer` enforces a client certificate the selected domain requires (OpenSSL keeps the first
context's verify mode across an SNI switch). Client side: the context of the client domain matching the next
hop (`ClientContexts`), SNI and name check when the next hop is a name.

A connection keeps the generation it started with: `tls_reload` changes what new connections get, never an
established one."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time

from sipproxy.shared.tls_domains import (
    ClientContexts,
    NoTlsDomain,
    ServerContexts,
    TlsDomain,
    TlsDomainError,
)
from sipproxy.sip.listeners import Listener
from sipproxy.worker.tcp import SecureLayer, SipStream, StreamRefused, TcpTransport
from sipproxy.worker.transport import TransportHost

# Plaintext read per call; a SIP message over TLS arrives in records of at most 16 KiB.
READ_SIZE = 65536
# A refused handshake is logged at most this often (a scanner must not flood the log).
REFUSAL_LOG_INTERVAL = 10.0


class TlsSession:
    """One TLS connection over memory BIOs: wire bytes in, plaintext out, and back (a SecureLayer)."""

    __slots__ = ("_in", "_out", "check_peer", "handshake_done", "obj", "peer_closed")

    def __init__(
        self,
        ctx: ssl.SSLContext,
        server_side: bool,
        server_hostname: str | None = None,
        check_peer: ServerContexts | None = None,
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname)
        self.handshake_done = False
        self.peer_closed = False
        self.check_peer = check_peer

    def start(self) -> bytes:
        self._step()
        return self._out.read()

    def _step(self) -> None:
        """Advance the handshake; raises StreamRefused when it fails."""
        if self.handshake_done:
            return
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLError as exc:
            raise StreamRefused("tls_handshake_failed", self._out.read()) from exc
        self.handshake_done = True

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        self._in.write(data)
        self._step()
        plain: list[bytes] = []
        if self.handshake_done:
            try:
                while True:
                    chunk = self.obj.read(READ_SIZE)
                    if not chunk:
                        # No data raises SSLWantReadError: nothing read means the peer's close_notify, an
                        # orderly end (what came before it is still served).
                        self.peer_closed = True
                        break
                    plain.append(chunk)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
            except ssl.SSLError as exc:
                raise StreamRefused("tls_error", self._out.read()) from exc
        return b"".join(plain), self._out.read()

    def check(self) -> str | None:
        if self.check_peer is None:
            return None
        return self.check_peer.check_peer(self.obj)

    def send(self, plaintext: bytes) -> bytes:
        try:
            self.obj.write(plaintext)
        except ssl.SSLError as exc:
            raise ConnectionError(f"TLS write failed: {exc}") from None
        return self._out.read()


class TlsContexts:
    """The domains of the current generation as contexts: what each new TLS connection of the worker uses."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.generation = 0
        self._last_refusal_log = -REFUSAL_LOG_INTERVAL
        self.server = ServerContexts([], self._refused)
        self.client = ClientContexts([])

    def apply(self, generation: int, domains: list[TlsDomain]) -> None:
        server = ServerContexts(domains, self._refused)
        for error in server.errors:
            self.log.warning("%s", error)
        self.server = server
        self.client = ClientContexts(domains)
        self.generation = generation
        self.log.info(
            "TLS domains generation %d: %d server, %d client",
            generation,
            len(server.domains),
            len(self.client.domains),
        )

    def _refused(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL:
            self._last_refusal_log = now
            self.log.info("TLS handshake refused: %s", reason)

    def server_session(self, local: tuple[str, int]) -> TlsSession | str:
        """The TLS layer of a connection accepted at `local`; a str (drop reason) when no domain serves it."""
        server = self.server  # the generation at accept time, kept by the session for check_peer
        ctx = server.for_address(local[0], local[1])
        if ctx is None:
            return "tls_no_server_domain"
        return TlsSession(ctx, server_side=True, check_peer=server)

    def client_session(self, host: str, ip: str, port: int) -> TlsSession | str:
        """The TLS layer of a connection to next hop `host` at ip:port; a str says why there is none."""
        try:
            ctx = self.client.for_next_hop(host, ip, port)
        except (NoTlsDomain, TlsDomainError) as exc:
            return str(exc)
        return TlsSession(ctx, server_side=False, server_hostname=None if _is_ip(host) else host)


class TlsTransport:
    """Serves `tls` sockets: each accepted connection gets a TLS layer from the current domains."""

    def __init__(self, host: TransportHost, tcp: TcpTransport, domains: TlsContexts) -> None:
        self.host = host
        self.tcp = tcp
        self.domains = domains
        tcp.outbound_tls = self._outbound

    def _outbound(self, host: str, ip: str, port: int) -> SecureLayer | str:
        return self.domains.client_session(host, ip, port)

    def _inbound(self, local: tuple[str, int]) -> SecureLayer | str:
        return self.domains.server_session(local)

    async def serve(self, sock: socket.socket, listener: Listener, sid: int) -> asyncio.AbstractServer:
        securing = self._inbound
        return await self.tcp.serve_streams(
            sock, lambda: SipStream(self.tcp, listener, sid, securing=securing)
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
