"""Stream connections in a worker: TCP listeners shared by the TCP pool, one framer per connection, the
outbound connection pool, and the two optional layers TLS (tls.py) and WebSocket (ws.py) add to a stream.

A `SipStream` is one connection, accepted or opened. Bytes from the wire go through its `SecureLayer` when it
has one (TLS: wire bytes in, plaintext out), then through its `MessageLayer` when it has one (WebSocket: the
upgrade, then one SIP message per WebSocket message), else through the SIP stream framer (Content-Length).
Each complete SIP message goes to the engine with the stream as its connection. What the engine sends back
takes the same way down. The layers are made by the tls and ws transports; this module only knows their
interfaces, so that a plain TCP connection pays nothing for them."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Protocol, cast

from sipproxy.sip.framing import FramingError, StreamFramer, error_reply_for_stream
from sipproxy.sip.listeners import Listener
from sipproxy.worker.transport import TransportHost

# A peer that has sent part of a message (or of a TLS or WebSocket handshake) and then nothing for this long
# is cut off (slowloris).
PARTIAL_TIMEOUT = 20.0
# Bytes queued towards a peer that does not read before its connection is dropped.
MAX_WRITE_BUFFER = 4 << 20
LISTEN_BACKLOG = 1024
SWEEP_INTERVAL = 2.0

PoolKey = tuple[Listener, str, int]  # (local socket, destination address or name, port)


class StreamRefused(Exception):
    """A layer refuses the connection: write `reply` (may be empty), count `reason`, close."""

    def __init__(self, reason: str, reply: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


class SecureLayer(Protocol):
    """TLS over the connection (tls.TlsSession)."""

    handshake_done: bool
    peer_closed: bool  # the peer ended TLS in order (close_notify)

    def start(self) -> bytes:
        """What to send as soon as the connection is up (a client's hello; nothing for a server)."""
        ...

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Wire bytes in: (plaintext, wire bytes to send back). Raises StreamRefused."""
        ...

    def check(self) -> str | None:
        """Once the handshake is done: None when the connection may go on, else why it must close."""
        ...

    def send(self, plaintext: bytes) -> bytes:
        """The wire bytes carrying `plaintext`."""
        ...


class MessageLayer(Protocol):
    """SIP messages in another framing than Content-Length (ws.WsCodec)."""

    @property
    def partial(self) -> bool:
        """Waiting for the rest of something (its handshake, a frame)."""
        ...

    def receive(self, data: bytes) -> tuple[list[bytes], bytes, bool]:
        """Plaintext in: (SIP messages, bytes to write back, whether to close after writing them). Raises
        StreamRefused."""
        ...

    def encode(self, message: bytes) -> bytes:
        """The bytes carrying one SIP message."""
        ...

    def keepalive(self) -> bytes:
        """Something to send an idle peer that it must answer (b"": the layer has nothing)."""
        ...


# Makes the TLS layer of a new connection from its local address; a str says why there is none.
Securing = Callable[[tuple[str, int]], "SecureLayer | str"]


class SipStream(asyncio.Protocol):
    """One stream connection, accepted on a listener or opened by us towards a next hop."""

    def __init__(
        self,
        tcp: TcpTransport,
        listener: Listener,
        sid: int,
        pool_key: PoolKey | None = None,
        securing: Securing | None = None,
        messages: MessageLayer | None = None,
    ) -> None:
        self.tcp = tcp
        self.host = tcp.host
        self.listener = listener
        self.sid = sid
        self.pool_key = pool_key
        self.securing = securing
        self.secure: SecureLayer | None = None
        self.messages = messages
        self.framer = StreamFramer() if messages is None else None
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.pending: list[bytes] = []  # SIP messages written before the connection (or TLS) was up
        self.ready = False
        self.closed = False
        now = time.monotonic()
        self.last_activity = now
        self.pinged = False
        # When a half-received message (or handshake) started waiting; a new connection waits for its first.
        self.partial_since: float | None = now if securing is not None or messages is not None else None

    # --- lifecycle -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (peer[0], peer[1])
        self.tcp.streams.add(self)
        if self.securing is not None:
            local = transport.get_extra_info("sockname") or (self.listener.host, self.listener.port)
            secure = self.securing((local[0], local[1]))
            if isinstance(secure, str):
                self.refuse(StreamRefused(secure))
                return
            self.secure = secure
            first = secure.start()
            if first:
                self.transport.write(first)
            return
        self._up()

    def _up(self) -> None:
        """The connection carries SIP now (after the TLS handshake, when there is one)."""
        self.ready = True
        self.host.register_connection(self)
        for data in self.pending:
            self._write_plain(data)
        self.pending.clear()

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

    def refuse(self, refusal: StreamRefused) -> None:
        """Count why the connection ends, write its last words, close."""
        self.host.counters_for(self.sid).drop(refusal.reason)
        if refusal.reply and self.transport is not None:
            self.transport.write(refusal.reply)
        self.abort_after_write()

    # --- reading -------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self.pinged = False
        counters = self.host.counters_for(self.sid)
        counters.rx_bytes += len(data)
        secure = self.secure
        if secure is not None:
            was_done = secure.handshake_done
            try:
                data, answer = secure.receive(data)
            except StreamRefused as refusal:
                self.refuse(refusal)
                return
            if answer and self.transport is not None:
                self.transport.write(answer)
            if secure.handshake_done and not was_done:
                problem = secure.check()
                if problem is not None:
                    self.host.log.info("TLS connection from %s:%s refused: %s", *self.peer, problem)
                    self.refuse(StreamRefused("tls_peer_refused"))
                    return
                if self.messages is None:
                    self.partial_since = None
                self._up()
            if secure.peer_closed:
                if data:
                    self._received(data)
                self.abort_after_write()
                return
            if not data:
                return
        self._received(data)

    def _received(self, data: bytes) -> None:
        if self.messages is not None:
            self._messages_received(data)
        else:
            self._framed_received(data)

    def _framed_received(self, data: bytes) -> None:
        assert self.framer is not None
        counters = self.host.counters_for(self.sid)
        try:
            messages = self.framer.feed(data)
        except FramingError as exc:
            # Messages split off before the broken one were well framed: they are served, then the
            # connection is answered (if possible) and closed.
            self._handle_all(exc.messages)
            counters.rx_packets += 1
            counters.drop(exc.reason)
            reply = error_reply_for_stream(self.framer.pending, exc.reason)
            if reply is not None:
                self._write_plain(reply)
            self.abort_after_write()
            return
        if self.framer.pending:
            if self.partial_since is None:
                self.partial_since = self.last_activity
        else:
            self.partial_since = None
        self._handle_all(messages)

    def _messages_received(self, data: bytes) -> None:
        assert self.messages is not None
        try:
            messages, answer, closing = self.messages.receive(data)
        except StreamRefused as refusal:
            if refusal.reply:
                self._write_wire(refusal.reply)
            self.host.counters_for(self.sid).drop(refusal.reason)
            self.abort_after_write()
            return
        if answer:
            self._write_wire(answer)
        self.partial_since = self.last_activity if self.messages.partial else None
        self._handle_all(messages)
        if closing:
            self.abort_after_write()

    def _handle_all(self, messages: list[bytes]) -> None:
        counters = self.host.counters_for(self.sid)
        for message in messages:
            counters.rx_packets += 1
            try:
                self.host.deliver(message, self.listener, self.peer, self.sid, self)
            except Exception:
                self.host.log.exception("failed on a message from %s", self.peer)
                counters.drop("internal_error")

    # --- writing -------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send one SIP message on this connection (queued until it is up)."""
        self.last_activity = time.monotonic()
        if self.closed:
            raise ConnectionError("connection closed")
        if not self.ready:
            if sum(len(d) for d in self.pending) > MAX_WRITE_BUFFER:
                raise ConnectionError("connection not established and its queue is full")
            self.pending.append(data)
            return
        self._write_plain(data)

    def _write_plain(self, data: bytes) -> None:
        """A SIP message (or our own answer) through the message layer, then down to the wire."""
        if self.messages is not None:
            data = self.messages.encode(data)
        self._write_wire(data)

    def _write_wire(self, data: bytes) -> None:
        """Plaintext bytes of the connection, through TLS when there is TLS."""
        if self.transport is None:
            return
        if self.secure is not None:
            data = self.secure.send(data)
        if self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            # The peer does not read: cut it off rather than buffer without bound.
            self.transport.abort()
            raise ConnectionError("peer not reading")
        self.transport.write(data)

    def abort_after_write(self) -> None:
        if self.transport is not None:
            self.transport.close()  # close() flushes what was written first

    # --- housekeeping --------------------------------------------------------------------------------

    def expired(self, now: float, idle_timeout: float) -> bool:
        if self.partial_since is not None and now - self.partial_since > PARTIAL_TIMEOUT:
            return True
        return now - self.last_activity > idle_timeout

    def keepalive_due(self, now: float, idle_timeout: float) -> bool:
        """Half the idle time passed: a WebSocket peer is pinged (a browser answers by itself), once."""
        return (
            self.ready
            and not self.pinged
            and self.messages is not None
            and now - self.last_activity > idle_timeout / 2
        )

    def ping(self) -> None:
        assert self.messages is not None
        self.pinged = True
        frame = self.messages.keepalive()
        if frame:
            try:
                self._write_wire(frame)
            except ConnectionError:
                pass


# Opens the TLS layer of an outbound connection: (the layer, or why there is none) for (name, ip, port).
OutboundSecuring = Callable[[str, str, int], "SecureLayer | str"]


class TcpTransport:
    """Every stream connection of this worker (TCP, TLS, WS, WSS), accepted on a listener or opened towards
    a next hop, and the pool of the opened ones (per local socket and destination)."""

    def __init__(self, host: TransportHost) -> None:
        self.host = host
        self.streams: set[SipStream] = set()  # every established connection
        self.pool: dict[PoolKey, SipStream] = {}
        self.connecting: set[asyncio.Task[None]] = set()
        self.idle_timeout = 120.0
        # Set by the TLS transport: how an outbound TLS connection gets its layer.
        self.outbound_tls: OutboundSecuring | None = None

    async def serve(self, sock: socket.socket, listener: Listener, sid: int) -> asyncio.AbstractServer:
        return await self.serve_streams(sock, lambda: SipStream(self, listener, sid))

    async def serve_streams(
        self, sock: socket.socket, factory: Callable[[], SipStream]
    ) -> asyncio.AbstractServer:
        return await asyncio.get_running_loop().create_server(factory, sock=sock, backlog=LISTEN_BACKLOG)

    def pooled(self, listener: Listener, host: str, port: int) -> SipStream | None:
        stream = self.pool.get((listener, host, port))
        return None if stream is None or stream.closed else stream

    def open_outbound(self, listener: Listener, sid: int, host: str, port: int) -> SipStream | None:
        """A pooled connection from the listener's address (any local port) to a next hop (an IP, or a name
        resolved when connecting), usable at once: writes are queued until it is up. None for a transport
        the proxy does not open connections of (WebSocket: its peers are browsers, which only connect)."""
        if listener.proto in ("ws", "wss"):
            return None
        key = (listener, host, port)
        stream = SipStream(self, listener, sid, pool_key=key)
        self.pool[key] = stream
        task = asyncio.get_running_loop().create_task(self._connect(stream, host, port))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)
        return stream

    async def _connect(self, stream: SipStream, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        listener = stream.listener
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
            ips = [str(info[4][0]) for info in infos if info[0] == family]
            if not ips:
                raise OSError(f"{host} has no address of the socket's family")
            if listener.proto == "tls":
                if self.outbound_tls is None:
                    self._failed(stream, "tls_no_client_domain", host, port, "no TLS domains loaded")
                    return
                secure = self.outbound_tls(host, ips[0], port)
                if isinstance(secure, str):
                    self._failed(stream, "tls_no_client_domain", host, port, secure)
                    return
                stream.securing = lambda _local: secure
            await loop.create_connection(
                lambda: stream, host=ips[0], port=port, local_addr=(listener.host, 0)
            )
        except OSError as exc:
            self._failed(stream, "tcp_connect_failed", host, port, str(exc))

    def _failed(self, stream: SipStream, reason: str, host: str, port: int, why: str) -> None:
        stream.closed = True
        if stream.pool_key is not None and self.pool.get(stream.pool_key) is stream:
            del self.pool[stream.pool_key]
        self.host.counters_for(stream.sid).drop(reason)
        self.host.log.info(
            "%s connect to %s:%s from %s failed: %s",
            stream.listener.proto,
            host,
            port,
            stream.listener.host,
            why,
        )

    async def sweep(self) -> None:
        """Closes connections idle for `idle_timeout`, or stuck in a partial message; pings idle WebSocket
        peers first. Runs until cancelled."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for stream in list(self.streams):
                if stream.expired(now, self.idle_timeout):
                    self.host.counters_for(stream.sid).drop("tcp_idle_timeout")
                    stream.abort_after_write()
                elif stream.keepalive_due(now, self.idle_timeout):
                    stream.ping()

    def close_all(self) -> None:
        for stream in list(self.streams):
            stream.abort_after_write()
