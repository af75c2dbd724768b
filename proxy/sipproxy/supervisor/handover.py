"""Handing a node's sockets from one proxy to the next (config `handover`), so that a rolling update of the
hostNetwork DaemonSet loses nothing.

The new proxy takes the old proxy's sockets themselves (SCM_RIGHTS over a Unix socket), not sockets of its own
bound beside them: both processes then hold the same open sockets, with one receive queue and one accept
queue each, so when the old proxy closes its descriptors nothing queued in them is lost, and no socket ever
has SO_REUSEPORT (a stranger binding one of our addresses still gets EADDRINUSE, and one of the same uid
cannot join a reuseport group and take part of the traffic). docs/reliability.md has the measurements behind
the choice.

The exchange, over `\\0sipsockets-handover/<name>` (an abstract Unix socket: per network namespace, so every
hostNetwork pod of a node reaches it; each side checks the other runs as its own uid):

1. The old proxy listens there. The new one connects at start-up; the old one, if it has no successor yet,
   sends every listening socket it has (SIP sockets by what they bind, its MI and metrics listeners by their
   configured addresses, and the handover listener itself), then `offered`. From then on the old proxy reports
   itself not ready: the kubelet's probes of the new pod reach the old one's metrics port until step 3.
2. The new proxy starts with them: every static socket and table row whose bind key matches is served by the
   received socket, everything else bound as usual; received sockets nothing matched are closed.
3. Once every worker serves every socket, the new proxy sends `release`: the old one stops its MI and metrics
   listeners and answers `released`; the new one serves the MI and metrics on the received listeners (queued
   connections included), reports ready, and accepts successors on the handover listener.
4. The old proxy keeps serving SIP until it is stopped (the DaemonSet deletes it once the new pod is Ready);
   its workers' copies close, the sockets live on in the new proxy. If the new proxy dies first (the
   connection closes), the old one takes its MI and metrics ports back and is ready again.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sipproxy.shared.socketspec import SocketSpec
from sipproxy.supervisor.binding import BindKey, bind_key, set_tos

log = logging.getLogger("sipproxy.handover")

PREFIX = "sipsockets-handover/"
# sun_path holds 108 bytes; the leading NUL of an abstract name is one of them (there is no terminator).
MAX_NAME = 107 - len(PREFIX)
MAX_MESSAGE = 4096
OFFER_TIMEOUT = 30.0
RELEASE_TIMEOUT = 30.0
_CRED = struct.Struct("3i")
_FD = array.array("i")

SIP, MI, METRICS, HANDOVER = "sip", "mi", "metrics", "handover"


class HandoverError(Exception):
    """The exchange broke (a malformed or unexpected message, a timeout)."""


def address(name: str) -> str:
    """The abstract Unix socket address of a fleet's handover listener."""
    if not name or len(name.encode()) > MAX_NAME or "\0" in name:
        raise ValueError(f"handover name must be 1-{MAX_NAME} bytes without NUL: {name!r}")
    return "\0" + PREFIX + name


# --- messages (pure) ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Offered:
    """One socket of an offer: a SIP socket by what it binds, or a listener of the MI, the metrics or the
    handover by its role and configured address."""

    role: str
    key: BindKey | None = None
    listen: tuple[str, int] | None = None


def encode_offered(item: Offered) -> bytes:
    body: dict[str, Any] = {"op": "socket", "role": item.role}
    if item.key is not None:
        body["key"] = list(item.key)
    if item.listen is not None:
        body["listen"] = list(item.listen)
    return json.dumps(body, separators=(",", ":")).encode()


def encode_op(op: str, **fields: Any) -> bytes:
    return json.dumps({"op": op, **fields}, separators=(",", ":")).encode()


def decode(data: bytes) -> tuple[str, Offered | None, dict[str, Any]]:
    """(op, the socket described for `socket`, the whole body); raises HandoverError when malformed."""
    try:
        body = json.loads(data)
        op = body["op"]
        if not isinstance(op, str):
            raise TypeError("op")
        if op != "socket":
            return op, None, body
        role = body["role"]
        if role == SIP:
            layer, host, port, reuse = body["key"]
            if layer not in ("udp", "tcp") or not isinstance(host, str) or not isinstance(port, int):
                raise ValueError(f"bad key {body['key']!r}")
            return op, Offered(SIP, key=BindKey(layer, host, port, bool(reuse))), body
        if role in (MI, METRICS):
            host, port = body["listen"]
            if not isinstance(host, str) or not isinstance(port, int):
                raise ValueError(f"bad listen {body['listen']!r}")
            return op, Offered(role, listen=(host, port)), body
        if role == HANDOVER:
            return op, Offered(HANDOVER), body
        raise ValueError(f"unknown role {role!r}")
    except (ValueError, TypeError, KeyError) as exc:
        raise HandoverError(f"malformed handover message {data[:200]!r}: {exc}") from None


def refusal(peer_uid: int, own_uid: int) -> str | None:
    """Why a peer may not take part in a handover (None: it may). Only a process of our own uid may: it could
    join an SO_REUSEPORT group of ours too, and root can take any socket anyway."""
    if peer_uid != own_uid:
        return f"it runs as uid {peer_uid}, not {own_uid} as this proxy does"
    return None


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, as the kernel recorded it."""
    pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return pid, uid, gid


# --- one connection ----------------------------------------------------------------------------------------


class Connection:
    """A SOCK_SEQPACKET connection: one message per packet, at most one descriptor attached."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self.pid, self.uid, _gid = peer_credentials(sock)

    async def send(self, data: bytes, fd: int | None = None) -> None:
        while True:
            try:
                if fd is None:
                    self.sock.send(data)
                else:
                    socket.send_fds(self.sock, [data], [fd])
                return
            except BlockingIOError:
                await self._wait(writable=True)

    async def recv(self) -> tuple[bytes, int | None]:
        """The next message (b"" when the peer closed) and its descriptor."""
        while True:
            try:
                data, fds = _recv_cloexec(self.sock)
            except BlockingIOError:
                await self._wait(writable=False)
                continue
            except ConnectionResetError:
                return b"", None
            for extra in fds[1:]:
                os.close(extra)
            return data, (fds[0] if fds else None)

    async def _wait(self, writable: bool) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        fileno = self.sock.fileno()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        add, remove = (
            (self._loop.add_writer, self._loop.remove_writer)
            if writable
            else (self._loop.add_reader, self._loop.remove_reader)
        )
        add(fileno, ready)
        try:
            await fut
        finally:
            remove(fileno)

    def close(self) -> None:
        self.sock.close()


def _recv_cloexec(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and the descriptors attached, close-on-exec from the start: the workers the supervisor
    starts must not inherit them (uvloop's subprocesses do not close inherited descriptors, and a socket
    the supervisor closes later would stay bound in them). socket.recv_fds ignores its flags in 3.11."""
    data, ancillary, _flags, _addr = sock.recvmsg(
        MAX_MESSAGE, socket.CMSG_SPACE(4 * _FD.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


# --- the new proxy's side ----------------------------------------------------------------------------------


@dataclass
class Predecessor:
    """The older proxy of the fleet on this node, and the sockets it handed over (until taken)."""

    conn: Connection
    sockets: dict[BindKey, socket.socket] = field(default_factory=dict)
    listeners: dict[str, tuple[tuple[str, int], list[socket.socket]]] = field(default_factory=dict)
    handover: socket.socket | None = None
    released: bool = False

    @property
    def pid(self) -> int:
        return self.conn.pid

    def take(self, spec: SocketSpec) -> socket.socket | None:
        """The predecessor's socket bound as `spec` binds (ToS set as `spec` says), or None."""
        sock = self.sockets.pop(bind_key(spec), None)
        if sock is not None:
            set_tos(sock, spec)
        return sock

    def take_listeners(self, role: str, listen: tuple[str, int]) -> list[socket.socket]:
        """The predecessor's MI or metrics listeners when they were configured at the same address."""
        got = self.listeners.get(role)
        if got is None or got[0] != listen:
            return []
        del self.listeners[role]
        return got[1]

    def close_unused_sockets(self) -> list[BindKey]:
        """Close the SIP sockets nothing took (rows the table no longer has): the predecessor's copies serve
        them until it stops."""
        unused = list(self.sockets)
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        return unused

    def close_unused_listeners(self) -> None:
        """Close the MI and metrics listeners nothing took (configured at other addresses now)."""
        for _listen, socks in self.listeners.values():
            for sock in socks:
                sock.close()
        self.listeners.clear()

    async def release(self) -> None:
        """Ask the predecessor to let go of its MI and metrics listeners; returns once it has, or has gone
        (or after RELEASE_TIMEOUT: a predecessor that does not answer is stuck, and its listeners with it)."""
        try:
            await self.conn.send(encode_op("release"))
            while True:
                data, fd = await asyncio.wait_for(self.conn.recv(), RELEASE_TIMEOUT)
                if fd is not None:
                    os.close(fd)
                if not data:
                    log.info("predecessor pid %d gone before it released its listeners", self.pid)
                    break
                if decode(data)[0] == "released":
                    break
        except (OSError, TimeoutError) as exc:  # gone meanwhile: its listeners closed with it
            log.warning("predecessor pid %d did not release its listeners: %s", self.pid, exc or "timeout")
        self.released = True

    async def until_gone(self) -> None:
        """Returns when the predecessor has stopped (its end of the connection closed)."""
        while True:
            data, fd = await self.conn.recv()
            if fd is not None:
                os.close(fd)
            if not data:
                return

    def close(self) -> None:
        self.close_unused_sockets()
        self.close_unused_listeners()
        if self.handover is not None:
            self.handover.close()
            self.handover = None
        self.conn.close()


def _connect(name: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(address(name))
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        return None
    except BaseException:
        sock.close()
        raise
    return sock


async def find_predecessor(name: str) -> Predecessor | None:
    """The proxy of our fleet serving this node, with everything it handed over; None when there is none (or
    it refused us: it has a successor already, or is stopping), then everything is bound as usual."""
    sock = _connect(name)
    if sock is None:
        log.info("handover %s: no older proxy of this fleet on this node", name)
        return None
    conn = Connection(sock)
    why = refusal(conn.uid, os.getuid())
    if why is not None:
        log.error(
            "handover %s: the process holding the handover socket (pid %d) is not ours: %s; binding as usual",
            name,
            conn.pid,
            why,
        )
        conn.close()
        return None
    pred = Predecessor(conn)
    try:
        await asyncio.wait_for(_receive_offer(pred), OFFER_TIMEOUT)
    except (HandoverError, TimeoutError, OSError) as exc:
        log.warning("handover %s: no handover from pid %d: %s; binding as usual", name, conn.pid, exc)
        pred.close()
        return None
    log.info(
        "handover %s: taking %d sockets over from pid %d (MI and metrics listeners: %s)",
        name,
        len(pred.sockets),
        pred.pid,
        ", ".join(sorted(pred.listeners)) or "none",
    )
    return pred


async def _receive_offer(pred: Predecessor) -> None:
    while True:
        data, fd = await pred.conn.recv()
        if not data:
            if fd is not None:
                os.close(fd)
            raise HandoverError("refused (it has a successor already, or is stopping)")
        try:
            op, item, _body = decode(data)
        except HandoverError:
            if fd is not None:
                os.close(fd)
            raise
        if op == "offered":
            if fd is not None:
                os.close(fd)
            return
        if op != "socket" or item is None or fd is None:
            if fd is not None:
                os.close(fd)
            raise HandoverError(f"unexpected message {data[:200]!r}")
        sock = socket.socket(fileno=fd)
        if item.role == SIP and item.key is not None:
            old = pred.sockets.pop(item.key, None)
            if old is not None:
                old.close()
            pred.sockets[item.key] = sock
        elif item.role in (MI, METRICS) and item.listen is not None:
            _listen, socks = pred.listeners.setdefault(item.role, (item.listen, []))
            socks.append(sock)
        elif item.role == HANDOVER and pred.handover is None:
            pred.handover = sock
        else:
            sock.close()


# --- the old proxy's side ----------------------------------------------------------------------------------


@dataclass
class Holder:
    """What a handover server asks of the proxy it serves."""

    offer: Callable[[], Iterable[tuple[Offered, socket.socket]]]  # every socket to hand over, right now
    release: Callable[[], Awaitable[None]]  # stop the MI and metrics listeners
    reclaim: Callable[[], Awaitable[None]]  # start them again (the successor died)


def bind_handover(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.bind(address(name))
        sock.listen(4)
    except BaseException:
        sock.close()
        raise
    return sock


class HandoverServer:
    """Hands everything to one successor at a time, on the fleet's handover listener."""

    def __init__(self, name: str, listener: socket.socket | None, holder: Holder) -> None:
        """Without a listener (its name could not be bound) it never serves anyone."""
        self.name = name
        self.listener = listener
        if listener is not None:
            listener.setblocking(False)
        self.holder = holder
        self.successor: Connection | None = None  # attached: this proxy is on its way out
        self.released = False
        self.handovers = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def attached(self) -> bool:
        return self.successor is not None

    def start(self) -> None:
        if self.listener is not None:
            self._task = asyncio.get_running_loop().create_task(self._serve(self.listener))

    async def _serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:
                log.error("handover %s: accept failed: %s", self.name, exc)
                await asyncio.sleep(1.0)
                continue
            try:
                await self._serve_one(Connection(sock))
            except Exception:
                log.exception("handover %s: the exchange failed", self.name)
                sock.close()

    async def _serve_one(self, conn: Connection) -> None:
        why = refusal(conn.uid, os.getuid())
        if why is not None:
            log.error("handover %s: refused pid %d: %s", self.name, conn.pid, why)
            conn.close()
            return
        self.successor = conn
        self.released = False
        try:
            count = 0
            for item, sock in self.holder.offer():
                await conn.send(encode_offered(item), sock.fileno())
                count += 1
            await conn.send(encode_op("offered", pid=os.getpid()))
            log.info(
                "handover %s: %d sockets handed to pid %d; not ready from now on", self.name, count, conn.pid
            )
            while True:
                data, fd = await conn.recv()
                if fd is not None:
                    os.close(fd)
                if not data:
                    break
                op = decode(data)[0]
                if op == "release" and not self.released:
                    await self.holder.release()
                    self.released = True
                    self.handovers += 1
                    log.info("handover %s: MI and metrics listeners left to pid %d", self.name, conn.pid)
                    await conn.send(encode_op("released"))
        except OSError as exc:
            log.warning("handover %s: successor pid %d: %s", self.name, conn.pid, exc)
        finally:
            conn.close()
            if self.successor is conn:
                self.successor = None
        if self._stopping:
            return
        # The successor died (a proxy keeps its connection to its predecessor open while it lives).
        log.warning("handover %s: successor pid %d is gone; serving on as before", self.name, conn.pid)
        if self.released:
            self.released = False
            await self.holder.reclaim()

    async def close(self) -> None:
        """Stop serving successors (this proxy stops): the connection closes, a successor sees it end."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.successor is not None:
            self.successor.close()
            self.successor = None
        if self.listener is not None:
            self.listener.close()


def sip_offer(entries: Iterable[tuple[SocketSpec, socket.socket]]) -> list[tuple[Offered, socket.socket]]:
    """The SIP part of an offer: each open socket once, by what it binds."""
    seen: dict[BindKey, socket.socket] = {}
    for spec, sock in entries:
        seen.setdefault(bind_key(spec), sock)
    return [(Offered(SIP, key=key), sock) for key, sock in seen.items()]


def listener_offer(
    listeners: Mapping[str, tuple[tuple[str, int], list[socket.socket]]], handover: socket.socket | None
) -> list[tuple[Offered, socket.socket]]:
    out = [(Offered(role, listen=listen), s) for role, (listen, socks) in listeners.items() for s in socks]
    if handover is not None:
        out.append((Offered(HANDOVER), handover))
    return out
