"""The per-worker control channel: a SOCK_SEQPACKET socketpair, one control message
(`sipproxy.shared.control`) per packet, at most one file descriptor attached (SCM_RIGHTS). Each worker has its
own pair, so no worker can take a descriptor meant for another."""

from __future__ import annotations

import array
import asyncio
import mmap
import os
import socket
from collections.abc import Callable
from typing import Generic, TypeVar

from sipproxy.shared.control import Message, ProtocolError, encode

In = TypeVar("In")

# Above the kernel's default socket buffer limit (wmem_max), so any message that could be sent fits.
MAX_MESSAGE = 256 << 10
MAX_FDS = 4  # descriptors taken from one packet (one is sent at most; more are closed)
_ANCILLARY = socket.CMSG_LEN(MAX_FDS * array.array("i").itemsize)


def memory_file(data: bytes) -> int:
    """An anonymous memory file (memfd) holding `data`, for a message whose payload exceeds a packet; the
    caller closes the descriptor. Never on a disk, and readable only by the processes it is passed to."""
    fd = os.memfd_create("sipsockets-control", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_memory_file(fd: int, size: int) -> bytes:
    """`size` bytes from offset 0 of a memory file (pread: the offset shared with other holders stays)."""
    parts: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            raise ValueError(f"memory file holds {offset} bytes, {size} expected")
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


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


class Channel(Generic[In]):
    """Async send/receive of (message, fd) over one end of the pair. `decode` reads what this end receives
    (`decode_reply` in the supervisor, `decode_command` in a worker)."""

    def __init__(self, sock: socket.socket, decode: Callable[[bytes], In]) -> None:
        self.sock = sock
        self._decode = decode
        sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self.closed = False
        self._listening = False
        # An anonymous mapping: memory only for the pages a packet has reached, not MAX_MESSAGE.
        self._buffer = memoryview(mmap.mmap(-1, MAX_MESSAGE))

    async def send(self, message: Message | bytes, fd: int | None = None) -> None:
        """`message` may be encoded already (`control.encode`): one change goes to every worker alike."""
        data = message if isinstance(message, bytes) else encode(message)
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

    def send_now(self, data: bytes) -> bool:
        """Send an encoded message if that needs no waiting (nothing queued before it, room in the socket);
        False when the caller must `send` it instead."""
        if self._send_lock.locked():
            return False
        if self.closed:
            raise ChannelClosed("control channel closed")
        try:
            self.sock.send(data)
        except BlockingIOError:
            return False
        except OSError as exc:
            self.closed = True
            raise ChannelClosed(str(exc)) from exc
        return True

    async def recv(self) -> tuple[In, int | None]:
        """The next message and its descriptor; raises ProtocolError (the descriptor closed) for one that
        cannot be decoded, ChannelClosed when the peer is gone."""
        while True:
            try:
                return self.recv_now()
            except BlockingIOError:
                await self._wait(writable=False)

    def recv_now(self) -> tuple[In, int | None]:
        """As `recv`, for a message already waiting: raises BlockingIOError when there is none."""
        if self.closed:
            raise ChannelClosed("control channel closed")
        try:
            data, fds = self._receive()
        except BlockingIOError:
            raise
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
        fd = fds[0] if fds else None
        try:
            return self._decode(data), fd
        except ProtocolError:
            if fd is not None:
                os.close(fd)
            raise

    def _receive(self) -> tuple[bytes, list[int]]:
        """One packet and the descriptors attached (as `socket.recv_fds`), received into the channel's own
        buffer: a buffer of MAX_MESSAGE allocated for each packet (what recv_fds does) cost eight times the
        receive itself, and every change of the socket set is a few packets per worker."""
        size, ancillary, _flags, _addr = self.sock.recvmsg_into([self._buffer], _ANCILLARY)
        fds = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
        return bytes(self._buffer[:size]), list(fds)

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

    def listen(
        self,
        on_message: Callable[[In, int | None], bool],
        on_unreadable: Callable[[ProtocolError], None],
        on_closed: Callable[[], None],
    ) -> None:
        """Hand every message to `on_message` as it arrives, inside the loop's reader callback (no task to
        wake per message: a reload sends every worker its change, and the supervisor gets an acknowledgement
        from each), until the peer is gone: then `on_closed`, once. `on_message` returns False to stop
        listening after that message (listen again to go on). A message that cannot be decoded goes to
        `on_unreadable` (its descriptor closed), and the channel goes on."""

        def readable() -> None:
            while True:
                try:
                    message, fd = self.recv_now()
                except BlockingIOError:
                    return
                except ProtocolError as exc:
                    on_unreadable(exc)
                    continue
                except ChannelClosed:
                    self.stop_listening()
                    on_closed()
                    return
                if not on_message(message, fd):
                    self.stop_listening()
                    return

        self._loop.add_reader(self.sock.fileno(), readable)
        self._listening = True

    def stop_listening(self) -> None:
        if self._listening:
            self._loop.remove_reader(self.sock.fileno())
            self._listening = False

    def close(self) -> None:
        self.stop_listening()
        self.closed = True
        self.sock.close()
