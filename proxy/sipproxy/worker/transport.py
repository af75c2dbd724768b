"""What the worker gives its transports, and all they may use of it.

A transport (`udp`, `tcp`; later `tls`, `ws`) reads messages from the sockets it serves and hands each
complete one to `TransportHost.deliver`, which runs the SIP engine and sends (or relays) what it decides. It
never sees the worker, the engine, the sender or another transport, so a new transport is a new sibling module
registered in `worker.Worker.transports`, not an edit all over the worker.

The host is a record of bound callables rather than an object to call through: a transport binds what it uses
per message once (as `udp.UdpServer` binds `deliver`), so the interface adds no call layer to the hot path."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sipproxy.shared.counters import SocketCounters
from sipproxy.sip.listeners import Listener


class Deliver(Protocol):
    def __call__(
        self, data: bytes, listener: Listener, src: tuple[str, int], sid: int, conn: object | None = None, /
    ) -> None:
        """One complete message received on `listener` (socket `sid`) from `src`; `conn` is the stream
        connection it came over (responses go back on it), None for a datagram. Never raises on bad input."""


@dataclass(frozen=True, slots=True)
class TransportHost:
    deliver: Deliver
    # The counters of a socket, created on first use; they live until the socket is removed.
    counters_for: Callable[[int], SocketCounters]
    # A stream connection opened or accepted (its id is what our Via carries), and closed.
    register_connection: Callable[[object], int]
    forget_connection: Callable[[object], None]
    log: logging.Logger


class Serving(Protocol):
    """A socket being served; closed when the socket is removed (established connections may carry on)."""

    def close(self) -> None: ...


class Transport(Protocol):
    async def serve(self, sock: socket.socket, listener: Listener, sid: int) -> Serving:
        """Start reading from (or accepting on) `sock`, the transport's own descriptor of the socket."""
        ...
