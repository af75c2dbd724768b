"""A SIP user agent over WebSocket (RFC 7118) made with aiohttp, written the way browser SIP stacks (JsSIP,
SIP.js) write their messages: one connection for everything, `Sec-WebSocket-Protocol: sip`, text frames, a
Via and Contact host under `.invalid` (a browser has no address anyone can reach), and an ACK or in-dialog
request routed by the route set the 200 gave it."""

from __future__ import annotations

import asyncio
import random
import ssl
from dataclasses import dataclass, field

import aiohttp

TIMEOUT = 30.0
SDP = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"


def headers_of(message: bytes) -> list[tuple[str, str]]:
    """(lowercase name, value) of each header line, in order; several values of one line stay together."""
    head = message.split(b"\r\n\r\n", 1)[0].decode()
    out = []
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        out.append((name.strip().lower(), value.strip()))
    return out


def header(message: bytes, name: str) -> str | None:
    return next((v for n, v in headers_of(message) if n == name), None)


def all_values(message: bytes, name: str) -> list[str]:
    """Every value of a header over all its lines (split at commas outside <>)."""
    values: list[str] = []
    for n, v in headers_of(message):
        if n != name:
            continue
        depth, start = 0, 0
        for i, c in enumerate(v):
            depth += c == "<"
            depth -= c == ">"
            if c == "," and depth == 0:
                values.append(v[start:i].strip())
                start = i + 1
        values.append(v[start:].strip())
    return values


def status_of(message: bytes) -> int | None:
    first = message.split(b"\r\n", 1)[0]
    return int(first.split(b" ", 2)[1]) if first.startswith(b"SIP/2.0 ") else None


def uri_of(value: str) -> str:
    return value[value.index("<") + 1 : value.index(">")] if "<" in value else value.split(";", maxsplit=1)[0]


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    remote_target: str  # the callee's Contact
    route_set: list[str]  # the 200's Record-Route, reversed (RFC 3261 12.1.2)
    from_value: str
    to_value: str


@dataclass
class WsSipClient:
    """One browser-like user agent. `messages` queues what arrives, in order."""

    user: str
    ws: aiohttp.ClientWebSocketResponse
    session: aiohttp.ClientSession
    transport: str  # "WS" or "WSS", as it writes its Via
    host: str = field(default_factory=lambda: f"{random.getrandbits(40):010x}.invalid")
    messages: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, url: str, user: str = "alice", ssl_context: ssl.SSLContext | None = None
    ) -> WsSipClient:
        session = aiohttp.ClientSession()
        timeout = aiohttp.ClientWSTimeout(ws_close=TIMEOUT)
        try:
            ws = await session.ws_connect(url, protocols=["sip"], ssl=ssl_context or False, timeout=timeout)
        except BaseException:
            await session.close()
            raise
        assert ws.protocol == "sip", ws.protocol
        client = cls(user, ws, session, "WSS" if url.startswith("wss:") else "WS")
        client.reader = asyncio.get_running_loop().create_task(client._read())
        return client

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.messages.put_nowait(msg.data.encode())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.messages.put_nowait(msg.data)

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()
        if self.reader is not None:
            self.reader.cancel()

    async def send(self, message: bytes) -> None:
        await self.ws.send_str(message.decode())

    async def receive(self) -> bytes:
        return await asyncio.wait_for(self.messages.get(), TIMEOUT)

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.messages.get(), seconds)
        except TimeoutError:
            return True
        return False

    @property
    def contact(self) -> str:
        return f"<sip:{self.user}@{self.host};transport=ws;ob>"

    def via(self) -> str:
        return f"SIP/2.0/{self.transport} {self.host};branch=z9hG4bK{random.getrandbits(48):x};rport"

    def request(
        self,
        method: str,
        ruri: str,
        call_id: str,
        from_value: str,
        to_value: str,
        cseq: int,
        route_set: list[str] | None = None,
        body: str = "",
    ) -> bytes:
        lines = [f"{method} {ruri} SIP/2.0", f"Via: {self.via()}", "Max-Forwards: 70"]
        if route_set:
            lines.append("Route: " + ", ".join(route_set))
        lines += [f"From: {from_value}", f"To: {to_value}", f"Call-ID: {call_id}", f"CSeq: {cseq} {method}"]
        lines.append(f"Contact: {self.contact}")
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    async def register(self, registrar: str) -> bytes:
        """REGISTER to `registrar` (a SIP URI); the final response."""
        me = f"<sip:{self.user}@{registrar.split(':', 1)[1]}>"
        tag = f"{random.getrandbits(32):x}"
        await self.send(self.request("REGISTER", registrar, f"reg-{tag}", f"{me};tag={tag}", me, 1))
        return await self.final()

    async def final(self) -> bytes:
        while True:
            message = await self.receive()
            status = status_of(message)
            if status is not None and status >= 200:
                return message

    async def invite(self, ruri: str) -> tuple[list[bytes], Dialog]:
        """An INVITE to `ruri`: the responses up to the final one (a 2xx is acknowledged), and its dialog."""
        tag = f"{random.getrandbits(32):x}"
        call_id = f"ws-{random.getrandbits(64):x}"
        from_value = f"<sip:{self.user}@{self.host}>;tag={tag}"
        to_value = f"<{ruri}>"
        await self.send(self.request("INVITE", ruri, call_id, from_value, to_value, 1, body=SDP))
        responses = []
        while True:
            message = await self.receive()
            if status_of(message) is None:
                raise AssertionError(f"a request before the final response: {message!r}")
            responses.append(message)
            if (status_of(message) or 0) >= 200:
                break
        final = responses[-1]
        to_final = header(final, "to") or ""
        dialog = Dialog(
            call_id,
            tag,
            to_final.rsplit("tag=", 1)[-1],
            uri_of(header(final, "contact") or ruri),
            list(reversed(all_values(final, "record-route"))),
            from_value,
            to_final,
        )
        if 200 <= (status_of(final) or 0) < 300:
            await self.send(self.ack(dialog))
        return responses, dialog

    def ack(self, dialog: Dialog) -> bytes:
        d = dialog
        return self.request("ACK", d.remote_target, d.call_id, d.from_value, d.to_value, 1, d.route_set)

    async def answer(self, request: bytes, status: int = 200, phrase: str = "OK") -> None:
        """Answer a request that arrived: its Vias, From, To (tagged), Call-ID and CSeq."""
        lines = [f"SIP/2.0 {status} {phrase}"]
        for name, value in headers_of(request):
            if name in ("via", "v"):
                lines.append(f"Via: {value}")
        to = header(request, "to") or ""
        if "tag=" not in to:
            to += f";tag={random.getrandbits(32):x}"
        lines += [
            f"From: {header(request, 'from')}",
            f"To: {to}",
            f"Call-ID: {header(request, 'call-id')}",
            f"CSeq: {header(request, 'cseq')}",
            "Content-Length: 0",
        ]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
