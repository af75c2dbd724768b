"""A UDP socket served by a worker: one datagram is one SIP message.

Every datagram runs through this code, on caches gone cold while the worker slept, where each step costs
(docs/benchmarks.md): the usual outcome, one datagram to an IP address, is sent from here; anything else
(drops, streams, names to resolve, a relay to another worker) goes to the worker's general dispatch.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sipproxy.metrics import SocketCounters
    from sipproxy.sip.engine import Listener, Outcome
    from sipproxy.worker import Worker


class UdpServer(asyncio.DatagramProtocol):
    def __init__(self, worker: Worker, listener: Listener, sid: int) -> None:
        self.worker = worker
        self.listener = listener
        self.sid = sid
        self.transport: asyncio.BaseTransport | None = None
        # Created on the first datagram (a socket without traffic reports nothing) and kept as long as the
        # socket: remove_socket closes this server before it retires them.
        self.counters: SocketCounters | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def error_received(self, exc: Exception) -> None:
        # ICMP errors of earlier sends (port unreachable...): nothing to do in a stateless proxy.
        pass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        worker = self.worker
        counters = self.counters
        if counters is None:
            counters = self.counters = worker.counters_for(self.sid)
        counters.rx_packets += 1
        counters.rx_bytes += len(data)
        src = addr if len(addr) == 2 else (addr[0], addr[1])
        try:
            outcome = worker.engine.handle(data, self.listener, src)
            if not self._sent(worker, outcome):
                worker.finish(outcome, data, self.listener, src, self.sid)
        except Exception:  # the engine promises never to raise; a worker must survive if it does
            worker.log.exception("failed on a datagram from %s", addr)
            counters.drop("internal_error")

    def _sent(self, worker: Worker, outcome: Outcome) -> bool:
        """Send the usual outcome here: one datagram, from a UDP socket this worker holds, to an address
        already known to be an IP literal. False leaves the outcome to the worker."""
        sends = outcome.sends
        if outcome.drop_reason is not None or len(sends) != 1 or worker.connection_ids.relay_to is not None:
            return False
        send = sends[0]
        if send.proto != "udp":
            return False
        sock = worker.udp_send.get(send.listener)
        hit = worker.resolved.get(send.host)
        sid = worker.listeners.sids.get(send.listener)
        if sock is None or hit is None or hit[1] != 0.0 or hit[0] is None or sid is None:
            return False
        counters = worker.counters.get(sid)
        if counters is None:
            return False
        data = send.data
        try:
            sock.sendto(data, (hit[0], send.port))
        except OSError:
            counters.drop("send_error")
            return True
        counters.fwd_packets += 1
        counters.fwd_bytes += len(data)
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
