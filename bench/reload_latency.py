"""`sockets_reload` latency when one socket is added to (then removed from) 10, 100 and 1,000 present ones,
and the proxy's memory with them.

SQLite table, UDP sockets on 127.0.x.y loopback addresses, all on one port found free on every one of them.
The figure is the wall time of the MI call as a client sees it: read the table, diff, bind, hand the new
socket to every worker and wait for each to acknowledge, answer with the full added/removed/kept list. The
proxy runs at log level debug, where the supervisor logs how long each step of each reload took; the medians
of those steps for the timed additions are reported beside the wall time. Memory: after the runs, the RSS of
the supervisor and of the workers, and the PSS of them all (a page shared among them counted once)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sqlite3
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.peers import SipProxy, start_sipproxy
from bench.procs import Processes, free_tcp_port, free_udp_port, udp_port_free

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ReloadFigures:
    present: int
    max_sockets: int
    pool_workers: int
    tcp_workers: int
    startup_s: float  # process start to /readyz 200, the start-up load of `present` rows included
    startup_sync_timeouts: int  # "did not answer sync" warnings in the proxy's log during start-up
    first_add_ms: float  # the first add+remove after start-up, untimed in the medians: workers may still
    first_remove_ms: float  # be taking the start-up sockets
    unchanged_ms: list[float]  # reload with nothing changed
    add_ms: list[float]
    add_parse_ms: list[float]  # of add_ms, the client parsing the answer (the answer lists every socket)
    remove_ms: list[float]
    # Medians of the supervisor's own timing of each step of the timed additions (ms), from its debug log:
    # read, judge, diff, bind, workers, result.
    add_steps_ms: dict[str, float]
    supervisor_rss_mib: float
    workers_rss_mib: float  # all workers together
    pss_mib: float  # supervisor and workers, shared pages counted once

    @property
    def add_median(self) -> float:
        return statistics.median(self.add_ms)

    @property
    def add_received_median(self) -> float:
        """Adding one until the answer's last byte is read, the client's parse of it left out."""
        return statistics.median(a - p for a, p in zip(self.add_ms, self.add_parse_ms, strict=True))

    @property
    def remove_median(self) -> float:
        return statistics.median(self.remove_ms)

    @property
    def unchanged_median(self) -> float:
        return statistics.median(self.unchanged_ms)


def address(i: int) -> str:
    """The i-th benchmark address: 127.0.10.1, 127.0.10.2, ... 250 per third octet, away from 127.0.0.x."""
    return f"127.0.{10 + i // 250}.{1 + i % 250}"


def pick_port(count: int, tries: int = 20) -> int:
    for _ in range(tries):
        port = free_udp_port(HOST)
        if all(udp_port_free(address(i), port) for i in range(count)):
            return port
    raise RuntimeError(f"no UDP port free on all of {count} loopback addresses")


_SPANS = re.compile(r"sockets_reload of \d+ rows: (.*); [\d.]+ ms in all")


def reload_steps(log_text: str) -> list[dict[str, float]]:
    """Each reload's steps (ms) as the supervisor logged them, in order."""
    out = []
    for match in _SPANS.finditer(log_text):
        steps = (part.rsplit(" ", 1) for part in match.group(1).split(", "))
        out.append({name: float(ms) for name, ms in steps})
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; zeros when it is gone."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def _db_exec(db_path: Path, sql: str, rows: list[tuple[str]]) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.executemany(sql, rows)


async def _reload(
    session: aiohttp.ClientSession, proxy: SipProxy, parses: list[float] | None = None
) -> tuple[float, dict[str, Any]]:
    """The wall time of one `sockets_reload` (ms) until the answer is read and parsed, and the answer's
    result; `parses` gets how much of that time was the client parsing the answer's JSON."""
    t0 = time.perf_counter()
    raw = await proxy.mi_answer(session, "sockets_reload")
    t1 = time.perf_counter()
    data = json.loads(raw)
    t2 = time.perf_counter()
    if parses is not None:
        parses.append((t2 - t1) * 1000)
    if "error" in data:
        raise RuntimeError(f"MI sockets_reload: {data['error']}")
    return (t2 - t0) * 1000, data["result"]


async def measure(
    procs: Processes, workdir: Path, present: int, runs: int, pool_workers: int, tcp_workers: int
) -> ReloadFigures:
    db_path = workdir / f"reload-{present}.sqlite"
    db_path.unlink(missing_ok=True)
    db_url = f"sqlite:///{db_path}"
    init = await procs.start(
        f"db-init-{present}", [sys.executable, "-m", "sipproxy.cli", "db", "init", "--db-url", db_url]
    )
    if await asyncio.wait_for(init.wait(), 60) != 0:
        raise RuntimeError(f"sipproxy db init failed: {procs.log_tail(f'db-init-{present}')}")
    port = pick_port(present + runs + 1)
    await asyncio.to_thread(
        _db_exec,
        db_path,
        "INSERT INTO sockets (socket) VALUES (?)",
        [(f"udp:{address(i)}:{port}",) for i in range(present)],
    )
    max_sockets = max(1000, present + 1)  # 1,000 present plus the one added need 1,001 slots
    config = {
        "udp_workers": 1,
        "tcp_workers": tcp_workers,
        "sockets_mgm": {"db_url": db_url, "processes": pool_workers, "max_sockets": max_sockets},
        "mi": {"listen": f"{HOST}:{free_tcp_port(HOST)}"},
        # The supervisor logs each reload's steps at debug; nothing else logs there on this path.
        "log_level": "debug",
    }
    t0 = time.monotonic()
    # Start-up loads the whole table and hands every socket to every worker: allow for a slow, shared machine.
    proxy = await start_sipproxy(procs, workdir, f"sipproxy-{present}", config, limit=600)
    startup = time.monotonic() - t0
    log = workdir / "logs" / f"sipproxy-{present}.log"
    sync_timeouts = log.read_text(errors="replace").count("did not answer sync")
    unchanged: list[float] = []
    added: list[float] = []
    parses: list[float] = []  # of each addition's answer, by the client
    removed: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            listing = await proxy.mi(session, "sockets_list")
            items = listing.get("Sockets", listing) if isinstance(listing, dict) else listing
            listening = sum(1 for s in items if s.get("state") == "listening")
            if listening != present:
                raise RuntimeError(f"{listening} of {present} sockets listening after start-up")
            # Run 0 is the settling cycle, reported apart; runs 1..runs are the timed ones.
            for run in range(runs + 1):
                ms, _ = await _reload(session, proxy)
                unchanged.append(ms)
                row = (f"udp:{address(present + run)}:{port}",)
                await asyncio.to_thread(_db_exec, db_path, "INSERT INTO sockets (socket) VALUES (?)", [row])
                ms, result = await _reload(session, proxy, parses)
                if len(result["added"]) != 1 or result["failed"]:
                    raise RuntimeError(f"adding {row[0]}: added {result['added']}, failed {result['failed']}")
                added.append(ms)
                await asyncio.to_thread(_db_exec, db_path, "DELETE FROM sockets WHERE socket = ?", [row])
                ms, result = await _reload(session, proxy)
                if len(result["removed"]) != 1:
                    raise RuntimeError(f"removing {row[0]}: removed {result['removed']}")
                removed.append(ms)
            pids = await proxy.worker_pids(session)
            memory = {name: memory_kib(pid) for name, pid in pids.items()}
    finally:
        await procs.stop(proxy.proc)
    # The start-up load, then unchanged, add, remove for each run (run 0 the settling one).
    steps = reload_steps(log.read_text(errors="replace"))
    if len(steps) != 1 + 3 * (runs + 1):
        raise RuntimeError(f"{len(steps)} reloads logged, {1 + 3 * (runs + 1)} expected")
    add_steps = steps[5::3]  # the timed additions: runs 1.. (run 0's are steps 1 to 3)
    return ReloadFigures(
        present=present,
        max_sockets=max_sockets,
        pool_workers=pool_workers,
        tcp_workers=tcp_workers,
        startup_s=startup,
        startup_sync_timeouts=sync_timeouts,
        first_add_ms=added[0],
        first_remove_ms=removed[0],
        unchanged_ms=unchanged[1:],
        add_ms=added[1:],
        add_parse_ms=parses[1:],
        remove_ms=removed[1:],
        add_steps_ms={
            name: statistics.median(step.get(name, 0.0) for step in add_steps) for name in add_steps[0]
        },
        supervisor_rss_mib=memory["supervisor"][0] / 1024,
        workers_rss_mib=sum(rss for name, (rss, _) in memory.items() if name != "supervisor") / 1024,
        pss_mib=sum(pss for _, pss in memory.values()) / 1024,
    )


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument("--reload-sizes", default="10,100,1000", help="sockets present (default 10,100,1000)")
    parser.add_argument("--reload-runs", type=int, default=7, help="timed add+remove per size (default 7)")
    parser.add_argument("--pool-workers", type=int, default=8, help="sockets_mgm.processes (default 8)")
    parser.add_argument("--tcp-workers", type=int, default=8, help="tcp_workers (default 8)")


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sizes = [int(s) for s in str(args.reload_sizes).split(",") if s.strip()]
    runs = max(1, min(int(args.reload_runs), 50))
    print(
        f"reload_latency: sizes {sizes}, {runs} runs each,"
        f" {args.pool_workers} pool + {args.tcp_workers} tcp workers"
    )
    out: list[dict[str, Any]] = []
    async with Processes(workdir / "logs") as procs:
        for present in sizes:
            if not 0 <= present <= 5000:
                raise RuntimeError(f"reload size {present} out of range 0..5000")
            fig = await measure(procs, workdir, present, runs, args.pool_workers, args.tcp_workers)
            print(
                f"  {present:5d} present: add one {fig.add_median:.1f} ms"
                f" ({fig.add_received_median:.1f} ms to the answer's last byte, before parsing it),"
                f" remove one {fig.remove_median:.1f} ms,"
                f" unchanged {fig.unchanged_median:.1f} ms (medians of {runs});"
                f" start-up with the table loaded {fig.startup_s:.1f}s"
                f" ({fig.startup_sync_timeouts} sync timeouts), first add after it {fig.first_add_ms:.0f} ms",
                flush=True,
            )
            steps = ", ".join(f"{name} {ms:.2f}" for name, ms in fig.add_steps_ms.items())
            print(
                f"        add one, the supervisor's steps (medians, ms): {steps};"
                f" RSS supervisor {fig.supervisor_rss_mib:.1f} MiB, workers {fig.workers_rss_mib:.1f} MiB,"
                f" PSS of all {fig.pss_mib:.1f} MiB",
                flush=True,
            )
            out.append(
                asdict(fig)
                | {
                    "add_median_ms": fig.add_median,
                    "add_received_median_ms": fig.add_received_median,
                    "remove_median_ms": fig.remove_median,
                    "unchanged_median_ms": fig.unchanged_median,
                }
            )
    return {"sizes": out}
