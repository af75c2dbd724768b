"""`python -m bench udp_pool`: the UDP worker pool at the sizes people run it, beside Kamailio, in one run.

Parts (`--pool-parts`, default all):

- `receive`: the receive paths compared before one was chosen (bench/udp_receive.py).
- `cpu`: SIPp uac -> proxy -> SIPp uas (INVITE/180/200/ACK/BYE/200 on loopback) at `--pool-rate` calls/s with
  1, 2, 4 and 8 workers: a static socket with `use_workers N` beside Kamailio with `children=N`, and the
  dynamic pool (`sockets_mgm.processes` N) serving 10 sockets with the calls spread over them beside Kamailio
  listening on the same 10 sockets with `children=N` (Kamailio has no shared pool: N workers per socket).
  CPU per call of each process tree; failed calls with SIPp's strict built-in uac (a 180 after its 200
  aborts the call); each of our workers' share of the datagrams read. Both sides use 4 MiB receive buffers.
- `noloss`: the chart's defaults (8 workers on the static socket; 8 pool workers serving 10 dynamic
  sockets), SIPp tolerating reordered responses as a real UA does, at each of `--noloss-rates` for
  `--noloss-seconds`: the failed calls (0 is the target).
- `maxrate`: the highest call rate with no failed call, 8 workers against `children=8`, each rate tried by
  both in turns (tolerant SIPp, as in `noloss`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import udp_receive
from bench.cpu import tree_cpu, tree_exec_seconds
from bench.machine import load
from bench.peers import SipProxy, start_kamailio, start_sipproxy
from bench.procs import Processes, free_tcp_port, free_udp_port
from bench.proxy_cpu import WARMUP_CALLS, _db_init, insert_sockets
from bench.sipp import TOLERATE_REORDER, SippStats, run_uac, spread_scenario, uas_argv

HOST = "127.0.0.1"
POOL_SOCKETS = 10
PARTS = ("receive", "cpu", "noloss", "maxrate")


@dataclass(frozen=True)
class Setup:
    """One peer in one shape: what listens and how the calls reach it."""

    peer: str  # "sipproxy" | "kamailio"
    mode: str  # "static" | "pool"
    workers: int


@dataclass
class Running:
    setup: Setup
    proc: asyncio.subprocess.Process
    targets: list[tuple[str, int]]
    proxy: SipProxy | None = None
    names: dict[int, str] = field(default_factory=dict)  # ours: worker pid -> name


@dataclass(frozen=True)
class PoolRun:
    peer: str
    mode: str
    workers: int
    round: int
    rate: float
    tolerant: bool
    calls: int
    successful: int
    failed: int
    failures: dict[str, int]
    retransmissions: int
    cpu_ms_per_call: float
    exec_ms_per_call: float
    idle_ms_per_s: float
    shares: dict[str, float]  # ours: each worker's share of the datagrams read on the served sockets
    loadavg: str


async def start(procs: Processes, workdir: Path, setup: Setup, uas_port: int) -> Running:
    count = 1 if setup.mode == "static" else POOL_SOCKETS
    targets = [(HOST, free_udp_port(HOST)) for _ in range(count)]
    if setup.peer == "kamailio":
        proc = await start_kamailio(
            procs, workdir, targets[0], (HOST, uas_port), children=setup.workers, more=targets[1:]
        )
        return Running(setup, proc, targets)
    config: dict[str, Any] = {
        "mi": {"listen": f"{HOST}:{free_tcp_port(HOST)}"},
        "routes": [{"match": {}, "forward": f"sip:{HOST}:{uas_port}"}],
        "log_level": "warning",
    }
    if setup.mode == "static":
        config["sockets"] = [f"udp:{HOST}:{targets[0][1]} use_workers {setup.workers}"]
    else:
        db_path = workdir / f"pool-{setup.workers}.sqlite"
        db_path.unlink(missing_ok=True)
        db_url = f"sqlite:///{db_path}"
        await _db_init(procs, db_url)
        insert_sockets(db_path, [f"udp:{h}:{p}" for h, p in targets])
        config["sockets_mgm"] = {"db_url": db_url, "processes": setup.workers, "max_sockets": POOL_SOCKETS}
    proxy = await start_sipproxy(procs, workdir, f"sipproxy-{setup.mode}-{setup.workers}", config)
    return Running(setup, proxy.proc, targets, proxy)


async def shares(proxy: SipProxy) -> dict[str, float]:
    """Each UDP worker's share of what the UDP workers read (MI `ps` after a statistics collection)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.base_url + "/metrics") as resp:
            await resp.read()  # collects every worker's counters
        result = await proxy.mi(session, "ps")
    items = result.get("Processes", result) if isinstance(result, dict) else result
    got = {
        str(p["Name"]): int(p.get("Received") or 0) for p in items if str(p.get("Type", "")).startswith("udp")
    }
    total = sum(got.values()) or 1
    return {name: n / total for name, n in sorted(got.items())}


async def calls_through(
    procs: Processes,
    workdir: Path,
    running: Running,
    name: str,
    rate: float,
    calls: int,
    tolerant: bool,
) -> SippStats:
    extra = list(TOLERATE_REORDER) if tolerant else []
    first = running.targets[0]
    scenario: list[str] = ["-sn", "uac"]
    if len(running.targets) > 1:
        scenario = spread_scenario(workdir, running.targets)
    return await run_uac(
        procs,
        name,
        f"{first[0]}:{first[1]}",
        HOST,
        rate,
        calls,
        workdir,
        free_udp_port(HOST),
        extra,
        scenario,
    )


async def one_run(
    procs: Processes,
    workdir: Path,
    setup: Setup,
    rnd: int,
    uas_port: int,
    rate: float,
    seconds: float,
    tolerant: bool,
) -> PoolRun:
    running = await start(procs, workdir, setup, uas_port)
    label = f"{setup.peer}-{setup.mode}-{setup.workers}-{rate:g}-{rnd}{'-tolerant' if tolerant else ''}"
    try:
        root = running.proc.pid
        warm = await calls_through(procs, workdir, running, f"warm-{label}", 100, WARMUP_CALLS, True)
        if warm.failed:
            print(f"  warning: {warm.failed} failed warm-up calls through {label}", file=sys.stderr)
        idle_before, t0 = tree_cpu(root), time.monotonic()
        await asyncio.sleep(2.0)
        idle = (tree_cpu(root) - idle_before).total * 1000 / (time.monotonic() - t0)
        before, exec_before = tree_cpu(root), tree_exec_seconds(root)
        stats = await calls_through(
            procs, workdir, running, f"uac-{label}", rate, int(rate * seconds), tolerant
        )
        used, exec_used = tree_cpu(root) - before, tree_exec_seconds(root) - exec_before
        got_shares = await shares(running.proxy) if running.proxy is not None else {}
    finally:
        await procs.stop(running.proc)
    calls = max(stats.created, 1)
    return PoolRun(
        peer=setup.peer,
        mode=setup.mode,
        workers=setup.workers,
        round=rnd,
        rate=rate,
        tolerant=tolerant,
        calls=stats.created,
        successful=stats.successful,
        failed=stats.failed,
        failures=stats.failures,
        retransmissions=stats.retransmissions,
        cpu_ms_per_call=used.total * 1000 / calls,
        exec_ms_per_call=exec_used * 1000 / calls,
        idle_ms_per_s=idle,
        shares=got_shares,
        loadavg=load(),
    )


def show(run: PoolRun) -> None:
    top = sorted(run.shares.values(), reverse=True)
    spread = f"; worker shares % {' '.join(f'{s * 100:.0f}' for s in top)}" if top else ""
    fails = ", ".join(f"{k} {v}" for k, v in run.failures.items())
    print(
        f"  {run.peer:8s} {run.mode:6s} {run.workers} workers {run.rate:g}/s"
        f"{' tolerant' if run.tolerant else ''} round {run.round}: {run.successful}/{run.calls} ok,"
        f" {run.failed} failed{' (' + fails + ')' if fails else ''}, {run.retransmissions} retrans;"
        f" CPU {run.cpu_ms_per_call:.3f} ms/call (on-CPU {run.exec_ms_per_call:.3f}),"
        f" idle {run.idle_ms_per_s:.1f} ms/s{spread}; load {run.loadavg}",
        flush=True,
    )


def summarize(runs: list[PoolRun]) -> list[dict[str, Any]]:
    """Per mode and worker count: calls-weighted CPU per call of each peer, the ratio, failed calls, and ours
    against our own figure at one worker."""
    rows: list[dict[str, Any]] = []
    base: dict[str, float] = {}
    for mode in ("static", "pool"):
        for workers in sorted({r.workers for r in runs if r.mode == mode}):
            row: dict[str, Any] = {"mode": mode, "workers": workers}
            for peer in ("sipproxy", "kamailio"):
                mine = [r for r in runs if (r.mode, r.workers, r.peer) == (mode, workers, peer)]
                calls = sum(r.calls for r in mine)
                if not calls:
                    continue
                row[peer] = sum(r.cpu_ms_per_call * r.calls for r in mine) / calls
                row[f"{peer}_failed"] = sum(r.failed for r in mine)
                row[f"{peer}_calls"] = calls
            if "sipproxy" in row and "kamailio" in row:
                row["ratio"] = row["sipproxy"] / row["kamailio"]
            if "sipproxy" in row:
                if workers == 1:
                    base[mode] = row["sipproxy"]
                if mode in base:
                    row["vs_one_worker"] = row["sipproxy"] / base[mode]
            rows.append(row)
    return rows


async def cpu_by_workers(
    workdir: Path, workers: list[int], modes: list[str], rate: float, seconds: float, rounds: int
) -> dict[str, Any]:
    runs: list[PoolRun] = []
    print(f"udp_pool cpu: {rate:g} calls/s for {seconds:g}s per run, workers {workers}, modes {modes}")
    async with Processes(workdir / "logs") as procs:
        uas_port = free_udp_port(HOST)
        await procs.start("uas", uas_argv(HOST, uas_port), stdout_to_log=False)
        await asyncio.sleep(0.5)
        # Rounds outermost: each round runs every mode and worker count, so the 1- and 8-worker figures that
        # are compared come from runs minutes apart, not a quarter of an hour (a shared machine's load moves).
        for rnd in range(rounds):
            for mode in modes:
                for n in workers:
                    peers = ("sipproxy", "kamailio") if rnd % 2 == 0 else ("kamailio", "sipproxy")
                    for peer in peers:
                        run = await one_run(
                            procs, workdir, Setup(peer, mode, n), rnd, uas_port, rate, seconds, False
                        )
                        runs.append(run)
                        show(run)
    table = summarize(runs)
    for row in table:
        print(
            f"  {row['mode']:6s} {row['workers']} workers: sipproxy {row.get('sipproxy', float('nan')):.3f}"
            f" ms/call ({row.get('sipproxy_failed', '?')} failed), kamailio"
            f" {row.get('kamailio', float('nan')):.3f} ({row.get('kamailio_failed', '?')} failed),"
            f" ratio {row.get('ratio', float('nan')):.2f}x, ours vs one worker"
            f" {row.get('vs_one_worker', float('nan')):.2f}x"
        )
    return {"runs": [asdict(r) for r in runs], "summary": table}


async def no_loss(workdir: Path, rates: list[float], seconds: float) -> dict[str, Any]:
    runs: list[PoolRun] = []
    print(f"udp_pool noloss: chart defaults, tolerant SIPp, {rates} calls/s for {seconds:g}s")
    async with Processes(workdir / "logs") as procs:
        uas_port = free_udp_port(HOST)
        await procs.start("uas-noloss", uas_argv(HOST, uas_port), stdout_to_log=False)
        await asyncio.sleep(0.5)
        for rate in rates:
            for mode in ("static", "pool"):
                run = await one_run(
                    procs, workdir, Setup("sipproxy", mode, 8), 0, uas_port, rate, seconds, True
                )
                runs.append(run)
                show(run)
    return {"runs": [asdict(r) for r in runs]}


async def max_rate(workdir: Path, rates: list[float], seconds: float) -> dict[str, Any]:
    """Each rate through both peers in turns (8 workers, children=8, tolerant SIPp); a peer stops at the first
    rate it fails twice."""
    best: dict[str, float | None] = {"sipproxy": None, "kamailio": None}
    runs: list[PoolRun] = []
    print(f"udp_pool maxrate: 8 workers against children=8, {rates} calls/s, {seconds:g}s each")
    async with Processes(workdir / "logs") as procs:
        uas_port = free_udp_port(HOST)
        await procs.start("uas-maxrate", uas_argv(HOST, uas_port), stdout_to_log=False)
        await asyncio.sleep(0.5)
        going = ["sipproxy", "kamailio"]
        for rate in rates:
            for peer in list(going):
                passed = False
                for attempt in (1, 2):
                    run = await one_run(
                        procs, workdir, Setup(peer, "static", 8), attempt, uas_port, rate, seconds, True
                    )
                    runs.append(run)
                    show(run)
                    if not run.failed and run.successful >= run.calls:
                        passed = True
                        break
                    await asyncio.sleep(5.0)
                if passed:
                    best[peer] = rate
                else:
                    going.remove(peer)
            if not going:
                break
    for peer, top in best.items():
        print(f"  {peer}: highest rate with no failed call {top:g}/s" if top else f"  {peer}: none passed")
    return {"runs": [asdict(r) for r in runs], "sustained": best}


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument("--pool-parts", default=",".join(PARTS), help=f"any of {', '.join(PARTS)}")
    parser.add_argument("--worker-counts", default="1,2,4,8", help="worker counts of the cpu part")
    parser.add_argument("--pool-modes", default="static,pool", help="static, pool or both")
    parser.add_argument("--pool-rate", type=float, default=300.0, help="calls/s of the cpu part (300)")
    parser.add_argument("--pool-seconds", type=float, default=30.0, help="length of each cpu run (30)")
    parser.add_argument("--pool-rounds", type=int, default=2, help="runs per peer and count (2)")
    parser.add_argument("--noloss-rates", default="200,2000")
    parser.add_argument("--noloss-seconds", type=float, default=60.0)
    parser.add_argument("--maxrate-steps", default="1000,1500,2000,2500,3000,3500,4000,5000")
    parser.add_argument("--maxrate-seconds", type=float, default=10.0)
    parser.add_argument("--receive-rate", type=int, default=3000, help="datagrams/s of the receive part")


def _numbers(text: str) -> list[float]:
    return [float(x) for x in str(text).split(",") if x.strip()]


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    parts = [p.strip() for p in str(args.pool_parts).split(",") if p.strip() in PARTS]
    out: dict[str, Any] = {}
    if "receive" in parts:
        print("udp_pool receive: 10 sockets, datagrams in back-to-back pairs from one source")
        rows = []
        base = 42000
        for count in (1, 8):
            for variant in udp_receive.VARIANTS:
                # Blocking on purpose: nothing else runs meanwhile, and its worker processes are forked.
                got = udp_receive.measure(variant, count, args.receive_rate, 5.0, base)
                base += udp_receive.SOCKETS
                rows.append(asdict(got))
                print(udp_receive.describe(got), flush=True)
        out["receive"] = rows
    if "cpu" in parts:
        workers = [int(n) for n in _numbers(args.worker_counts) if 1 <= n <= 16]
        modes = [m for m in str(args.pool_modes).split(",") if m in ("static", "pool")]
        rate = min(max(args.pool_rate, 1.0), 5000.0)
        seconds = min(max(args.pool_seconds, 1.0), 120.0)
        out["cpu"] = await cpu_by_workers(
            workdir, workers, modes, rate, seconds, min(max(args.pool_rounds, 1), 6)
        )
    if "noloss" in parts:
        rates = [r for r in _numbers(args.noloss_rates) if 0 < r <= 5000]
        out["noloss"] = await no_loss(workdir, rates, min(max(args.noloss_seconds, 1.0), 300.0))
    if "maxrate" in parts:
        rates = [r for r in _numbers(args.maxrate_steps) if 0 < r <= 10000][:12]
        out["maxrate"] = await max_rate(workdir, rates, min(max(args.maxrate_seconds, 1.0), 60.0))
    return out
