"""UDP in a worker: one datagram is one SIP message."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

from sipproxy.worker.transport import TransportHost

if TYPE_CHECKING:
    from sipproxy.shared.counters import SocketCounters
    from sipproxy.sip.listeners import Listener


class UdpServer(asyncio.DatagramProtocol):
    def __init__(self, host: TransportHost, listener: Listener, sid: int) -> None:
        self.host = host
        self.listener = listener
        self.sid = sid
        self.transport: asyncio.DatagramTransport | None = None
        # Bound once: the per-datagram path then does no attribute chains or counter lookups. The counters
        # are created on the first datagram (a socket without traffic reports nothing) and live as long as
        # the socket: the worker closes this server before it retires them.
        self.counters: SocketCounters | None = None
        self.handle = host.deliver

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        counters = self.counters
        if counters is None:
            counters = self.counters = self.host.counters_for(self.sid)
        counters.rx_packets += 1
        counters.rx_bytes += len(data)
        try:
            self.handle(data, self.listener, addr if len(addr) == 2 else (addr[0], addr[1]), self.sid)
        except Exception:  # the engine promises never to raise; a worker must survive if it does
            self.host.log.exception("failed on a datagram from %s", addr)
            counters.drop("internal_error")

    def error_received(self, exc: Exception) -> None:
        # ICMP errors of earlier sends (port unreachable...): nothing to do in a stateless proxy.
        pass

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class UdpTransport:
    """Serves UDP sockets on the worker's event loop. (Sending out of them is the sender's: any worker sends
    out of any UDP socket, served here or not.)"""

    def __init__(self, host: TransportHost) -> None:
        self.host = host

    async def serve(self, sock: socket.socket, listener: Listener, sid: int) -> UdpServer:
        _, server = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: UdpServer(self.host, listener, sid), sock=sock
        )
        return server
