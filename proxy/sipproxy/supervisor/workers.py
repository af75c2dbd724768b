"""The workers as the supervisor sees them: which sockets each serves, starting and replacing their processes,
and the control requests the supervisor waits on.

Workers are `python -m sipproxy.worker` processes, each with its own control channel. Every change of the
socket set is sent to every worker followed by a `Sync`; the change is applied once each worker has
acknowledged that Sync (or died: a replacement starts from the full current set). The messages are those of
`sipproxy.shared.control`; this module never imports the worker's code."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import assert_never

from sipproxy.shared.channel import Channel, ChannelClosed, make_pair, memory_file
from sipproxy.shared.control import (
    Ack,
    Add,
    Command,
    Error,
    Init,
    ProtocolError,
    Remove,
    Reply,
    Stats,
    StatsPart,
    StatsReply,
    Stop,
    Sync,
    TlsDomains,
    Update,
    decode_reply,
    encode,
)
from sipproxy.shared.counters import SocketCounters
from sipproxy.shared.socketspec import SocketSpec
from sipproxy.shared.udp_pool import PoolFds
from sipproxy.sip.listeners import Listener
from sipproxy.supervisor.entries import Entry
from sipproxy.supervisor.metrics import sum_counters

log = logging.getLogger("sipproxy.supervisor")

SYNC_TIMEOUT = 60.0
STATS_TIMEOUT = 3.0


@dataclass
class WorkerHandle:
    name: str
    kind: str  # "udp" (a static socket's own worker) | "udp_pool" | "tcp"
    static_sid: int | None = None
    proc: asyncio.subprocess.Process | None = None
    channel: Channel[Reply] | None = None
    alive: bool = False
    # Answers awaited, by seq; None when the worker died first.
    waiters: dict[int, asyncio.Future[Reply | None]] = field(default_factory=dict)
    last_stats: dict[str, SocketCounters] = field(default_factory=dict)  # by socket label
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    started: float = 0.0
    # A UDP worker's pool (shared with the other workers of its static socket, or of the dynamic pool) and
    # its place in it: member 0 always serves, the others when the load needs them (worker/udp_loop.py).
    udp_pool: PoolFds | None = None
    pool_member: int = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def serves(self, entry: Entry) -> bool:
        if entry.spec is None or entry.state != "listening":
            return False
        if self.kind == "udp":
            return entry.sid == self.static_sid
        if self.kind == "udp_pool":
            return entry.kind == "dynamic" and entry.spec.layer == "udp"
        return entry.spec.layer == "tcp"

    def needs_fd(self, entry: Entry) -> bool:
        # Every worker may send out of any UDP socket; only TCP workers accept on TCP listeners.
        assert entry.spec is not None
        return entry.spec.layer == "udp" or self.kind == "tcp"


def listener_of(spec: SocketSpec) -> Listener:
    """The socket as the workers' SIP engine sees it (an advertised port only with its host)."""
    return Listener(
        spec.proto,
        spec.host,
        spec.port,
        spec.advertised_host,
        spec.advertised_port if spec.advertised_host else None,
        spec.tag,
    )


class WorkerPool:
    """Every worker process of the proxy. `sockets` gives the current socket set (what a new worker is sent);
    `lock` is the supervisor's, held while a dead worker is replaced so that no reload runs meanwhile."""

    def __init__(
        self,
        init: Init,
        sockets: Callable[[], Iterable[Entry]],
        lock: asyncio.Lock,
        log_level: str,
        on_replaced: Callable[[WorkerHandle], None] = lambda w: None,
    ) -> None:
        self.handles: list[WorkerHandle] = []
        self.init = init
        self.sockets = sockets
        self.on_replaced = on_replaced  # a replacement has applied every current socket
        self.lock = lock
        self.log_level = log_level
        self.stopping = False
        self.restarts = 0
        self.retired: dict[str, SocketCounters] = {}  # counters of workers that died
        self._seqs = itertools.count(1)
        # Abstract unix socket names are per network namespace, which several proxies may share (host
        # network, where each may even be pid 1 of its container): make them unique.
        self.relay_prefix = f"sipproxy-{os.getpid()}-{secrets.token_hex(4)}"
        # The current TLS domains (a TlsDomains message and its memfd), sent to every worker after Init.
        self.tls: tuple[TlsDomains, int] | None = None

    async def start(self) -> None:
        await asyncio.gather(*(self.spawn(w) for w in self.handles))

    async def stop(self) -> None:
        self.stopping = True
        for w in self.handles:
            if w.channel is not None and w.alive:
                try:
                    await asyncio.wait_for(w.channel.send(Stop()), 5)
                except (ChannelClosed, TimeoutError):
                    pass
        for w in self.handles:
            if w.proc is None:
                continue
            try:
                await asyncio.wait_for(w.proc.wait(), 10)
            except TimeoutError:
                log.warning("worker %s did not stop, killing it", w.name)
                w.proc.kill()
                await w.proc.wait()
        pools = {w.udp_pool for w in self.handles if w.udp_pool is not None}
        for w in self.handles:
            for task in w.tasks:
                task.cancel()
            if w.channel is not None:
                w.channel.close()
        for pool in pools:
            pool.close()
        if self.tls is not None:
            os.close(self.tls[1])
            self.tls = None

    # --- socket changes -------------------------------------------------------------------------------

    async def apply(
        self,
        add: Sequence[Entry] = (),
        update: Sequence[Entry] = (),
        remove: Sequence[Entry] = (),
        limit: float = SYNC_TIMEOUT,
    ) -> list[WorkerHandle]:
        """Send a change of the socket set to every worker, each worker's commands followed at once by a
        Sync, so that a worker reads the whole change in one wake-up; returns once each has acknowledged (or
        died), with those that did not answer within `limit` seconds. Every worker is sent its share before
        any answer is awaited: they apply it in parallel."""
        seq = next(self._seqs)
        futures = self._waiters(self.handles, seq)
        # Each message encoded once for every worker (an Add in its two forms: served by the worker or not).
        removes = [encode(Remove(entry.sid)) for entry in remove]
        adds: list[tuple[Entry, dict[bool, bytes]]] = []
        for entry in add:
            assert entry.spec is not None
            listener = listener_of(entry.spec)
            adds.append((entry, {serve: encode(Add(entry.sid, listener, serve)) for serve in (False, True)}))
        updates = [encode(Update(e.sid, listener_of(e.spec))) for e in update if e.spec is not None]
        sync = encode(Sync(seq))
        for w in futures.values():
            for data in removes:
                await self._send(w, data)
            for entry, forms in adds:
                await self._send(w, forms[w.serves(entry)], self._fd_for(w, entry))
            for data in updates:
                await self._send(w, data)
            await self._send(w, sync)
        return await self._late(futures, Sync, limit)

    async def sync(
        self, workers: Iterable[WorkerHandle] | None = None, limit: float = SYNC_TIMEOUT
    ) -> list[WorkerHandle]:
        """Wait until the workers (all by default) have applied every command sent so far; returns those
        that did not answer within `limit` seconds."""
        return await self._request(self.handles if workers is None else workers, Sync, limit)

    async def replace_unresponsive(self, w: WorkerHandle) -> None:
        """Kill a worker that did not answer in time (stopped, or stuck): its watcher starts a replacement
        with every current socket. Returns once the process is gone, so that what it held is released."""
        proc = w.proc
        if proc is None or proc.returncode is not None:
            return
        log.error("worker %s (pid %s) did not answer in time; killing it to replace it", w.name, proc.pid)
        proc.kill()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            log.error("worker %s (pid %s) did not exit after SIGKILL", w.name, proc.pid)

    async def set_tls(self, generation: int, document: bytes) -> None:
        """New TLS domains for every worker (and every worker started later); applied once a following
        `sync` is answered. One memory file serves them all."""
        fd = memory_file(document)
        old, self.tls = self.tls, (TlsDomains(generation, len(document)), fd)
        for w in self.handles:
            await self._send(w, self.tls[0], fd)
        if old is not None:
            os.close(old[1])

    async def collect_stats(self) -> dict[str, SocketCounters]:
        await self._request(self.handles, Stats, STATS_TIMEOUT)
        snapshots: list[dict[str, SocketCounters]] = [dict(self.retired)]
        for w in self.handles:
            snapshots.append(w.last_stats)
        return sum_counters(snapshots)

    # --- processes ------------------------------------------------------------------------------------

    async def spawn(self, w: WorkerHandle) -> None:
        parent, child = make_pair()
        argv = [
            "--control-fd",
            str(child.fileno()),
            "--name",
            w.name,
            "--log-level",
            self.log_level,
            "--index",
            str(self.handles.index(w)),
            "--relay-prefix",
            self.relay_prefix,
        ]
        pass_fds = [child.fileno()]
        if w.udp_pool is not None:
            argv += ["--udp-pool", w.udp_pool.to_arg(), "--pool-member", str(w.pool_member)]
            pass_fds += [w.udp_pool.recruit, w.udp_pool.heartbeat]
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sipproxy.worker", *argv, pass_fds=pass_fds
        )
        child.close()
        w.channel = Channel(parent, decode_reply)
        w.alive = True
        w.started = time.monotonic()
        w.last_stats = {}
        loop = asyncio.get_running_loop()
        self._listen(w, w.channel)
        w.tasks = [loop.create_task(self._watch(w, w.proc))]
        await self._send(w, self.init)
        if self.tls is not None:
            await self._send(w, *self.tls)
        for entry in list(self.sockets()):
            await self._send_add(w, entry)
        log.info("worker %s started, pid %s", w.name, w.pid)

    async def _send(self, w: WorkerHandle, msg: Command | bytes, fd: int | None = None) -> None:
        if not w.alive or w.channel is None:
            return
        try:
            await w.channel.send(msg, fd)
        except ChannelClosed:
            self._mark_dead(w)

    async def _send_add(self, w: WorkerHandle, entry: Entry) -> None:
        assert entry.spec is not None
        await self._send(w, Add(entry.sid, listener_of(entry.spec), w.serves(entry)), self._fd_for(w, entry))

    @staticmethod
    def _fd_for(w: WorkerHandle, entry: Entry) -> int | None:
        return entry.sock.fileno() if w.needs_fd(entry) and entry.sock is not None else None

    def _mark_dead(self, w: WorkerHandle) -> None:
        if not w.alive:
            return
        w.alive = False
        for fut in w.waiters.values():
            if not fut.done():
                fut.set_result(None)
        w.waiters.clear()
        for label, counters in w.last_stats.items():
            self.retired.setdefault(label, SocketCounters()).add(counters)
        w.last_stats = {}

    def _listen(self, w: WorkerHandle, channel: Channel[Reply]) -> None:
        parts: dict[str, SocketCounters] = {}

        def on_message(msg: Reply, fd: int | None) -> bool:
            nonlocal parts
            if fd is not None:
                os.close(fd)
            match msg:
                case StatsPart():
                    parts.update(msg.counters)
                case StatsReply():
                    parts.update(msg.counters)
                    w.last_stats, parts = parts, {}
                    self._answered(w, msg.seq, msg)
                case Ack():
                    self._answered(w, msg.seq, msg)
                case Error():
                    log.error("worker %s cannot take socket %s: %s", w.name, msg.sid, msg.error)
                case _:
                    assert_never(msg)
            return True

        def on_unreadable(exc: ProtocolError) -> None:
            log.error("worker %s sent an unreadable control message: %s", w.name, exc)

        def on_closed() -> None:
            if w.channel is channel:
                self._mark_dead(w)

        channel.listen(on_message, on_unreadable, on_closed)

    @staticmethod
    def _answered(w: WorkerHandle, seq: int, msg: Reply) -> None:
        fut = w.waiters.pop(seq, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def _watch(self, w: WorkerHandle, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if w.proc is not proc:
            return
        self._mark_dead(w)
        if self.stopping:
            return
        log.error("worker %s (pid %s) died with %s; replacing it", w.name, proc.pid, code)
        self.restarts += 1
        asyncio.get_running_loop().create_task(self._replace(w))

    async def _replace(self, w: WorkerHandle) -> None:
        # A worker that dies right after starting (crash loop) is retried at most about once a second.
        delay = 1.0 - (time.monotonic() - w.started)
        if delay > 0:
            await asyncio.sleep(delay)
        async with self.lock:
            if self.stopping:
                return
            if w.channel is not None:
                w.channel.close()
            try:
                await self.spawn(w)
            except Exception:
                log.exception("cannot start a replacement for %s", w.name)
                await asyncio.sleep(1.0)
                asyncio.get_running_loop().create_task(self._replace(w))
                return
            if not await self.sync([w]):
                self.on_replaced(w)

    async def _request(
        self, workers: Iterable[WorkerHandle], request: type[Sync] | type[Stats], limit: float
    ) -> list[WorkerHandle]:
        """Send the request to each live worker and wait for their answers; returns those that did not."""
        seq = next(self._seqs)
        futures = self._waiters(workers, seq)
        for w in futures.values():
            await self._send(w, request(seq))
        return await self._late(futures, request, limit)

    def _waiters(
        self, workers: Iterable[WorkerHandle], seq: int
    ) -> dict[asyncio.Future[Reply | None], WorkerHandle]:
        """A future for each live worker's answer to `seq`, in place before anything is sent: a worker that
        dies while being sent to answers None."""
        loop = asyncio.get_running_loop()
        futures: dict[asyncio.Future[Reply | None], WorkerHandle] = {}
        for w in workers:
            if not w.alive:
                continue
            fut: asyncio.Future[Reply | None] = loop.create_future()
            w.waiters[seq] = fut
            futures[fut] = w
        return futures

    @staticmethod
    async def _late(
        futures: dict[asyncio.Future[Reply | None], WorkerHandle],
        request: type[Sync] | type[Stats],
        limit: float,
    ) -> list[WorkerHandle]:
        if not futures:
            return []
        _done, pending = await asyncio.wait(futures, timeout=limit)
        late = [futures[fut] for fut in pending]
        if late:
            names = ", ".join(w.name for w in late)
            log.warning("worker(s) %s did not answer %s within %ss", names, request.op, limit)
        return late
