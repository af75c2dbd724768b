"""The supervisor: owns config, database, slots, bound sockets, the TLS domains and the workers
(`workers.WorkerPool`); the MI server (`mi/`) reads and drives it.

A reload reads the table, binds what is new and tells every worker (removals first, then additions, each batch
confirmed by a Sync that every worker acknowledges: see `sipproxy.shared.control`). A TLS reload reads the
domains (tls.py), sends the new generation to every worker and waits for the same Sync."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from sipproxy.shared.control import Init, tls_domains_document
from sipproxy.shared.counters import SocketCounters
from sipproxy.shared.socketspec import RowError, SocketSpec, parse_row, unreachable_reason
from sipproxy.shared.udp_pool import PoolFds, create_pool_fds
from sipproxy.sip.flowtoken import new_key
from sipproxy.supervisor.binding import bind_socket, set_tos
from sipproxy.supervisor.config import Config
from sipproxy.supervisor.db_reader import Row, make_engine, read_rows
from sipproxy.supervisor.entries import Entry, ReloadResult
from sipproxy.supervisor.reload_diff import diff_sockets
from sipproxy.supervisor.slots import Slots
from sipproxy.supervisor.tls import TlsGeneration, TlsReloadError, build_generation, read_sources
from sipproxy.supervisor.workers import WorkerHandle, WorkerPool

log = logging.getLogger("sipproxy.supervisor")


class ReloadError(Exception):
    """The table could not be read: nothing was changed."""


def parse_rows(
    rows: Iterable[Row], known: dict[Row, SocketSpec | RowError] | None = None
) -> tuple[list[tuple[Row, SocketSpec | RowError]], dict[Row, SocketSpec | RowError]]:
    """Each row parsed, reusing what `known` (the last reload's results) says of identical rows; also the
    results to pass next time (only the rows seen now, so it never grows beyond the table)."""
    known = known or {}
    seen: dict[Row, SocketSpec | RowError] = {}
    out: list[tuple[Row, SocketSpec | RowError]] = []
    for row in rows:
        parsed = seen.get(row) or known.get(row)
        if parsed is None:
            try:
                parsed = parse_row(row.socket, row.advertised, row.tag, row.flags, row.tos)
            except RowError as exc:
                parsed = exc
        seen[row] = parsed
        out.append((row, parsed))
    return out, seen


class Supervisor:
    def __init__(self, config: Config, log_level: str = "info") -> None:
        self.config = config
        self.log_level = log_level
        self.started_at = time.time()
        self.entries: dict[int, Entry] = {}  # listening sockets, static and dynamic
        self.failed: list[Entry] = []  # dynamic rows that failed at the last reload
        self.slots = Slots(config.sockets_mgm.max_sockets if config.sockets_mgm else 1)
        self.lock = asyncio.Lock()
        self.ready = False
        self.reloads = 0
        self.reload_failures = 0
        self.reload_seconds = 0.0
        self._sids = itertools.count(1)
        self._parsed: dict[Row, SocketSpec | RowError] = {}  # the last reload's rows, parsed
        self._db = make_engine(config.sockets_mgm.db_url) if config.sockets_mgm else None
        self.tls = TlsGeneration(0)
        self.tls_reloads = 0
        self.tls_reload_failures = 0
        # The key of the flow tokens naming stream connections: one per proxy run, the same in every worker.
        init = Init(
            routes=tuple(config.routes), tcp_idle_timeout=config.tcp_idle_timeout, flow_key=new_key().hex()
        )
        self.pool = WorkerPool(init, self.entries.values, self.lock, log_level, self._replaced)

    @property
    def workers(self) -> list[WorkerHandle]:
        return self.pool.handles

    @property
    def worker_restarts(self) -> int:
        return self.pool.restarts

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
                fds = _pool_fds(f"udp{entry.sid}", n)
                for i in range(n):
                    self.workers.append(
                        WorkerHandle(
                            f"udp[{entry.spec.socket_str}]#{i}",
                            "udp",
                            static_sid=entry.sid,
                            udp_pool=fds,
                            pool_member=i,
                        )
                    )
        if cfg.sockets_mgm is not None:
            fds = _pool_fds("pool", cfg.sockets_mgm.processes)
            for i in range(cfg.sockets_mgm.processes):
                self.workers.append(WorkerHandle(f"udp-pool#{i}", "udp_pool", udp_pool=fds, pool_member=i))
        has_static_tcp = any(e.spec is not None and e.spec.layer == "tcp" for e in self.entries.values())
        if cfg.sockets_mgm is not None or has_static_tcp:
            for i in range(cfg.tcp_workers):
                self.workers.append(WorkerHandle(f"tcp#{i}", "tcp"))

    async def start(self) -> None:
        self.bind_static()
        self.plan_workers()
        try:
            await self._load_tls()
        except TlsReloadError as exc:
            # The static domains still serve; tls_reload tries the table again.
            log.error("start-up load of the TLS domains failed: %s", exc)
            await self._load_tls(table=False)
        await self.pool.start()
        await self.pool.sync()
        if self.config.sockets_mgm is not None:
            try:
                result = await self.reload()
                log.info("start-up load: %d listening, %d failed", len(result.added), len(result.failed))
            except ReloadError as exc:
                log.error("start-up load of the sockets table failed: %s", exc)
        # Commands are applied in order on each channel, so a sync answered by every worker means each one
        # serves every socket: only then is the pod ready (a slow start must not look ready too early).
        while await self.pool.sync():
            log.warning("start-up: waiting for every worker to take its sockets before reporting ready")
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.pool.stop()
        for entry in self.entries.values():
            if entry.sock is not None:
                entry.sock.close()
        if self._db is not None:
            await self._db.dispose()

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
            parsed, self._parsed = parse_rows(rows, self._parsed)
            result = await self._apply(parsed)
            self.reloads += 1
            self.reload_seconds += time.monotonic() - t0
            return result

    async def _load_tls(self, table: bool = True) -> TlsGeneration:
        """Read the TLS domains, check them, hand them to the pool (sent to every worker, a Sync follows)."""
        static, rows = await read_sources(self.config.tls_mgm, self._db if table else None)
        generation = await asyncio.to_thread(build_generation, self.tls.number + 1, static, rows)
        document = tls_domains_document(generation.domains)
        await self.pool.set_tls(generation.number, document)
        self.tls = generation
        for entry in generation.entries:
            if entry.error is not None:
                log.warning(
                    "TLS domain %s (%s, %s) failed: %s", entry.name, entry.kind, entry.source, entry.error
                )
        log.info("TLS domains generation %d: %d loaded", generation.number, len(generation.domains))
        return generation

    async def tls_reload(self) -> TlsGeneration:
        """Read the domains again; returns once every worker uses them for new connections. Raises
        TlsReloadError (nothing changed) when the table cannot be read."""
        async with self.lock:
            try:
                generation = await self._load_tls()
            except TlsReloadError:
                self.tls_reload_failures += 1
                raise
            await self.pool.sync()
            self.tls_reloads += 1
            return generation

    def _new_failed(self, spec: SocketSpec | None, row: Row | None, error: str) -> Entry:
        entry = Entry(next(self._sids), "dynamic", spec, row=row, state="failed", error=error)
        log.warning("socket %s failed: %s", entry.label if spec else (row.socket if row else "?"), error)
        return entry

    async def _apply(self, parsed: list[tuple[Row, SocketSpec | RowError]]) -> ReloadResult:
        failed: list[Entry] = []
        wanted: list[SocketSpec] = []
        rows_by_key: dict[object, Row] = {}
        unreachable_seen: set[object] = set()
        for row, spec in parsed:
            if isinstance(spec, RowError):
                failed.append(self._new_failed(None, row, str(spec)))
            elif (unreachable := unreachable_reason(spec)) is not None:
                if spec.key not in unreachable_seen:
                    unreachable_seen.add(spec.key)
                    failed.append(self._new_failed(spec, row, f"{unreachable} (the advertised column)"))
            else:
                rows_by_key.setdefault(spec.key, row)
                wanted.append(spec)
        running = {
            sid: e.spec for sid, e in self.entries.items() if e.kind == "dynamic" and e.spec is not None
        }
        diff = diff_sockets(running, wanted)
        removed = [self.entries.pop(sid) for sid in diff.removed]
        ack_timeout = self.config.worker_ack_timeout
        if removed:
            await self.pool.remove(removed)
            # A worker that did not close them in time still holds them: it goes, and its descriptors with it.
            for w in await self.pool.sync(limit=ack_timeout):
                await self.pool.replace_unresponsive(w)
            for entry in removed:
                entry.sock.close()
                entry.sock = None
                if entry.slot is not None:
                    self.slots.release(entry.slot)
                entry.state = "removed"
        updated: list[Entry] = []
        for sid, spec in diff.updated:
            # The same open socket with other advertised address, tag or ToS: nothing is rebound.
            entry = self.entries[sid]
            if entry.spec is not None and spec.tos != entry.spec.tos:
                set_tos(entry.sock, spec)  # shared by every worker's descriptor of it
            entry.spec, entry.row = spec, rows_by_key.get(spec.key)
            updated.append(entry)
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
        if added or updated:
            await self.pool.add(added)
            await self.pool.update(updated)
            for w in await self.pool.sync(limit=ack_timeout):
                reason = (
                    f"worker {w.name} (pid {w.pid}) did not apply the change within {ack_timeout:g} s; "
                    "it is being replaced"
                )
                for entry in added + updated:
                    if w.serves(entry):
                        entry.lagging[w.name] = reason
                await self.pool.replace_unresponsive(w)
        self.failed = failed
        kept = [self.entries[sid] for sid in diff.kept]
        return ReloadResult(added, removed, kept, failed, updated)

    def _replaced(self, w: WorkerHandle) -> None:
        """A replacement worker has every current socket: it no longer lags on any."""
        for entry in self.entries.values():
            entry.lagging.pop(w.name, None)

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
        return await self.pool.collect_stats()

    def processes(self) -> list[dict[str, Any]]:
        procs: list[dict[str, Any]] = [
            {"ID": 0, "PID": os.getpid(), "Type": "supervisor", "Name": "supervisor", "Sockets": []},
        ]
        for i, w in enumerate(self.workers, start=1):
            sockets = [e.spec.socket_str for e in self.entries.values() if e.spec and w.serves(e)]
            # What it read, as of the last statistics collected (get_statistics, /metrics): the load share.
            received = sum(c.rx_packets for c in w.last_stats.values())
            procs.append(
                {
                    "ID": i,
                    "PID": w.pid,
                    "Type": w.kind,
                    "Name": w.name,
                    "Sockets": sockets,
                    "Received": received,
                }
            )
        return procs


def _pool_fds(name: str, size: int) -> PoolFds | None:
    """A pool of one has nobody to wake in its place: its worker runs uvloop's own datagram path, which costs
    less per datagram than the pool's selector (bench proxy_cpu, one worker)."""
    return create_pool_fds(name) if size > 1 else None
