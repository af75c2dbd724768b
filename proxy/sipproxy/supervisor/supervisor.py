"""The supervisor: owns config, database, slots, bound sockets, the TLS domains and the workers
(`workers.WorkerPool`); the MI server (`mi/`) reads and drives it.

A reload reads the table, binds what is new and tells every worker (removals first, then additions, each batch
sent to every worker with a Sync right behind it and confirmed when every worker has acknowledged that Sync:
see `sipproxy.shared.control`). What a reload costs per row present is kept to lookups: each distinct row is
judged once (`judge_rows`), the table reader converts only rows it has not seen (db_reader.py), and the
answer's kept list is made of texts remembered per socket (mi/listing.py). A TLS reload reads the domains
(tls.py), sends the new generation to every worker and waits for the same Sync.

A socket whose address is not on this host is *absent*, not failed: it is bound as soon as the address
appears. The supervisor looks at every dynamic socket's address when the kernel says addresses changed
(address_events.py) and every `ADDRESS_CHECK_SECONDS` in any case; a reload looks at the addresses of the
sockets it is about to bind (those it keeps show the last look). A bound socket whose address left stays
bound (it serves again if the address returns) and is reported absent meanwhile. Rows placed on other nodes
(shared/placement.py) are not bound here at all ("unselected")."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sipproxy.shared.control import Init, tls_domains_document
from sipproxy.shared.counters import SocketCounters
from sipproxy.shared.placement import NodesError, advertised_here, parse_nodes, serves_here
from sipproxy.shared.socketspec import RowError, SocketSpec, parse_row, unreachable_reason
from sipproxy.shared.udp_pool import PoolFds, create_pool_fds
from sipproxy.sip.flowtoken import new_key
from sipproxy.supervisor.address_events import AddressEvents
from sipproxy.supervisor.binding import address_absent, address_present, bind_socket, set_tos
from sipproxy.supervisor.config import Config
from sipproxy.supervisor.db_reader import Row, TableReader, make_engine
from sipproxy.supervisor.entries import Entry, ReloadResult
from sipproxy.supervisor.handover import Predecessor
from sipproxy.supervisor.reload_diff import diff_sockets
from sipproxy.supervisor.slots import Slots
from sipproxy.supervisor.tls import TlsGeneration, TlsReloadError, build_generation, read_sources
from sipproxy.supervisor.traffic import Traffic
from sipproxy.supervisor.workers import WorkerHandle, WorkerPool

log = logging.getLogger("sipproxy.supervisor")
# How often the addresses of dynamic sockets are looked at without a notification from the kernel (a local
# route added, notifications lost or unavailable), and how often the workers' counts are collected for
# `Traffic`. A look costs one throw-away bind per distinct address; a collection one message per worker.
ADDRESS_CHECK_SECONDS = 5.0
TRAFFIC_CHECK_SECONDS = 10.0
# Addresses often change in bursts (keepalived adds several at once): one look after the burst.
EVENT_SETTLE_SECONDS = 0.05


class ReloadError(Exception):
    """The table could not be read: nothing was changed."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one row means for this proxy: a socket to serve (`state` "listening", with a `note` for the
    listing when there is one), or a row not bound here, "failed" or "unselected" with the reason (and the
    spec when the row parsed). A row and the node name decide it, so it is decided once per distinct row."""

    spec: SocketSpec | None
    state: str = "listening"
    error: str | None = None
    note: str | None = None
    # Refused for its advertised address: said once per socket even when several rows name it.
    unreachable: bool = False


def judge_row(row: Row, node_name: str | None) -> Verdict:
    """The row parsed (its advertised address this node's own when the side table has one) and placed."""
    try:
        advertised = advertised_here(row.advertised, row.node_advertised, node_name)
        spec = parse_row(row.socket, advertised, row.tag, row.flags, row.tos, freebind=row.freebind)
    except (NodesError, RowError) as exc:
        return Verdict(None, "failed", str(exc))
    if (unreachable := unreachable_reason(spec)) is not None:
        return Verdict(spec, "failed", f"{unreachable} (the advertised column)", unreachable=True)
    try:
        nodes = parse_nodes(row.nodes)
    except NodesError as exc:
        return Verdict(spec, "failed", str(exc))
    if not serves_here(nodes, node_name):
        assert nodes is not None
        placed = ", ".join(sorted(nodes)[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
        error = f"placed on other nodes ({placed or 'none'}), not on this proxy's node {node_name}"
        return Verdict(spec, "unselected", error)
    if nodes is not None and node_name is None:
        return Verdict(
            spec,
            note=(
                "this socket is placed on some nodes only, but this proxy does not know its node (NODE_NAME, "
                "or node_name in its config): serving it"
            ),
        )
    return Verdict(spec)


def judge_rows(
    rows: Iterable[Row], known: dict[Row, Verdict] | None = None, node_name: str | None = None
) -> tuple[list[tuple[Row, Verdict]], dict[Row, Verdict]]:
    """Each row judged, reusing what `known` (the last reload's verdicts) says of identical rows; also the
    verdicts to pass next time (only the rows seen now, so it never grows beyond the table)."""
    known = known or {}
    seen: dict[Row, Verdict] = {}
    out: list[tuple[Row, Verdict]] = []
    for row in rows:
        verdict = seen.get(row) or known.get(row)
        if verdict is None:
            verdict = judge_row(row, node_name)
        seen[row] = verdict
        out.append((row, verdict))
    return out, seen


class Supervisor:
    def __init__(
        self, config: Config, log_level: str = "info", predecessor: Predecessor | None = None
    ) -> None:
        self.config = config
        # The older proxy of the fleet on this node whose sockets this one takes over (handover.py): a
        # socket it has is used instead of binding one beside it.
        self.predecessor = predecessor
        self.log_level = log_level
        self.started_at = time.time()
        self.entries: dict[int, Entry] = {}  # bound sockets, static and dynamic
        # Dynamic rows not bound: failed, absent or unselected, as of the last reload (and the retries since).
        self.unbound: list[Entry] = []
        self._said: set[tuple[str, str]] = set()  # (state, key) of the unbound rows already logged
        self.node_name = config.node_name
        self.traffic = Traffic()
        self._events = AddressEvents()
        self._watcher: asyncio.Task[None] | None = None
        self.slots = Slots(config.sockets_mgm.max_sockets if config.sockets_mgm else 1)
        self.lock = asyncio.Lock()
        self.ready = False
        self.reloads = 0
        self.reload_failures = 0
        self.reload_seconds = 0.0
        self._sids = itertools.count(1)
        self._verdicts: dict[Row, Verdict] = {}  # the last reload's rows, judged
        mgm = config.sockets_mgm
        self._db = make_engine(mgm.db_url) if mgm else None
        self._reader = TableReader(self._db, mgm.table_name) if self._db and mgm else None
        self.tls = TlsGeneration(0)
        self.tls_reloads = 0
        self.tls_reload_failures = 0
        # The key of the flow tokens naming stream connections: one per proxy run, the same in every worker.
        init = Init(
            routes=tuple(config.routes), tcp_idle_timeout=config.tcp_idle_timeout, flow_key=new_key().hex()
        )
        self.pool = WorkerPool(init, self.entries.values, self.lock, log_level, self._replaced)

    @property
    def failed(self) -> list[Entry]:
        return [e for e in self.unbound if e.state == "failed"]

    @property
    def absent(self) -> list[Entry]:
        """Rows whose address is not on this host: not bound, retried when addresses change."""
        return [e for e in self.unbound if e.state == "absent"]

    @property
    def workers(self) -> list[WorkerHandle]:
        return self.pool.handles

    @property
    def worker_restarts(self) -> int:
        return self.pool.restarts

    # --- start-up and shutdown ----------------------------------------------------------------------

    def bind(self, spec: SocketSpec) -> socket.socket:
        """The socket for `spec`: the predecessor's when it has one bound the same way, else a new one (which
        raises OSError as the kernel reports it: an address held by anyone else is a conflict, as always)."""
        if self.predecessor is not None:
            sock = self.predecessor.take(spec)
            if sock is not None:
                return sock
        return bind_socket(spec)

    def bind_static(self) -> None:
        """Static sockets are bound before any worker starts; a failure stops start-up."""
        for spec in self.config.sockets:
            sock = self.bind(spec)
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
        if self.predecessor is not None:
            unused = self.predecessor.close_unused_sockets()
            if unused:
                log.info("handover: %d sockets of the predecessor are not in this proxy's set", len(unused))
        if self.config.sockets_mgm is not None:
            self._events.start()
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self._events.close()
        await self.pool.stop()
        for entry in self.entries.values():
            if entry.sock is not None:
                entry.sock.close()
        if self._reader is not None:
            self._reader.close()
        if self._db is not None:
            await self._db.dispose()

    # --- reload ---------------------------------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        mgm = self.config.sockets_mgm
        if mgm is None or self._reader is None:
            raise ReloadError("no sockets_mgm database configured")
        async with self.lock:
            spans = Spans()
            try:
                rows = await self._reader.read()
            except Exception as exc:
                self.reload_failures += 1
                log.error("cannot read table %s: %s", mgm.table_name, exc)
                raise ReloadError(str(exc)) from exc
            spans.mark("read")
            judged, self._verdicts = judge_rows(rows, self._verdicts, self.node_name)
            spans.mark("judge")
            result = await self._apply(judged, spans)
            self.reloads += 1
            self.reload_seconds += spans.total
            log.debug("sockets_reload of %d rows: %s", len(rows), spans)
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

    def _new_unbound(self, spec: SocketSpec | None, row: Row | None, state: str, error: str) -> Entry:
        entry = Entry(next(self._sids), "dynamic", spec, row=row, state=state, error=error)
        label = entry.label if spec else (row.socket if row else "?")
        if state == "failed":
            log.warning("socket %s failed: %s", label, error)
        elif spec is None or (state, spec.key) not in self._said:
            # Said once: on a node without a carrier's address every reload would say it again.
            log.info("socket %s %s: %s", label, state, error)
        return entry

    def _new_failed(self, spec: SocketSpec | None, row: Row | None, error: str) -> Entry:
        return self._new_unbound(spec, row, "failed", error)

    async def _apply(self, judged: list[tuple[Row, Verdict]], spans: Spans) -> ReloadResult:
        unbound: list[Entry] = []
        wanted: list[SocketSpec] = []
        rows_by_key: dict[str, Row] = {}
        notes: dict[str, str] = {}
        unreachable_seen: set[str] = set()
        for row, verdict in judged:
            spec = verdict.spec
            if verdict.state == "listening":
                assert spec is not None
                key = spec.key
                if key not in rows_by_key:
                    rows_by_key[key] = row
                if verdict.note is not None:
                    notes[key] = verdict.note
                wanted.append(spec)
            elif not verdict.unreachable:
                unbound.append(self._new_unbound(spec, row, verdict.state, verdict.error or ""))
            elif spec is not None and spec.key not in unreachable_seen:
                unreachable_seen.add(spec.key)
                unbound.append(self._new_failed(spec, row, verdict.error or ""))
        running = {
            sid: e.spec for sid, e in self.entries.items() if e.kind == "dynamic" and e.spec is not None
        }
        diff = diff_sockets(running, wanted)
        spans.mark("diff")
        removed = [self.entries.pop(sid) for sid in diff.removed]
        ack_timeout = self.config.worker_ack_timeout
        if removed:
            # A worker that did not close them in time still holds them: it goes, and its descriptors with it.
            for w in await self.pool.apply(remove=removed, limit=ack_timeout):
                await self.pool.replace_unresponsive(w)
            for entry in removed:
                entry.sock.close()
                entry.sock = None
                if entry.slot is not None:
                    self.slots.release(entry.slot)
                entry.state = "removed"
            spans.mark("remove")
        updated: list[Entry] = []
        for sid, spec in diff.updated:
            # The same open socket with other advertised address, tag or ToS: nothing is rebound.
            entry = self.entries[sid]
            if entry.spec is not None and spec.tos != entry.spec.tos:
                set_tos(entry.sock, spec)  # shared by every worker's descriptor of it
            entry.spec, entry.row = spec, rows_by_key.get(spec.key)
            updated.append(entry)
        # Only the addresses of the sockets to bind are looked at: a kept socket's address is looked at
        # whenever the kernel says addresses changed and every ADDRESS_CHECK_SECONDS (`_watch`), so a reload
        # costs no look per socket present.
        present = self._look([spec.host for spec in diff.added])
        to_bind: list[tuple[SocketSpec, Row | None]] = []
        for spec in diff.added:
            if not spec.freebind and not present[spec.host]:
                # Not even tried: the address is not here, and a bind attempt would only churn the slots.
                unbound.append(self._new_unbound(spec, rows_by_key.get(spec.key), "absent", _absent(spec)))
            else:
                to_bind.append((spec, rows_by_key.get(spec.key)))
        added, not_bound = self._bind(to_bind)
        for entry in added:
            assert entry.spec is not None
            entry.address_local = present[entry.spec.host]
        unbound += not_bound
        spans.mark("bind")
        await self._hand_over(added, updated)
        if added or updated:
            spans.mark("workers")
        self._set_unbound(unbound)
        for entry in self.entries.values():
            if entry.kind == "dynamic" and entry.spec is not None:
                entry.note = notes.get(entry.spec.key)
        kept = [self.entries[sid] for sid in diff.kept]
        result = ReloadResult(
            added,
            removed,
            kept,
            [e for e in unbound if e.state == "failed"],
            updated,
            absent=[e for e in unbound if e.state == "absent"],
            unselected=[e for e in unbound if e.state == "unselected"],
        )
        spans.mark("result")
        return result

    def _bind(self, items: list[tuple[SocketSpec, Row | None]]) -> tuple[list[Entry], list[Entry]]:
        """Bind each socket in a free slot: (the new bound entries, the failed or absent ones)."""
        added: list[Entry] = []
        not_bound: list[Entry] = []
        for spec, row in items:
            slot = self.slots.allocate()
            if slot is None:
                not_bound.append(self._new_failed(spec, row, "no free slot"))
                continue
            try:
                sock = self.bind(spec)
            except OSError as exc:
                self.slots.release(slot)
                if address_absent(exc) and not spec.freebind:
                    not_bound.append(self._new_unbound(spec, row, "absent", _absent(spec)))
                else:
                    not_bound.append(self._new_failed(spec, row, str(exc)))
                continue
            entry = Entry(next(self._sids), "dynamic", spec, row=row, slot=slot, sock=sock)
            self.entries[entry.sid] = entry
            added.append(entry)
        return added, not_bound

    def _set_unbound(self, unbound: list[Entry]) -> None:
        self.unbound = unbound
        self._said = {(e.state, e.spec.key) for e in unbound if e.spec is not None}

    async def _hand_over(self, added: list[Entry], updated: list[Entry]) -> None:
        """New and updated sockets to every worker; returns once each has them (or is being replaced)."""
        if not added and not updated:
            return
        ack_timeout = self.config.worker_ack_timeout
        for w in await self.pool.apply(add=added, update=updated, limit=ack_timeout):
            reason = (
                f"worker {w.name} (pid {w.pid}) did not apply the change within {ack_timeout:g} s; "
                "it is being replaced"
            )
            for entry in added + updated:
                if w.serves(entry):
                    entry.lagging[w.name] = reason
            await self.pool.replace_unresponsive(w)

    # --- addresses that come and go -----------------------------------------------------------------

    @staticmethod
    def _look(hosts: Iterable[str]) -> dict[str, bool]:
        """Is each address on this host? One throw-away bind per distinct address."""
        return {host: address_present(host) for host in set(hosts)}

    def _update_presence(self) -> None:
        bound = [e for e in self.entries.values() if e.kind == "dynamic" and e.spec is not None]
        present = self._look(e.spec.host for e in bound if e.spec is not None)
        for entry in bound:
            assert entry.spec is not None
            was = entry.reported_state
            entry.address_local = present[entry.spec.host]
            if entry.reported_state != was:
                log.info(
                    "socket %s: address %s %s this host (%s)",
                    entry.label,
                    entry.spec.host,
                    "is back on" if entry.address_local else "has left",
                    entry.reported_state,
                )

    async def recheck_addresses(self) -> list[Entry]:
        """Look at every dynamic socket's address again; bind the absent ones whose address has arrived and
        hand them to the workers. Returns the sockets bound."""
        async with self.lock:
            self._update_presence()
            absent = [e for e in self.unbound if e.state == "absent" and e.spec is not None]
            if not absent:
                return []
            present = self._look(e.spec.host for e in absent if e.spec is not None)
            arrived = [e for e in absent if e.spec is not None and present[e.spec.host]]
            if not arrived:
                return []
            gone = {id(e) for e in arrived}
            added, not_bound = self._bind([(e.spec, e.row) for e in arrived if e.spec is not None])
            for entry in added:
                entry.address_local = True
                log.info("socket %s: its address arrived, bound", entry.label)
            self._set_unbound([e for e in self.unbound if id(e) not in gone] + not_bound)
            await self._hand_over(added, [])
            return added

    async def _watch(self) -> None:
        """Looks at the addresses when the kernel says they changed, and periodically; collects the workers'
        counts for `traffic` now and then."""
        next_traffic = time.monotonic() + TRAFFIC_CHECK_SECONDS
        while True:
            try:
                await asyncio.wait_for(self._events.changed.wait(), ADDRESS_CHECK_SECONDS)
                await asyncio.sleep(EVENT_SETTLE_SECONDS)
            except TimeoutError:
                pass
            self._events.changed.clear()
            try:
                await self.recheck_addresses()
                if time.monotonic() >= next_traffic:
                    next_traffic = time.monotonic() + TRAFFIC_CHECK_SECONDS
                    await self.collect_stats()
            except Exception:
                log.exception("looking at the sockets' addresses failed; trying again later")

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
        return listening + self.unbound

    def open_sockets(self) -> list[tuple[SocketSpec, socket.socket]]:
        """Every listening socket with its spec (what a successor is handed)."""
        return [(e.spec, e.sock) for e in self.entries.values() if e.spec is not None and e.sock is not None]

    def static_entries(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.kind == "static"]

    async def collect_stats(self) -> dict[str, SocketCounters]:
        stats = await self.pool.collect_stats()
        self.traffic.observe({label: c.rx_packets for label, c in stats.items()}, time.monotonic())
        return stats

    def state_counts(self) -> dict[str, int]:
        """Sockets by the state the listing shows (static ones are listening)."""
        counts = {"listening": 0, "failed": 0, "absent": 0, "unselected": 0}
        for entry in [*self.entries.values(), *self.unbound]:
            state = entry.reported_state
            counts[state] = counts.get(state, 0) + 1
        return counts

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


class Spans:
    """How long each step of a reload took (the debug log says it for every reload)."""

    def __init__(self) -> None:
        self.started = self._last = time.perf_counter()
        self.steps: dict[str, float] = {}

    def mark(self, step: str) -> None:
        now = time.perf_counter()
        self.steps[step] = self.steps.get(step, 0.0) + now - self._last
        self._last = now

    @property
    def total(self) -> float:
        return self._last - self.started

    def __str__(self) -> str:
        parts = [f"{step} {seconds * 1000:.2f}" for step, seconds in self.steps.items()]
        return f"{', '.join(parts)}; {self.total * 1000:.2f} ms in all"


def _absent(spec: SocketSpec) -> str:
    return (
        f"address {spec.host} is not on this host ([Errno {errno.EADDRNOTAVAIL}] "
        f"{os.strerror(errno.EADDRNOTAVAIL)}); the socket is bound when the address appears"
    )


def _pool_fds(name: str, size: int) -> PoolFds | None:
    """A pool of one has nobody to wake in its place: its worker runs uvloop's own datagram path, which costs
    less per datagram than the pool's selector (bench proxy_cpu, one worker)."""
    return create_pool_fds(name) if size > 1 else None
