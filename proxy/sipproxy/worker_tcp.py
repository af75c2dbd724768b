"""TCP in a worker: listeners shared by the TCP pool, one framer per connection, outbound connection pool."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

from sipproxy.sip.framing import FramingError, StreamFramer, error_reply_for_stream

if TYPE_CHECKING:
    from sipproxy.sip.engine import Listener
    from sipproxy.worker import Worker

# A peer that has sent part of a message and then nothing for this long is cut off (slowloris).
PARTIAL_TIMEOUT = 20.0
# Bytes queued towards a peer that does not read before its connection is dropped.
MAX_WRITE_BUFFER = 4 << 20


class SipStream(asyncio.Protocol):
    """One TCP connection, accepted on a listener or opened by us towards a next hop."""

    def __init__(self, worker: Worker, listener: Listener, sid: int, pool_key: Any = None) -> None:
        self.worker = worker
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
        self.worker.engine.register_connection(self)
        self.worker.streams.add(self)
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        counters = self.worker.counters_for(self.sid)
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
        counters = self.worker.counters_for(self.sid)
        for message in messages:
            counters.rx_packets += 1
            try:
                self.worker.handle(message, self.listener, self.peer, self.sid, self)
            except Exception:
                self.worker.log.exception("failed on a message from %s", self.peer)
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
        self.worker.streams.discard(self)
        try:
            self.worker.engine.forget_connection(self)
        except Exception:
            self.worker.log.exception("forget_connection failed")
        if self.pool_key is not None and self.worker.pool.get(self.pool_key) is self:
            del self.worker.pool[self.pool_key]

    def expired(self, now: float, idle_timeout: float) -> bool:
        if self.partial_since is not None and now - self.partial_since > PARTIAL_TIMEOUT:
            return True
        return now - self.last_activity > idle_timeout


def open_outbound(worker: Worker, listener: Listener, sid: int, host: str, port: int) -> SipStream:
    """A pooled connection from the listener's address (any local port) to a next hop, usable at once:
    writes are queued until it is connected."""
    key = (listener, host, port)
    stream = SipStream(worker, listener, sid, pool_key=key)
    worker.pool[key] = stream
    task = asyncio.get_running_loop().create_task(_connect(worker, stream, host, port))
    worker.connecting.add(task)
    task.add_done_callback(worker.connecting.discard)
    return stream


async def _connect(worker: Worker, stream: SipStream, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    try:
        await loop.create_connection(
            lambda: stream, host=host, port=port, local_addr=(stream.listener.host, 0)
        )
    except OSError as exc:
        stream.closed = True
        if worker.pool.get(stream.pool_key) is stream:
            del worker.pool[stream.pool_key]
        worker.counters_for(stream.sid).drop("tcp_connect_failed")
        worker.log.info("tcp connect to %s:%s from %s failed: %s", host, port, stream.listener.host, exc)
