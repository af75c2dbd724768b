"""WebSocket in a worker (RFC 7118, SIP over WebSocket): the layer that turns a stream connection into one SIP
message per WebSocket message, and the transport serving `ws` and `wss` sockets (`wss`: the same over the TLS
layer of tls.py).

The codec is sipproxy.sip.websocket (pure); this layer only strings it along a connection: the upgrade request
is answered (`101` with `Sec-WebSocket-Protocol: sip`) or refused (400/426, then closed; counted as
`ws_<reason>`), then frames are decoded (pings answered, a close echoed and the connection closed, a protocol
violation answered with its close code and counted as `ws_<reason>`), and each SIP message sent back is one
text frame (binary when it is not UTF-8). An idle WebSocket peer is pinged at half the idle timeout; a browser
answers by itself, so a live client is never cut off for being quiet. The proxy never opens WebSocket
connections: its WebSocket peers are browsers, which only connect."""

from __future__ import annotations

import asyncio
import socket

from sipproxy.sip.listeners import Listener
from sipproxy.sip.websocket import (
    CLOSE,
    MESSAGE,
    OP_PING,
    REPLY,
    FrameDecoder,
    HandshakeError,
    HandshakeParser,
    WsFramingError,
    encode_frame,
    encode_message,
)
from sipproxy.worker.tcp import SipStream, StreamRefused, TcpTransport
from sipproxy.worker.tls import TlsContexts
from sipproxy.worker.transport import TransportHost

MAX_MESSAGE = 65536  # as the TCP framer's limit


class WsCodec:
    """RFC 7118 over one connection: the upgrade, then one SIP message per WebSocket message."""

    __slots__ = ("_frames", "_handshake")

    def __init__(self) -> None:
        self._handshake: HandshakeParser | None = HandshakeParser()
        self._frames: FrameDecoder | None = None

    @property
    def partial(self) -> bool:
        if self._frames is None:
            return True  # the upgrade has not come (whole) yet
        return self._frames.partial

    def receive(self, data: bytes) -> tuple[list[bytes], bytes, bool]:
        answer = b""
        if self._frames is None:
            assert self._handshake is not None
            try:
                handshake = self._handshake.feed(data)
            except HandshakeError as exc:
                raise StreamRefused("ws_" + exc.reason, exc.response) from None
            if handshake is None:
                return [], b"", False
            self._handshake = None
            self._frames = FrameDecoder(MAX_MESSAGE)
            answer = handshake.response
            data = handshake.rest
            if not data:
                return [], answer, False
        try:
            events = self._frames.feed(data)
        except WsFramingError as exc:
            raise StreamRefused("ws_" + exc.reason, answer + exc.close_frame) from None
        messages: list[bytes] = []
        closing = False
        for event in events:
            if event.kind == MESSAGE:
                messages.append(event.data)
            elif event.kind in (REPLY, CLOSE):
                answer += event.data
                closing = closing or event.kind == CLOSE
        return messages, answer, closing

    def encode(self, message: bytes) -> bytes:
        return encode_message(message)

    def keepalive(self) -> bytes:
        return encode_frame(OP_PING, b"") if self._frames is not None else b""


class WsTransport:
    """Serves `ws` sockets, or `wss` ones (`secure`) with a TLS layer from the current domains."""

    def __init__(self, host: TransportHost, tcp: TcpTransport, domains: TlsContexts, secure: bool) -> None:
        self.host = host
        self.tcp = tcp
        self.domains = domains
        self.secure = secure

    async def serve(self, sock: socket.socket, listener: Listener, sid: int) -> asyncio.AbstractServer:
        tcp = self.tcp
        securing = self.domains.server_session if self.secure else None
        return await tcp.serve_streams(
            sock, lambda: SipStream(tcp, listener, sid, securing=securing, messages=WsCodec())
        )
