"""The relay between workers: a message that must go out on a stream connection another worker owns (a
response arriving on a shared UDP socket for a request that came over TCP) is sent to that worker over a
per-worker unix datagram socket with an abstract name, and handled there as if received on the listener."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from sipproxy.shared.control import listener_from_wire, listener_to_wire
from sipproxy.sip.listeners import Listener

Received = Callable[[bytes, Listener, tuple[str, int]], None]


class Relay:
    """`receive(data, listener, src)` is called for each message relayed to this worker."""

    def __init__(self, prefix: str, index: int, receive: Received, log: logging.Logger) -> None:
        self.prefix = prefix
        self.index = index
        self.receive = receive
        self.log = log
        self.sock: socket.socket | None = None

    def address(self, index: int) -> bytes:
        return f"\0{self.prefix}-{index}".encode()

    async def open(self) -> None:
        """Raises OSError when the socket cannot be had (then `send` always fails)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.address(self.index))
        sock.setblocking(False)
        self.sock = sock
        relay = self

        class Inbound(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                relay.received(data)

        await asyncio.get_running_loop().create_datagram_endpoint(
            Inbound, sock=socket.socket(fileno=os.dup(sock.fileno()))
        )

    def send(self, owner: int, data: bytes, listener: Listener, src: tuple[str, int]) -> bool:
        """False when the message could not be handed to the owner (it is then handled here)."""
        if self.sock is None:
            return False
        head = json.dumps([listener_to_wire(listener), src[0], src[1]]).encode()
        try:
            self.sock.sendto(head + b"\n" + data, self.address(owner))
        except OSError:
            return False
        return True

    def received(self, packet: bytes) -> None:
        head, _, data = packet.partition(b"\n")
        try:
            wire, host, port = json.loads(head)
            listener = listener_from_wire(wire)
        except (ValueError, TypeError):
            return
        if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
            return
        self.receive(data, listener, (host, port))
