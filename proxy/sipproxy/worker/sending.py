"""Sending what the engine decided: UDP out of the chosen socket (hostnames resolved through a small cache),
streams over the TCP transport's connections, each counted on its socket."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Any

from sipproxy.sip.engine import Outcome
from sipproxy.sip.listeners import Listener
from sipproxy.worker.counters import WorkerCounters
from sipproxy.worker.listeners import Listeners
from sipproxy.worker.tcp import TcpTransport

RESOLVE_TTL = 60.0
RESOLVE_CACHE_MAX = 50_000


class Sender:
    def __init__(self, listeners: Listeners, counters: WorkerCounters, tcp: TcpTransport) -> None:
        # Every UDP socket of the proxy (served by this worker or not), to send out of.
        self.udp_send: dict[Listener, socket.socket] = {}
        self.tcp = tcp
        # Bound once: dispatch runs per message.
        self._sid_of = listeners.sids.get
        self._counters = counters.by_sid
        self.counters_for = counters.for_sid
        self._resolved: dict[str, tuple[str | None, float]] = {}
        self._resolving: dict[str, list[tuple[bytes, socket.socket, int, int]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def dispatch(self, outcome: Outcome, inbound_sid: int) -> None:
        if outcome.drop_reason is not None:
            self.counters_for(inbound_sid).drop(outcome.drop_reason)
        sid_of = self._sid_of
        for send in outcome.sends:
            sid = sid_of(send.listener)
            if sid is None:
                sid = inbound_sid
            if send.proto == "udp":
                sock = self.udp_send.get(send.listener)
                if sock is None:
                    self.counters_for(sid).drop("no_outbound_socket")
                    continue
                self._send_udp(send.data, sock, send.host, send.port, sid)
            else:
                self._send_stream(send.data, send.listener, send.host, send.port, send.connection, sid)

    def _send_udp(self, data: bytes, sock: socket.socket, host: str, port: int, sid: int) -> None:
        hit = self._resolved.get(host)
        # An IP literal (cached with no expiry) is the common case: skip the general lookup.
        ip = hit[0] if hit is not None and hit[1] == 0.0 else self._resolve_now(host)
        if ip is None:
            waiting = self._resolving.get(host)
            if waiting is None:
                self._resolving[host] = [(data, sock, port, sid)]
                task = asyncio.get_running_loop().create_task(self._resolve_then_send(host))
                self._tasks.add(task)  # keep a reference until done
                task.add_done_callback(self._tasks.discard)
            elif len(waiting) < 100:
                waiting.append((data, sock, port, sid))
            return
        if ip == "":
            self.counters_for(sid).drop("unresolvable_destination")
            return
        try:
            sock.sendto(data, (ip, port))
        except OSError:
            self.counters_for(sid).drop("send_error")
            return
        c = self._counters.get(sid)
        if c is None:
            c = self.counters_for(sid)
        c.fwd_packets += 1
        c.fwd_bytes += len(data)
        if data.startswith(b"INVITE "):
            c.fwd_invites += 1

    def _send_stream(
        self, data: bytes, listener: Listener, host: str, port: int, connection: Any, sid: int
    ) -> None:
        c = self.counters_for(sid)
        if connection is not None:
            try:
                connection.write(data)
            except Exception:
                c.drop("connection_gone")
                return
        else:
            stream = self.tcp.pooled(listener, host, port)
            if stream is None:
                # A name is resolved when connecting (a TLS next hop keeps it for SNI and the name check).
                stream = self.tcp.open_outbound(listener, sid, host, port)
                if stream is None:
                    c.drop("connection_gone")  # WebSocket: only the peer opens connections
                    return
            try:
                stream.write(data)
            except ConnectionError:
                c.drop("connection_gone")
                return
        c.fwd_packets += 1
        c.fwd_bytes += len(data)
        if data.startswith(b"INVITE "):
            c.fwd_invites += 1

    def _resolve_now(self, host: str) -> str | None:
        """The address for host: itself when a literal, "" when known unresolvable, None when unknown."""
        hit = self._resolved.get(host)
        if hit is not None and (hit[1] == 0.0 or hit[1] > time.monotonic()):
            return hit[0] if hit[0] is not None else ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None
        if len(self._resolved) > RESOLVE_CACHE_MAX:  # many peers over time: start afresh, never grow
            self._resolved.clear()
        self._resolved[host] = (host, 0.0)
        return host

    async def _resolve_then_send(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        ip: str | None
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
            ip = str(infos[0][4][0]) if infos else None
        except OSError:
            ip = None
        self._resolved[host] = (ip, time.monotonic() + RESOLVE_TTL)
        for data, sock, port, sid in self._resolving.pop(host, []):
            self._send_udp(data, sock, host, port, sid)
