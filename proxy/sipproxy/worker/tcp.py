"""TCP in a worker: listeners shared by the TCP pool, one framer per connection, outbound connection pool."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import cast

from sipproxy.sip.framing import FramingError, StreamFramer, error_reply_for_stream
from sipproxy.sip.listeners import Listener
from sipproxy.worker.transport import TransportHost

# A peer that has sent part of a message and then nothing for this long is cut off (slowloris).
PARTIAL_TIMEOUT = 20.0
# Bytes queued towards a peer that does not read before its connection is dropped.
MAX_WRITE_BUFFER = 4 << 20
LISTEN_BACKLOG = 1024
SWEEP_INTERVAL = 2.0

PoolKey = tuple[Listener, str, int]  # (local socket, destination address, port)


class SipStream(asyncio.Protocol):
    """One TCP connection, accepted on a listener or opened by us towards a next hop."""

    def __init__(
        self, tcp: TcpTransport, listener: Listener, sid: int, pool_key: PoolKey | None = None
    ) -> None:
        self.tcp = tcp
        self.host = tcp.host
        self.listener = listener
        self.sid = sid
        self.pool_key = pool_key
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.pending: list[bytes] = []
        self.closed = False
        now = time.monotonic()
        self.last_activity = now
        self.partial_since: float | None = None  # when a half-received message started waiting

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (peer[0], peer[1])
        self.host.register_connection(self)
        self.tcp.streams.add(self)
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        counters = self.host.counters_for(self.sid)
        counters.rx_bytes += len(data)
        try:
            messages = self.framer.feed(data)
        except FramingError as exc:
            # Messages split off before the broken one were well framed: they are served, then the
            # connection is answered (if possible) and closed.
            self._handle_all(exc.messages)
            counters.rx_packets += 1
            counters.drop(exc.reason)
            reply = error_reply_for_stream(self.framer.pending, exc.reason)
            if reply is not None and self.transport is not None:
                self.transport.write(reply)
            self.abort_after_write()
            return
        if self.framer.pending:
            if self.partial_since is None:
                self.partial_since = self.last_activity
        else:
            self.partial_since = None
        self._handle_all(messages)

    def _handle_all(self, messages: list[bytes]) -> None:
        counters = self.host.counters_for(self.sid)
        for message in messages:
            counters.rx_packets += 1
            try:
                self.host.deliver(message, self.listener, self.peer, self.sid, self)
            except Exception:
                self.host.log.exception("failed on a message from %s", self.peer)
                counters.drop("internal_error")

    def write(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self.closed:
            raise ConnectionError("connection closed")
        if self.transport is None:
            if sum(len(d) for d in self.pending) > MAX_WRITE_BUFFER:
                raise ConnectionError("connection not established and its queue is full")
            self.pending.append(data)
        else:
            if self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                # The peer does not read: cut it off rather than buffer without bound.
                self.transport.abort()
                raise ConnectionError("peer not reading")
            self.transport.write(data)

    def abort_after_write(self) -> None:
        if self.transport is not None:
            self.transport.close()  # close() flushes what was written first

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.tcp.streams.discard(self)
        try:
            self.host.forget_connection(self)
        except Exception:
            self.host.log.exception("forget_connection failed")
        pool = self.tcp.pool
        if self.pool_key is not None and pool.get(self.pool_key) is self:
            del pool[self.pool_key]

    def expired(self, now: float, idle_timeout: float) -> bool:
        if self.partial_since is not None and now - self.partial_since > PARTIAL_TIMEOUT:
            return True
        return now - self.last_activity > idle_timeout


class TcpTransport:
    """Every TCP connection of this worker, accepted on a listener or opened towards a next hop, and the pool
    of the opened ones (per local socket and destination)."""

    def __init__(self, host: TransportHost) -> None:
        self.host = host
        self.streams: set[SipStream] = set()  # every established connection
        self.pool: dict[PoolKey, SipStream] = {}
        self.connecting: set[asyncio.Task[None]] = set()
        self.idle_timeout = 120.0

    async def serve(self, sock: socket.socket, listener: Listener, sid: int) -> asyncio.AbstractServer:
        return await asyncio.get_running_loop().create_server(
            lambda: SipStream(self, listener, sid), sock=sock, backlog=LISTEN_BACKLOG
        )

    def pooled(self, listener: Listener, host: str, port: int) -> SipStream | None:
        stream = self.pool.get((listener, host, port))
        return None if stream is None or stream.closed else stream

    def open_outbound(self, listener: Listener, sid: int, host: str, port: int) -> SipStream:
        """A pooled connection from the listener's address (any local port) to a next hop, usable at once:
        writes are queued until it is connected."""
        key = (listener, host, port)
        stream = SipStream(self, listener, sid, pool_key=key)
        self.pool[key] = stream
        task = asyncio.get_running_loop().create_task(self._connect(stream, host, port))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)
        return stream

    async def _connect(self, stream: SipStream, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(
                lambda: stream, host=host, port=port, local_addr=(stream.listener.host, 0)
            )
        except OSError as exc:
            stream.closed = True
            if stream.pool_key is not None and self.pool.get(stream.pool_key) is stream:
                del self.pool[stream.pool_key]
            self.host.counters_for(stream.sid).drop("tcp_connect_failed")
            self.host.log.info(
                "tcp connect to %s:%s from %s failed: %s", host, port, stream.listener.host, exc
            )

    async def sweep(self) -> None:
        """Closes connections idle for `idle_timeout`, or stuck in a partial message; runs until cancelled."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for stream in list(self.streams):
                if stream.expired(now, self.idle_timeout):
                    self.host.counters_for(stream.sid).drop("tcp_idle_timeout")
                    stream.abort_after_write()

    def close_all(self) -> None:
        for stream in list(self.streams):
            stream.abort_after_write()
