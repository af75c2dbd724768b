"""The supervisor: owns config, database, slots, bound sockets, the MI server and the workers.

Workers are `python -m sipproxy.worker` processes, each with its own control channel. Every change of the
socket set is sent to every worker followed by a `sync`; the change is applied once each worker has
acknowledged that sync (or died: a replacement starts from the full current set)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sipproxy.binding import bind_socket
from sipproxy.config import Config
from sipproxy.control import Channel, ChannelClosed, make_pair
from sipproxy.db.reader import Row, make_engine, read_rows
from sipproxy.metrics import SocketCounters, sum_counters
from sipproxy.reload_diff import diff_sockets
from sipproxy.slots import Slots
from sipproxy.socketspec import RowError, SocketSpec, parse_row

log = logging.getLogger("sipproxy.supervisor")

SYNC_TIMEOUT = 60.0
STATS_TIMEOUT = 3.0
UNSUPPORTED = "transport not supported yet"


class ReloadError(Exception):
    """The table could not be read: nothing was changed."""


@dataclass
class Entry:
    """A socket the proxy knows of: listening, or failed with a reason."""

    sid: int
    kind: str  # "static" | "dynamic"
    spec: SocketSpec | None
    row: Row | None = None
    slot: int | None = None
    state: str = "listening"
    error: str | None = None
    sock: Any = None  # the supervisor's copy of the bound socket

    @property
    def label(self) -> str:
        if self.spec is not None:
            return self.spec.socket_str
        return (self.row.socket if self.row and self.row.socket else "") or "?"


@dataclass
class WorkerHandle:
    name: str
    kind: str  # "udp" (a static socket's own worker) | "udp_pool" | "tcp"
    static_sid: int | None = None
    proc: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    alive: bool = False
    waiters: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    last_stats: dict[str, SocketCounters] = field(default_factory=dict)  # by socket label
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    started: float = 0.0

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


def listener_wire(spec: SocketSpec) -> dict[str, Any]:
    return {
        "proto": spec.proto,
        "host": spec.host,
        "port": spec.port,
        "advertised_host": spec.advertised_host,
        "advertised_port": spec.advertised_port if spec.advertised_host else None,
        "tag": spec.tag,
    }


@dataclass
class ReloadResult:
    added: list[Entry]
    removed: list[Entry]
    kept: list[Entry]
    failed: list[Entry]


def parse_rows(rows: Iterable[Row]) -> list[tuple[Row, SocketSpec | RowError]]:
    out: list[tuple[Row, SocketSpec | RowError]] = []
    for row in rows:
        try:
            out.append((row, parse_row(row.socket, row.advertised, row.tag, row.flags, row.tos)))
        except RowError as exc:
            out.append((row, exc))
    return out


class Supervisor:
    def __init__(self, config: Config, log_level: str = "info") -> None:
        self.config = config
        self.log_level = log_level
        self.started_at = time.time()
        self.entries: dict[int, Entry] = {}  # listening sockets, static and dynamic
        self.failed: list[Entry] = []  # dynamic rows that failed at the last reload
        self.workers: list[WorkerHandle] = []
        self.slots = Slots(config.sockets_mgm.max_sockets if config.sockets_mgm else 1)
        self.lock = asyncio.Lock()
        self.ready = False
        self.stopping = False
        self.reloads = 0
        self.reload_failures = 0
        self.reload_seconds = 0.0
        self.worker_restarts = 0
        self.retired: dict[str, SocketCounters] = {}
        self._sids = itertools.count(1)
        self._seqs = itertools.count(1)
        self._db = make_engine(config.sockets_mgm.db_url) if config.sockets_mgm else None
        # Abstract unix socket names are per network namespace, which several proxies may share (host
        # network, where each may even be pid 1 of its container): make them unique.
        self.relay_prefix = f"sipproxy-{os.getpid()}-{secrets.token_hex(4)}"

    # --- start-up and shutdown ----------------------------------------------------------------------

    def bind_static(self) -> None:
        """Static sockets are bound before any worker starts; a failure stops start-up."""
        for spec in self.config.sockets:
            sock = bind_socket(spec)
            sid = next(self._sids)
            self.entries[sid] = Entry(sid, "static", spec, sock=sock)

    def plan_workers(self) -> None:
        cfg = self.config
        for entry in self.entries.values():
            assert entry.spec is not None
            if entry.spec.layer == "udp":
                n = entry.spec.use_workers or cfg.udp_workers
                for i in range(n):
                    self.workers.append(
                        WorkerHandle(f"udp[{entry.spec.socket_str}]#{i}", "udp", static_sid=entry.sid)
                    )
        if cfg.sockets_mgm is not None:
            for i in range(cfg.sockets_mgm.processes):
                self.workers.append(WorkerHandle(f"udp-pool#{i}", "udp_pool"))
        has_static_tcp = any(e.spec is not None and e.spec.layer == "tcp" for e in self.entries.values())
        if cfg.sockets_mgm is not None or has_static_tcp:
            for i in range(cfg.tcp_workers):
                self.workers.append(WorkerHandle(f"tcp#{i}", "tcp"))

    async def start(self) -> None:
        self.bind_static()
        self.plan_workers()
        await asyncio.gather(*(self.spawn(w) for w in self.workers))
        await self.sync(self.workers)
        if self.config.sockets_mgm is not None:
            try:
                result = await self.reload()
                log.info("start-up load: %d listening, %d failed", len(result.added), len(result.failed))
            except ReloadError as exc:
                log.error("start-up load of the sockets table failed: %s", exc)
        # Commands are applied in order on each channel, so a sync answered by every worker means each one
        # serves every socket: only then is the pod ready (a slow start must not look ready too early).
        while await self.sync(self.workers):
            log.warning("start-up: waiting for every worker to take its sockets before reporting ready")
        self.ready = True

    async def stop(self) -> None:
        self.stopping = True
        self.ready = False
        for w in self.workers:
            if w.channel is not None and w.alive:
                try:
                    await asyncio.wait_for(w.channel.send({"op": "stop"}), 5)
                except (ChannelClosed, TimeoutError):
                    pass
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                await asyncio.wait_for(w.proc.wait(), 10)
            except TimeoutError:
                log.warning("worker %s did not stop, killing it", w.name)
                w.proc.kill()
                await w.proc.wait()
        for w in self.workers:
            for task in w.tasks:
                task.cancel()
            if w.channel is not None:
                w.channel.close()
        for entry in self.entries.values():
            if entry.sock is not None:
                entry.sock.close()
        if self._db is not None:
            await self._db.dispose()

    # --- workers --------------------------------------------------------------------------------------

    async def spawn(self, w: WorkerHandle) -> None:
        parent, child = make_pair()
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sipproxy.worker",
            "--control-fd",
            str(child.fileno()),
            "--name",
            w.name,
            "--log-level",
            self.log_level,
            "--index",
            str(self.workers.index(w)),
            "--relay-prefix",
            self.relay_prefix,
            pass_fds=[child.fileno()],
        )
        child.close()
        w.channel = Channel(parent)
        w.alive = True
        w.started = time.monotonic()
        w.last_stats = {}
        loop = asyncio.get_running_loop()
        w.tasks = [loop.create_task(self._read(w, w.channel)), loop.create_task(self._watch(w, w.proc))]
        await self._send(
            w,
            {
                "op": "init",
                "routes": list(self.config.routes),
                "tcp_idle_timeout": self.config.tcp_idle_timeout,
            },
        )
        for entry in list(self.entries.values()):
            await self._send_add(w, entry)
        log.info("worker %s started, pid %s", w.name, w.pid)

    async def _send(self, w: WorkerHandle, msg: dict[str, Any], fd: int | None = None) -> None:
        if not w.alive or w.channel is None:
            return
        try:
            await w.channel.send(msg, fd)
        except ChannelClosed:
            self._mark_dead(w)

    async def _send_add(self, w: WorkerHandle, entry: Entry) -> None:
        assert entry.spec is not None
        msg = {"op": "add", "sid": entry.sid, "listener": listener_wire(entry.spec), "serve": w.serves(entry)}
        fd = entry.sock.fileno() if w.needs_fd(entry) and entry.sock is not None else None
        await self._send(w, msg, fd)

    def _mark_dead(self, w: WorkerHandle) -> None:
        if not w.alive:
            return
        w.alive = False
        for fut in w.waiters.values():
            if not fut.done():
                fut.set_result({"op": "dead"})
        w.waiters.clear()
        for label, counters in w.last_stats.items():
            self.retired.setdefault(label, SocketCounters()).add(counters)
        w.last_stats = {}

    async def _read(self, w: WorkerHandle, channel: Channel) -> None:
        parts: dict[str, Any] = {}
        try:
            while True:
                try:
                    msg, fd = await channel.recv()
                except ValueError:
                    log.error("worker %s sent an unreadable control message", w.name)
                    continue
                if fd is not None:
                    os.close(fd)
                op = msg.get("op")
                if op == "stats_part":
                    parts.update(msg["counters"])
                elif op in ("ack", "stats"):
                    if op == "stats":
                        parts.update(msg["counters"])
                        w.last_stats = {label: SocketCounters.from_wire(v) for label, v in parts.items()}
                        parts = {}
                    fut = w.waiters.pop(int(msg["seq"]), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif op == "error":
                    log.error("worker %s cannot take socket %s: %s", w.name, msg.get("sid"), msg.get("error"))
        except ChannelClosed:
            pass
        if w.channel is channel:
            self._mark_dead(w)

    async def _watch(self, w: WorkerHandle, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if w.proc is not proc:
            return
        self._mark_dead(w)
        if self.stopping:
            return
        log.error("worker %s (pid %s) died with %s; replacing it", w.name, proc.pid, code)
        self.worker_restarts += 1
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
            await self.sync([w])

    async def _request(self, workers: Iterable[WorkerHandle], op: str, limit: float) -> int:
        """Send `op` to each live worker and wait for their answers; returns how many did not answer."""
        seq = next(self._seqs)
        loop = asyncio.get_running_loop()
        futures = []
        for w in workers:
            if not w.alive:
                continue
            fut: asyncio.Future[dict[str, Any]] = loop.create_future()
            w.waiters[seq] = fut
            futures.append(fut)
            await self._send(w, {"op": op, "seq": seq})
        if not futures:
            return 0
        _done, pending = await asyncio.wait(futures, timeout=limit)
        if pending:
            log.warning("%d worker(s) did not answer %s within %ss", len(pending), op, limit)
        return len(pending)

    async def sync(self, workers: Iterable[WorkerHandle]) -> int:
        return await self._request(workers, "sync", SYNC_TIMEOUT)

    # --- reload ---------------------------------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        mgm = self.config.sockets_mgm
        if mgm is None or self._db is None:
            raise ReloadError("no sockets_mgm database configured")
        async with self.lock:
            t0 = time.monotonic()
            try:
                rows = await read_rows(self._db, mgm.table_name)
            except Exception as exc:
                self.reload_failures += 1
                log.error("cannot read table %s: %s", mgm.table_name, exc)
                raise ReloadError(str(exc)) from exc
            parsed = await asyncio.to_thread(parse_rows, rows)
            result = await self._apply(parsed)
            self.reloads += 1
            self.reload_seconds += time.monotonic() - t0
            return result

    def _new_failed(self, spec: SocketSpec | None, row: Row | None, error: str) -> Entry:
        entry = Entry(next(self._sids), "dynamic", spec, row=row, state="failed", error=error)
        log.warning("socket %s failed: %s", entry.label if spec else (row.socket if row else "?"), error)
        return entry

    async def _apply(self, parsed: list[tuple[Row, SocketSpec | RowError]]) -> ReloadResult:
        failed: list[Entry] = []
        wanted: list[SocketSpec] = []
        rows_by_key: dict[object, Row] = {}
        unsupported_seen: set[object] = set()
        for row, spec in parsed:
            if isinstance(spec, RowError):
                failed.append(self._new_failed(None, row, str(spec)))
            elif not spec.supported:
                if spec.key not in unsupported_seen:
                    unsupported_seen.add(spec.key)
                    failed.append(self._new_failed(spec, row, UNSUPPORTED))
            else:
                rows_by_key.setdefault(spec.key, row)
                wanted.append(spec)
        running = {
            sid: e.spec for sid, e in self.entries.items() if e.kind == "dynamic" and e.spec is not None
        }
        diff = diff_sockets(running, wanted)
        removed = [self.entries.pop(sid) for sid in diff.removed]
        if removed:
            for w in self.workers:
                for entry in removed:
                    await self._send(w, {"op": "remove", "sid": entry.sid})
            await self.sync(self.workers)
            for entry in removed:
                entry.sock.close()
                entry.sock = None
                if entry.slot is not None:
                    self.slots.release(entry.slot)
                entry.state = "removed"
        added: list[Entry] = []
        for spec in diff.added:
            spec_row = rows_by_key.get(spec.key)
            slot = self.slots.allocate()
            if slot is None:
                failed.append(self._new_failed(spec, spec_row, "no free slot"))
                continue
            try:
                sock = bind_socket(spec)
            except OSError as exc:
                self.slots.release(slot)
                failed.append(self._new_failed(spec, spec_row, str(exc)))
                continue
            entry = Entry(next(self._sids), "dynamic", spec, row=spec_row, slot=slot, sock=sock)
            self.entries[entry.sid] = entry
            added.append(entry)
        if added:
            for w in self.workers:
                for entry in added:
                    await self._send_add(w, entry)
            await self.sync(self.workers)
        self.failed = failed
        kept = [self.entries[sid] for sid in diff.kept]
        return ReloadResult(added, removed, kept, failed)

    # --- introspection -------------------------------------------------------------------------------

    def dynamic_entries(self) -> list[Entry]:
        listening = sorted(
            (e for e in self.entries.values() if e.kind == "dynamic"),
            key=lambda e: e.slot if e.slot is not None else -1,
        )
        return listening + self.failed

    def static_entries(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.kind == "static"]

    async def collect_stats(self) -> dict[str, SocketCounters]:
        await self._request(self.workers, "stats", STATS_TIMEOUT)
        snapshots: list[dict[str, SocketCounters]] = [dict(self.retired)]
        for w in self.workers:
            snapshots.append(w.last_stats)
        return sum_counters(snapshots)

    def processes(self) -> list[dict[str, Any]]:
        procs: list[dict[str, Any]] = [
            {"ID": 0, "PID": os.getpid(), "Type": "supervisor", "Name": "supervisor", "Sockets": []},
        ]
        for i, w in enumerate(self.workers, start=1):
            sockets = [e.spec.socket_str for e in self.entries.values() if e.spec and w.serves(e)]
            procs.append({"ID": i, "PID": w.pid, "Type": w.kind, "Name": w.name, "Sockets": sockets})
        return procs
