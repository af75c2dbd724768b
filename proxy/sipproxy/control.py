"""The per-worker control channel: a SOCK_SEQPACKET socketpair, one JSON message per packet, at most one
file descriptor attached (SCM_RIGHTS). Each worker has its own pair, so no worker can take a descriptor
meant for another."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

# Above the kernel's default socket buffer limit (wmem_max), so any message that could be sent fits.
MAX_MESSAGE = 256 << 10


def make_pair() -> tuple[socket.socket, socket.socket]:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (parent, child):
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_MESSAGE)
        except OSError:
            pass
    parent.setblocking(False)
    return parent, child


class ChannelClosed(ConnectionError):
    pass


class Channel:
    """Async send/receive of (message, fd) over one end of the pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self.closed = False

    async def send(self, message: dict[str, Any], fd: int | None = None) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        async with self._send_lock:
            while True:
                if self.closed:
                    raise ChannelClosed("control channel closed")
                try:
                    if fd is None:
                        self.sock.send(data)
                    else:
                        socket.send_fds(self.sock, [data], [fd])
                    return
                except BlockingIOError:
                    await self._wait(writable=True)
                except OSError as exc:
                    self.closed = True
                    raise ChannelClosed(str(exc)) from exc

    async def recv(self) -> tuple[dict[str, Any], int | None]:
        while True:
            if self.closed:
                raise ChannelClosed("control channel closed")
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, 4)
            except BlockingIOError:
                await self._wait(writable=False)
                continue
            except OSError as exc:
                self.closed = True
                raise ChannelClosed(str(exc)) from exc
            if not data:
                self.closed = True
                for extra in fds:
                    socket.close(extra)
                raise ChannelClosed("peer closed the control channel")
            for extra in fds[1:]:
                socket.close(extra)
            return json.loads(data), (fds[0] if fds else None)

    async def _wait(self, writable: bool) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        fileno = self.sock.fileno()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        if writable:
            self._loop.add_writer(fileno, ready)
        else:
            self._loop.add_reader(fileno, ready)
        try:
            await fut
        finally:
            if writable:
                self._loop.remove_writer(fileno)
            else:
                self._loop.remove_reader(fileno)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
