"""The worker's main loop: the control commands of its channel, and the one call its transports make per
message (`Worker.deliver`: engine, then send or relay).

It receives every socket of the proxy over its own control channel (UDP ones to send from, and the ones it
serves), and acknowledges each batch of changes so that the supervisor knows when a reload is applied
everywhere (`sipproxy.shared.control`)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from typing import assert_never

from sipproxy.shared.channel import Channel, ChannelClosed, read_memory_file
from sipproxy.shared.control import (
    STATS_PART,
    Ack,
    Add,
    Command,
    Error,
    Init,
    ProtocolError,
    Remove,
    Stats,
    StatsPart,
    StatsReply,
    Stop,
    Sync,
    TlsDomains,
    Update,
    encode,
    read_tls_domains_document,
)
from sipproxy.shared.socketspec import format_socket
from sipproxy.sip.engine import SipEngine
from sipproxy.sip.listeners import Listener
from sipproxy.sip.routing import parse_routes
from sipproxy.worker.connection_ids import WorkerConnectionIds
from sipproxy.worker.counters import WorkerCounters
from sipproxy.worker.listeners import Listeners
from sipproxy.worker.relay import Relay
from sipproxy.worker.sending import Sender
from sipproxy.worker.tcp import TcpTransport
from sipproxy.worker.tls import TlsContexts, TlsTransport
from sipproxy.worker.transport import Serving, Transport, TransportHost
from sipproxy.worker.udp import PooledUdpSocket, UdpTransport
from sipproxy.worker.udp_loop import PoolSelector
from sipproxy.worker.ws import WsTransport


@dataclass
class WorkerSocket:
    sid: int
    listener: Listener
    sock: socket.socket | None  # our copy of the bound socket (None: metadata only)
    server: Serving | None = None
    serve_fd: tuple[int, int] | None = None  # (descriptor, inode) handed to the serving transport


async def wait_fd_closed(fd: int, inode: int) -> None:
    for attempt in range(400):
        try:
            if os.fstat(fd).st_ino != inode:
                return  # closed, and the number already reused
        except OSError:
            return
        await asyncio.sleep(0 if attempt < 20 else 0.005)
    logging.getLogger("sipproxy.worker").warning("descriptor %d still open after removal", fd)


class Worker:
    def __init__(
        self,
        channel: Channel[Command],
        name: str,
        index: int,
        relay_prefix: str,
        selector: PoolSelector | None = None,
    ) -> None:
        self.channel = channel
        self.name = name
        self.index = index
        self.log = logging.getLogger(f"sipproxy.worker.{name}")
        self.listeners = Listeners()
        self.connection_ids = WorkerConnectionIds(index)
        self.engine = SipEngine([], self.listeners, connections=self.connection_ids)
        self.counters = WorkerCounters()
        host = TransportHost(
            deliver=self.deliver,
            counters_for=self.counters.for_sid,
            register_connection=self.connection_ids.register,
            forget_connection=self.connection_ids.forget,
            log=self.log,
        )
        self.tcp = TcpTransport(host)
        self.tls = TlsContexts(self.log)
        self.udp = UdpTransport(host, selector)
        # The transport serving each protocol; the sockets of any other are only sent from.
        self.transports: dict[str, Transport] = {
            "udp": self.udp,
            "tcp": self.tcp,
            "tls": TlsTransport(host, self.tcp, self.tls),
            "ws": WsTransport(host, self.tcp, self.tls, secure=False),
            "wss": WsTransport(host, self.tcp, self.tls, secure=True),
        }
        self.sender = Sender(self.listeners, self.counters, self.tcp)
        self.dispatch = self.sender.dispatch  # bound once: called per message
        self.relay = Relay(relay_prefix, index, self.relayed, self.log)
        self.sockets: dict[int, WorkerSocket] = {}
        self._owed: list[Error] = []  # replies of commands applied at once that could not be sent then

    # --- the hot path -------------------------------------------------------------------------------

    def deliver(
        self, data: bytes, listener: Listener, src: tuple[str, int], sid: int, conn: object | None = None
    ) -> None:
        """Run the engine on one message and send what it says (or relay it to the connection's owner)."""
        outcome = self.engine.handle(data, listener, src, conn)
        ids = self.connection_ids
        if ids.relay_to is not None:
            owner, ids.relay_to = ids.relay_to, None
            if self.relay.send(owner, data, listener, src):
                return
        self.dispatch(outcome, sid)

    def relayed(self, data: bytes, listener: Listener, src: tuple[str, int]) -> None:
        """A message another worker relayed here: the connection it must go out on is ours."""
        sid = self.listeners.sid_of(listener)
        if sid is None:
            return
        self.log.debug("relayed message from %s:%s on %s", src[0], src[1], listener)
        outcome = self.engine.handle(data, listener, src)
        self.connection_ids.relay_to = None  # never bounce a relayed message on
        self.dispatch(outcome, sid)

    # --- control -------------------------------------------------------------------------------------

    async def add_socket(self, cmd: Add, fd: int | None) -> None:
        if cmd.sid in self.sockets:
            await self.remove_socket(cmd.sid)
        entry = self._take(cmd, fd)
        if entry.sock is not None and cmd.serve:
            await self._serve(entry, entry.sock)

    def _take(self, cmd: Add, fd: int | None) -> WorkerSocket:
        """All of an added socket but serving it: known to the engine, and sent from."""
        sid, listener = cmd.sid, cmd.listener
        self.counters.name(sid, format_socket(listener.proto, listener.host, listener.port))
        sock = socket.socket(fileno=fd) if fd is not None else None
        entry = WorkerSocket(sid, listener, sock)
        self.sockets[sid] = entry
        self.listeners.add(listener, sid)
        self.engine.listener_added(listener)
        if sock is not None and listener.proto == "udp":
            sock.setblocking(False)
            self.sender.udp_send[listener] = sock
        return entry

    def _serving_copy(self, entry: WorkerSocket, sock: socket.socket) -> socket.socket:
        # The transport gets its own descriptor of the same open socket, so that closing either never pulls
        # the other out from under it.
        serve_sock = socket.socket(fileno=os.dup(sock.fileno()))
        entry.serve_fd = (serve_sock.fileno(), os.fstat(serve_sock.fileno()).st_ino)
        return serve_sock

    async def _serve(self, entry: WorkerSocket, sock: socket.socket) -> None:
        transport = self.transports.get(entry.listener.proto)
        if transport is None:
            raise ValueError(f"no {entry.listener.proto} transport in this worker")
        entry.server = await transport.serve(self._serving_copy(entry, sock), entry.listener, entry.sid)

    def _add_now(self, cmd: Add, fd: int | None) -> bool:
        """An Add that needs no waiting (not served here, or a UDP socket served through the pool's selector),
        applied; False, with nothing done, for any other."""
        served = cmd.serve and fd is not None
        if cmd.sid in self.sockets or (served and (cmd.listener.proto != "udp" or self.udp.selector is None)):
            return False
        try:
            entry = self._take(cmd, fd)
            if served and entry.sock is not None:
                entry.server = self.udp.serve_now(
                    self._serving_copy(entry, entry.sock), entry.listener, cmd.sid
                )
        except Exception as exc:
            self.log.exception("cannot take socket %s", cmd.listener)
            error = Error(cmd.sid, str(exc))
            if self._owed or not self.channel.send_now(encode(error)):
                self._owed.append(error)
        return True

    async def update_socket(self, cmd: Update) -> None:
        """Same open socket, new advertised address, tag or ToS: the listener changes, the socket stays."""
        entry = self.sockets.get(cmd.sid)
        if entry is None:
            return
        old, new = entry.listener, cmd.listener
        self.listeners.remove(old)
        if self.listeners.sid_of(old) is None:
            self.engine.listener_removed(old)
        self.listeners.add(new, cmd.sid)
        self.engine.listener_added(new)
        udp_send = self.sender.udp_send
        if entry.sock is not None and udp_send.get(old) is entry.sock:
            del udp_send[old]
            udp_send[new] = entry.sock
        entry.listener = new
        if entry.server is None or entry.sock is None:
            return
        # A new descriptor of the same socket is served before the old one is let go: what waits in the socket
        # (datagrams, connections not yet accepted) stays there for whichever reads first. Connections already
        # accepted keep the listener they were accepted on.
        old_server, old_fd = entry.server, entry.serve_fd
        await self._serve(entry, entry.sock)
        old_server.close()
        if old_fd is not None:
            await wait_fd_closed(*old_fd)

    async def remove_socket(self, sid: int) -> None:
        entry = self.sockets.pop(sid, None)
        if entry is None:
            return
        self._drop(entry)
        if entry.serve_fd is not None and not isinstance(entry.server, PooledUdpSocket):
            # The event loop closes a transport's descriptor a little later; the supervisor may rebind the
            # address as soon as we acknowledge, so wait until it is really closed. (The pool's selector
            # closes it at once.)
            await wait_fd_closed(*entry.serve_fd)

    def _drop(self, entry: WorkerSocket) -> None:
        self.counters.retire(entry.sid)
        self.listeners.remove(entry.listener)
        if self.listeners.sid_of(entry.listener) is None:
            self.engine.listener_removed(entry.listener)
        udp_send = self.sender.udp_send
        if entry.sock is not None and udp_send.get(entry.listener) is entry.sock:
            del udp_send[entry.listener]
        if entry.server is not None:
            entry.server.close()  # a TCP listener stops accepting; established connections carry on
        if entry.sock is not None:
            entry.sock.close()

    def _remove_now(self, sid: int) -> bool:
        """A Remove that needs no waiting (nothing served, or served through the pool's selector), applied;
        False, with nothing done, for any other."""
        entry = self.sockets.get(sid)
        if entry is not None:
            if entry.server is not None and not isinstance(entry.server, PooledUdpSocket):
                return False
            del self.sockets[sid]
            self._drop(entry)
        return True

    def apply_now(self, cmd: Command, fd: int | None) -> bool:
        """Apply a command that needs no waiting, as most changes of the socket set and every Sync do, at once
        (inside the loop's callback, no task woken); False, with nothing done, for one `apply` must take."""
        match cmd:
            case Add():
                return self._add_now(cmd, fd)
            case Remove() if fd is None:
                return self._remove_now(cmd.sid)
            case Sync() if fd is None and not self._owed:
                return self.channel.send_now(encode(Ack(cmd.seq)))
            case _:
                return False

    async def apply(self, cmd: Command, fd: int | None) -> bool:
        """Apply one control command; False when told to stop."""
        while self._owed:  # replies of commands applied at once that could not be sent then
            await self.channel.send(self._owed.pop(0))
        if fd is not None and not isinstance(cmd, Add | TlsDomains):
            os.close(fd)  # only an Add and TlsDomains carry a descriptor
        match cmd:
            case Init():
                self.engine = SipEngine(
                    parse_routes(list(cmd.routes)),
                    self.listeners,
                    record_route=cmd.record_route,
                    connections=self.connection_ids,
                    flow_key=bytes.fromhex(cmd.flow_key) if cmd.flow_key else None,
                )
                self.tcp.idle_timeout = cmd.tcp_idle_timeout
            case TlsDomains():
                if fd is None:
                    self.log.error("TLS domains generation %d came without its document", cmd.generation)
                else:
                    try:
                        document = read_memory_file(fd, cmd.size)
                    finally:
                        os.close(fd)
                    self.tls.apply(cmd.generation, read_tls_domains_document(document))
            case Add():
                try:
                    await self.add_socket(cmd, fd)
                except Exception as exc:
                    self.log.exception("cannot take socket %s", cmd.listener)
                    await self.channel.send(Error(cmd.sid, str(exc)))
            case Update():
                await self.update_socket(cmd)
            case Remove():
                await self.remove_socket(cmd.sid)
            case Sync():
                await self.channel.send(Ack(cmd.seq))
            case Stats():
                items = list(self.counters.snapshot().items())
                while len(items) > STATS_PART:
                    part, items = items[:STATS_PART], items[STATS_PART:]
                    await self.channel.send(StatsPart(dict(part)))
                await self.channel.send(StatsReply(cmd.seq, dict(items)))
            case Stop():
                return False
            case _:
                assert_never(cmd)
        return True

    async def run(self) -> None:
        sweeper = asyncio.get_running_loop().create_task(self.tcp.sweep())
        try:
            await self.relay.open()
        except OSError as exc:
            self.log.warning("no relay socket (TCP responses via other workers disabled): %s", exc)
        # A reload wakes every worker; what it sends them is applied in the channel's reader callback, with no
        # task to wake and no reader to register again (measured: about half of what a worker spent per
        # reload). A command that must wait is handed to this task, the channel not listened to until it is
        # applied, so that commands are applied in the order sent.
        wake = asyncio.Event()
        handed: list[tuple[Command, int | None] | None] = []  # None: the supervisor is gone

        def on_message(cmd: Command, fd: int | None) -> bool:
            item: tuple[Command, int | None] | None = (cmd, fd)
            try:
                if self.apply_now(cmd, fd):
                    return True
            except ChannelClosed:
                item = None
            except Exception:
                self.log.exception("control command %s failed", cmd.op)
                return True
            handed.append(item)
            wake.set()
            return False

        def on_unreadable(exc: ProtocolError) -> None:
            self.log.error("unreadable control message: %s", exc)

        def on_closed() -> None:
            handed.append(None)
            wake.set()

        try:
            while True:
                self.channel.listen(on_message, on_unreadable, on_closed)
                await wake.wait()
                wake.clear()
                item = handed.pop()
                if item is None:
                    raise ChannelClosed("supervisor gone")
                try:
                    if not await self.apply(*item):
                        return
                except ChannelClosed:
                    raise
                except Exception:
                    # One bad command must not take the worker (and every socket it serves) down.
                    self.log.exception("control command %s failed", item[0].op)
        except ChannelClosed:
            self.log.info("supervisor gone, exiting")
        finally:
            self.channel.stop_listening()
            sweeper.cancel()
            await self.shutdown()

    async def shutdown(self) -> None:
        for sid in list(self.sockets):
            await self.remove_socket(sid)
        self.tcp.close_all()
        await asyncio.sleep(0)
