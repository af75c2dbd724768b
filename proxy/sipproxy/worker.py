"""A worker process: `python -m sipproxy.worker --control-fd N`.

It receives every socket of the proxy over its own control channel (UDP ones to send from, and the ones it
serves), runs the SIP engine on what it reads, and acknowledges each change so that the supervisor knows
when a reload is applied everywhere."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sipproxy.control import Channel, ChannelClosed
from sipproxy.metrics import SocketCounters
from sipproxy.sip.engine import Listener, Outcome, SipEngine
from sipproxy.sip.routing import parse_routes
from sipproxy.socketspec import format_socket
from sipproxy.worker_tcp import SipStream, open_outbound
from sipproxy.worker_udp import UdpServer

RESOLVE_TTL = 60.0
RESOLVE_CACHE_MAX = 50_000
STATS_PART = 500  # sockets per stats packet
# Connection ids carry their owner: (worker index + 1) << CONN_ID_BITS, plus a per-worker counter.
CONN_ID_BITS = 20


class WorkerConnectionIds:
    """Connection ids unique across workers (the engine's `connections`).

    A response to a request that came over TCP may arrive at another process (on a shared UDP socket).
    Its Via names the connection id; the id tells which worker owns the connection, so the message is
    relayed there instead of being answered over a new connection."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._conn_base = (index + 1) << CONN_ID_BITS
        self._conn_count = 0
        self._conns: dict[int, object] = {}
        self._conn_ids: dict[int, int] = {}
        self.relay_to: int | None = None

    def register(self, conn: object) -> int:
        cid = self._conn_ids.get(id(conn))
        if cid is None:
            self._conn_count = self._conn_count % ((1 << CONN_ID_BITS) - 1) + 1
            cid = self._conn_base + self._conn_count
            self._conn_ids[id(conn)] = cid
            self._conns[cid] = conn
        return cid

    def forget(self, conn: object) -> None:
        cid = self._conn_ids.pop(id(conn), None)
        if cid is not None:
            self._conns.pop(cid, None)

    def lookup(self, cid: int) -> object | None:
        conn = self._conns.get(cid)
        if conn is None:
            owner = (cid >> CONN_ID_BITS) - 1
            if owner >= 0 and owner != self.index:
                self.relay_to = owner
        return conn


@dataclass
class WorkerSocket:
    sid: int
    listener: Listener
    sock: socket.socket | None  # our copy of the bound socket (None: metadata only)
    server: UdpServer | asyncio.AbstractServer | None = None
    serve_fd: tuple[int, int] | None = None  # (descriptor, inode) handed to the serving transport


def raise_fd_limit() -> None:
    """Each worker holds every UDP socket (and the TCP pool every listener): allow as many as permitted."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


async def wait_fd_closed(fd: int, inode: int) -> None:
    for attempt in range(400):
        try:
            if os.fstat(fd).st_ino != inode:
                return  # closed, and the number already reused
        except OSError:
            return
        await asyncio.sleep(0 if attempt < 20 else 0.005)
    logging.getLogger("sipproxy.worker").warning("descriptor %d still open after removal", fd)


class Listeners:
    """The engine's ListenerView: every socket of the proxy, as this worker knows them."""

    def __init__(self) -> None:
        self._all: dict[Listener, int] = {}
        self._by_tag: dict[str, Listener] = {}

    def all(self) -> Iterable[Listener]:
        return self._all.keys()

    def by_tag(self, tag: str) -> Listener | None:
        return self._by_tag.get(tag)

    def add(self, listener: Listener, sid: int) -> None:
        self._all[listener] = sid
        if listener.tag and listener.tag not in self._by_tag:
            self._by_tag[listener.tag] = listener

    def remove(self, listener: Listener) -> None:
        self._all.pop(listener, None)
        if listener.tag and self._by_tag.get(listener.tag) == listener:
            del self._by_tag[listener.tag]
            for other in self._all:
                if other.tag == listener.tag:
                    self._by_tag[other.tag] = other
                    break

    def sid_of(self, listener: Listener) -> int | None:
        return self._all.get(listener)


def listener_to_wire(listener: Listener) -> dict[str, Any]:
    return {
        "proto": listener.proto,
        "host": listener.host,
        "port": listener.port,
        "advertised_host": listener.advertised_host,
        "advertised_port": listener.advertised_port,
        "tag": listener.tag,
    }


def listener_from_wire(data: dict[str, Any]) -> Listener:
    return Listener(
        data["proto"],
        data["host"],
        int(data["port"]),
        data.get("advertised_host"),
        data.get("advertised_port"),
        data.get("tag"),
    )


class Worker:
    def __init__(self, channel: Channel, name: str, index: int, relay_prefix: str) -> None:
        self.channel = channel
        self.name = name
        self.index = index
        self.relay_prefix = relay_prefix
        self.log = logging.getLogger(f"sipproxy.worker.{name}")
        self.listeners = Listeners()
        self.connection_ids = WorkerConnectionIds(index)
        self.engine = SipEngine([], self.listeners, connections=self.connection_ids)
        self.relay_sock: socket.socket | None = None
        self.listeners_dirty = False
        self.sockets: dict[int, WorkerSocket] = {}
        self.udp_send: dict[Listener, socket.socket] = {}
        self.counters: dict[int, SocketCounters] = {}
        # Reported by socket label, so that a socket removed and added again continues its series and the
        # report does not grow with every socket ever added.
        self.sid_labels: dict[int, str] = {}
        self.retired: dict[str, SocketCounters] = {}
        self.streams: set[SipStream] = set()
        self.pool: dict[Any, SipStream] = {}
        self.connecting: set[asyncio.Task[None]] = set()
        self.idle_timeout = 120.0
        self._resolved: dict[str, tuple[str | None, float]] = {}
        self._resolving: dict[str, list[tuple[bytes, socket.socket, int, int]]] = {}
        self._stopping = asyncio.Event()

    def counters_for(self, sid: int) -> SocketCounters:
        c = self.counters.get(sid)
        if c is None:
            c = self.counters[sid] = SocketCounters()
        return c

    # --- the hot path -------------------------------------------------------------------------------

    def handle(
        self, data: bytes, listener: Listener, src: tuple[str, int], sid: int, conn: Any = None
    ) -> None:
        """Run the engine on one message and send what it says (or relay it to the connection's owner)."""
        outcome = self.engine.handle(data, listener, src, conn)
        ids = self.connection_ids
        if ids.relay_to is not None:
            owner, ids.relay_to = ids.relay_to, None
            if self.relay(owner, data, listener, src):
                return
        self.dispatch(outcome, sid)

    def relay_address(self, index: int) -> bytes:
        return f"\0{self.relay_prefix}-{index}".encode()

    def relay(self, owner: int, data: bytes, listener: Listener, src: tuple[str, int]) -> bool:
        if self.relay_sock is None:
            return False
        head = json.dumps([listener_to_wire(listener), src[0], src[1]]).encode()
        try:
            self.relay_sock.sendto(head + b"\n" + data, self.relay_address(owner))
        except OSError:
            return False
        return True

    def relayed(self, packet: bytes) -> None:
        head, _, data = packet.partition(b"\n")
        try:
            wire, host, port = json.loads(head)
            listener = listener_from_wire(wire)
        except (ValueError, KeyError, TypeError):
            return
        sid = self.listeners.sid_of(listener)
        if sid is None:
            return
        self.log.debug("relayed message from %s:%s on %s", host, port, listener)
        outcome = self.engine.handle(data, listener, (host, int(port)))
        self.connection_ids.relay_to = None  # never bounce a relayed message on
        self.dispatch(outcome, sid)

    async def open_relay(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.relay_address(self.index))
        sock.setblocking(False)
        self.relay_sock = sock
        worker = self

        class Relay(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                worker.relayed(data)

        await asyncio.get_running_loop().create_datagram_endpoint(
            Relay, sock=socket.socket(fileno=os.dup(sock.fileno()))
        )

    def dispatch(self, outcome: Outcome, inbound_sid: int) -> None:
        if outcome.drop_reason is not None:
            self.counters_for(inbound_sid).drop(outcome.drop_reason)
        sid_of = self.listeners._all.get
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
                self.connecting.add(task)  # keep a reference until done
                task.add_done_callback(self.connecting.discard)
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
        c = self.counters.get(sid)
        if c is None:
            c = self.counters_for(sid)
        c.fwd_packets += 1
        c.fwd_bytes += len(data)

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
            stream = self.pool.get((listener, host, port))
            if stream is None or stream.closed:
                ip = self._resolve_now(host)
                if not ip:
                    c.drop("unresolvable_destination")
                    return
                stream = self.pool.get((listener, ip, port))
                if stream is None or stream.closed:
                    stream = open_outbound(self, listener, sid, ip, port)
            try:
                stream.write(data)
            except ConnectionError:
                c.drop("connection_gone")
                return
        c.fwd_packets += 1
        c.fwd_bytes += len(data)

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

    # --- control -------------------------------------------------------------------------------------

    async def add_socket(self, msg: dict[str, Any], fd: int | None) -> None:
        sid = int(msg["sid"])
        if sid in self.sockets:
            await self.remove_socket(sid)
        listener = listener_from_wire(msg["listener"])
        self.sid_labels[sid] = format_socket(listener.proto, listener.host, listener.port)
        sock = socket.socket(fileno=fd) if fd is not None else None
        entry = WorkerSocket(sid, listener, sock)
        self.sockets[sid] = entry
        self.listeners.add(listener, sid)
        loop = asyncio.get_running_loop()
        if sock is not None and listener.proto == "udp":
            sock.setblocking(False)
            self.udp_send[listener] = sock
            if msg.get("serve"):
                # The transport gets its own descriptor of the same open socket, so that closing either
                # never pulls the other out from under it.
                serve_sock = socket.socket(fileno=os.dup(sock.fileno()))
                entry.serve_fd = (serve_sock.fileno(), os.fstat(serve_sock.fileno()).st_ino)
                _, protocol = await loop.create_datagram_endpoint(
                    lambda: UdpServer(self, listener, sid), sock=serve_sock
                )
                entry.server = protocol
        elif sock is not None and msg.get("serve"):
            serve_sock = socket.socket(fileno=os.dup(sock.fileno()))
            entry.serve_fd = (serve_sock.fileno(), os.fstat(serve_sock.fileno()).st_ino)
            entry.server = await loop.create_server(
                lambda: SipStream(self, listener, sid), sock=serve_sock, backlog=1024
            )
        self.listeners_dirty = True

    async def remove_socket(self, sid: int) -> None:
        entry = self.sockets.pop(sid, None)
        if entry is None:
            return
        counters = self.counters.pop(sid, None)
        if counters is not None:
            self.retired.setdefault(self.sid_labels[sid], SocketCounters()).add(counters)
        self.listeners.remove(entry.listener)
        if entry.sock is not None and self.udp_send.get(entry.listener) is entry.sock:
            del self.udp_send[entry.listener]
        if isinstance(entry.server, UdpServer):
            entry.server.close()
        elif entry.server is not None:
            entry.server.close()  # stops accepting; established connections carry on
        if entry.sock is not None:
            entry.sock.close()
        self.listeners_dirty = True
        if entry.serve_fd is not None:
            # The event loop closes a transport's descriptor a little later; the supervisor may rebind the
            # address as soon as we acknowledge, so wait until it is really closed.
            await wait_fd_closed(*entry.serve_fd)

    def snapshot(self) -> dict[str, list[Any]]:
        by_label: dict[str, SocketCounters] = {}
        for label, c in self.retired.items():
            by_label.setdefault(label, SocketCounters()).add(c)
        for sid, c in self.counters.items():
            by_label.setdefault(self.sid_labels.get(sid, f"socket#{sid}"), SocketCounters()).add(c)
        return {label: c.to_wire() for label, c in by_label.items()}

    async def sweep(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            now = time.monotonic()
            for stream in list(self.streams):
                if stream.expired(now, self.idle_timeout):
                    self.counters_for(stream.sid).drop("tcp_idle_timeout")
                    stream.abort_after_write()

    async def apply(self, msg: dict[str, Any], fd: int | None) -> bool:
        """Apply one control command; False when told to stop."""
        op = msg.get("op")
        if op == "init":
            self.engine = SipEngine(
                parse_routes(msg.get("routes") or []),
                self.listeners,
                record_route=bool(msg.get("record_route", True)),
                connections=self.connection_ids,
            )
            self.idle_timeout = float(msg.get("tcp_idle_timeout", 120.0))
        elif op == "add":
            try:
                await self.add_socket(msg, fd)
            except Exception as exc:
                self.log.exception("cannot take socket %s", msg.get("listener"))
                await self.channel.send({"op": "error", "sid": msg.get("sid"), "error": str(exc)})
        elif op == "remove":
            await self.remove_socket(int(msg["sid"]))
        elif op == "sync":
            # The engine's listener snapshot is rebuilt once per batch of changes, not per socket.
            if self.listeners_dirty:
                self.listeners_dirty = False
                self.engine.listeners_changed()
            await self.channel.send({"op": "ack", "seq": msg["seq"]})
        elif op == "stats":
            # In parts, so that any number of sockets fits the control channel's packet size.
            items = list(self.snapshot().items())
            while len(items) > STATS_PART:
                part, items = items[:STATS_PART], items[STATS_PART:]
                await self.channel.send({"op": "stats_part", "counters": dict(part)})
            await self.channel.send({"op": "stats", "seq": msg["seq"], "counters": dict(items)})
        elif op == "stop":
            return False
        elif fd is not None:
            os.close(fd)
        return True

    async def run(self) -> None:
        sweeper = asyncio.get_running_loop().create_task(self.sweep())
        try:
            await self.open_relay()
        except OSError as exc:
            self.log.warning("no relay socket (TCP responses via other workers disabled): %s", exc)
        try:
            while True:
                msg, fd = await self.channel.recv()
                try:
                    if not await self.apply(msg, fd):
                        break
                except ChannelClosed:
                    raise
                except Exception:
                    # One bad command must not take the worker (and every socket it serves) down.
                    self.log.exception("control command %s failed", msg.get("op"))
        except ChannelClosed:
            self.log.info("supervisor gone, exiting")
        finally:
            sweeper.cancel()
            await self.shutdown()

    async def shutdown(self) -> None:
        for sid in list(self.sockets):
            await self.remove_socket(sid)
        for stream in list(self.streams):
            stream.abort_after_write()
        await asyncio.sleep(0)


async def amain(control_fd: int, name: str, index: int, relay_prefix: str) -> None:
    sock = socket.socket(fileno=control_fd)
    channel = Channel(sock)
    worker = Worker(channel, name, index, relay_prefix)
    loop = asyncio.get_running_loop()
    task = loop.create_task(worker.run())
    # SIGTERM to the whole group (e.g. a terminal's ^C or a kill of the group): stop like on "stop".
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        await worker.shutdown()
    channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sipproxy-worker")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--name", default="worker")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--relay-prefix", default=f"sipproxy-{os.getppid()}")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s {args.name}[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when workers stop
    raise_fd_limit()
    # Development aid: SIPPROXY_PROFILE_DIR=/dir writes a cProfile file per worker when it stops.
    profile_dir = os.environ.get("SIPPROXY_PROFILE_DIR")
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        import uvloop

        uvloop.run(amain(args.control_fd, args.name, args.index, args.relay_prefix))
    except ImportError:
        asyncio.run(amain(args.control_fd, args.name, args.index, args.relay_prefix))
    if profiler is not None and profile_dir:
        profiler.disable()
        profiler.dump_stats(os.path.join(profile_dir, f"worker-{args.index}-{os.getpid()}.prof"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
