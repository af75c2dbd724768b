"""UDP in a worker: one datagram is one SIP message.

A UDP worker (of a static socket's `use_workers`, or of the dynamic pool) runs on a `PoolSelector`
(`udp_loop.py`) and serves its sockets through it: the selector waits on them with EPOLLEXCLUSIVE and calls
the socket's reader inline, one datagram per call. A worker without one (a TCP worker, which serves no UDP
socket today, or a test) serves them through asyncio's own datagram endpoint."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sipproxy.worker.transport import TransportHost

if TYPE_CHECKING:
    from sipproxy.shared.counters import SocketCounters
    from sipproxy.sip.listeners import Listener
    from sipproxy.worker.udp_loop import PoolSelector

# Larger than any datagram (the IPv4 and IPv6 UDP payload limit): a datagram is never cut.
MAX_DATAGRAM = 65535


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


class PooledUdpSocket:
    """A UDP socket served through the pool's selector: `read_one` is called each time it is readable."""

    def __init__(
        self, host: TransportHost, selector: PoolSelector, sock: socket.socket, listener: Listener, sid: int
    ) -> None:
        self.host = host
        self.selector = selector
        self.sock = sock
        self.listener = listener
        self.sid = sid
        self.counters: SocketCounters | None = None
        self.read_one: Callable[[], None] = self._reader()
        selector.add_datagram_reader(sock.fileno(), self.read_one)

    def _reader(self) -> Callable[[], None]:
        # A closure over locals: the per-datagram call then looks nothing up on objects.
        recvfrom = self.sock.recvfrom
        deliver = self.host.deliver
        listener, sid = self.listener, self.sid
        counters_for, log = self.host.counters_for, self.host.log

        def read_one() -> None:
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return  # another worker of the pool took it
            except OSError as exc:
                log.debug("receive on %s failed: %s", listener, exc)
                return
            counters = self.counters
            if counters is None:
                counters = self.counters = counters_for(sid)
            counters.rx_packets += 1
            counters.rx_bytes += len(data)
            try:
                deliver(data, listener, (addr[0], addr[1]), sid)
            except Exception:  # the engine promises never to raise; a worker must survive if it does
                log.exception("failed on a datagram from %s", addr)
                counters.drop("internal_error")

        return read_one

    def close(self) -> None:
        self.selector.remove_datagram_reader(self.sock.fileno())
        self.sock.close()


class UdpTransport:
    """Serves UDP sockets. (Sending out of them is the sender's: any worker sends out of any UDP socket,
    served here or not.)"""

    def __init__(self, host: TransportHost, selector: PoolSelector | None = None) -> None:
        self.host = host
        self.selector = selector

    def serve_now(self, sock: socket.socket, listener: Listener, sid: int) -> PooledUdpSocket | None:
        """Serve through the pool's selector, which needs no waiting; None for a worker without one."""
        if self.selector is None:
            return None
        sock.setblocking(False)
        return PooledUdpSocket(self.host, self.selector, sock, listener, sid)

    async def serve(self, sock: socket.socket, listener: Listener, sid: int) -> UdpServer | PooledUdpSocket:
        pooled = self.serve_now(sock, listener, sid)
        if pooled is not None:
            return pooled
        _, server = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: UdpServer(self.host, listener, sid), sock=sock
        )
        return server
