"""Proxy CPU per forwarded call, sipproxy beside Kamailio in the same run; and the highest call rate one pool
worker sustains with no failed call.

SIPp `-sn uac` -> proxy -> SIPp `-sn uas` (INVITE/180/200/ACK/BYE/200 over UDP on loopback). CPU time is the
utime+stime of the proxy's whole process tree between just before the uac starts and just after it exits."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.cpu import CpuTimes, process_cpu, tree_cpu, tree_exec_seconds, udp_drops
from bench.machine import load
from bench.peers import start_kamailio, start_sipproxy
from bench.procs import Processes, free_tcp_port, free_udp_port, udp_port_free
from bench.sipp import SippStats, run_uac, uas_argv

HOST = "127.0.0.1"
BASELINE_PYTHON: list[str] = [sys.executable]  # set by --baseline-python
WARMUP_CALLS = 100
IDLE_SECONDS = 3.0


@dataclass(frozen=True)
class CpuRun:
    peer: str
    round: int
    target_rate: float
    calls: int
    successful: int
    failed: int
    retransmissions: int
    achieved_rate: float
    user_s: float
    system_s: float
    idle_cpu_ms_per_s: float  # the tree's CPU while no call is up: timers, housekeeping
    exec_s: float  # the tree's on-CPU time from schedstat: exact total, the cross-check of user + system
    worker_user_s: float | None = None  # ours only: the one UDP worker, without the supervisor
    worker_system_s: float | None = None

    @property
    def user_ms_per_call(self) -> float:
        return self.user_s * 1000 / max(self.calls, 1)

    @property
    def system_ms_per_call(self) -> float:
        return self.system_s * 1000 / max(self.calls, 1)

    @property
    def total_ms_per_call(self) -> float:
        return self.user_ms_per_call + self.system_ms_per_call

    @property
    def exec_ms_per_call(self) -> float:
        return self.exec_s * 1000 / max(self.calls, 1)


@dataclass(frozen=True)
class RateStep:
    target_rate: float
    attempt: int
    calls: int
    successful: int
    failed: int
    retransmissions: int
    achieved_rate: float
    worker_cpu_share: float  # CPU seconds of the worker per wall second (1.0 = one core)
    tree_cpu_share: float  # the same for the whole process tree
    failures: dict[str, int]  # SIPp's failure counters that are not zero
    proxy_drops: dict[str, int]  # ours: packets the proxy dropped during the step, by reason
    socket_drops: dict[str, int]  # kernel drops (full receive buffer) on the uac's, proxy's and uas's sockets
    host_rcvbuf_errors: int  # the host-wide UDP RcvbufErrors delta: other processes' drops count too
    sipp_watchdog: int  # SIPp's watchdog: SIPp itself was not scheduled in time (minor + major)
    loadavg: str

    @property
    def passed(self) -> bool:
        return not self.failed and self.successful >= self.calls


def static_config(listen_port: int, uas_port: int, mi_port: int) -> dict[str, Any]:
    return {
        "sockets": [f"udp:{HOST}:{listen_port} use_workers 1"],
        "udp_workers": 1,
        "mi": {"listen": f"{HOST}:{mi_port}"},
        "routes": [{"match": {}, "forward": f"sip:{HOST}:{uas_port}"}],
        "log_level": "warning",
    }


def pool_config(db_url: str, uas_port: int, mi_port: int) -> dict[str, Any]:
    return {
        "udp_workers": 1,
        "tcp_workers": 1,
        "sockets_mgm": {"db_url": db_url, "processes": 1, "max_sockets": 10},
        "mi": {"listen": f"{HOST}:{mi_port}"},
        "routes": [{"match": {}, "forward": f"sip:{HOST}:{uas_port}"}],
        "log_level": "warning",
    }


def summarize(runs: list[CpuRun]) -> dict[str, Any]:
    """Per peer: calls-weighted CPU ms per call over all rounds; ratio ours/Kamailio."""
    out: dict[str, Any] = {}
    for peer in sorted({r.peer for r in runs}):
        mine = [r for r in runs if r.peer == peer]
        calls = sum(r.calls for r in mine)
        out[peer] = {
            "calls": calls,
            "failed": sum(r.failed for r in mine),
            "user_ms_per_call": sum(r.user_s for r in mine) * 1000 / max(calls, 1),
            "system_ms_per_call": sum(r.system_s for r in mine) * 1000 / max(calls, 1),
        }
        out[peer]["total_ms_per_call"] = out[peer]["user_ms_per_call"] + out[peer]["system_ms_per_call"]
        out[peer]["exec_ms_per_call"] = sum(r.exec_s for r in mine) * 1000 / max(calls, 1)
    if "sipproxy" in out and "kamailio" in out and out["kamailio"]["total_ms_per_call"] > 0:
        ours, kam = out["sipproxy"], out["kamailio"]
        out["ratio_total"] = ours["total_ms_per_call"] / kam["total_ms_per_call"]
        if kam["user_ms_per_call"] > 0:
            out["ratio_user"] = ours["user_ms_per_call"] / kam["user_ms_per_call"]
        if kam["system_ms_per_call"] > 0:
            out["ratio_system"] = ours["system_ms_per_call"] / kam["system_ms_per_call"]
        if kam["exec_ms_per_call"] > 0:
            out["ratio_exec"] = ours["exec_ms_per_call"] / kam["exec_ms_per_call"]
    if "baseline" in out and "kamailio" in out and out["kamailio"]["total_ms_per_call"] > 0:
        out["ratio_baseline_total"] = (
            out["baseline"]["total_ms_per_call"] / out["kamailio"]["total_ms_per_call"]
        )
    return out


def sustained(steps: list[RateStep]) -> float | None:
    """The highest rate below the first one none of whose tries passed with no failed (or missing) call."""
    best: float | None = None
    for rate in dict.fromkeys(s.target_rate for s in steps):
        if not any(s.passed for s in steps if s.target_rate == rate):
            break
        best = rate
    return best


async def start_floor(procs: Processes, listen_port: int, uas_port: int) -> asyncio.subprocess.Process:
    argv = [sys.executable, "-m", "bench.relay_floor", "--listen", f"{HOST}:{listen_port}"]
    proc = await procs.start("floor", [*argv, "--uas", f"{HOST}:{uas_port}"])
    deadline = time.monotonic() + 30
    while udp_port_free(HOST, listen_port):
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"relay_floor did not start: {procs.log_tail('floor')}")
        await asyncio.sleep(0.1)
    return proc


async def _measure(
    procs: Processes,
    workdir: Path,
    label: str,
    target_port: int,
    rate: float,
    calls: int,
    cpu: Callable[[], CpuTimes],
) -> tuple[SippStats, CpuTimes]:
    before = cpu()
    stats = await run_uac(
        procs, label, f"{HOST}:{target_port}", HOST, rate, calls, workdir, free_udp_port(HOST)
    )
    return stats, cpu() - before


async def _idle_ms_per_s(cpu: Callable[[], CpuTimes]) -> float:
    before = cpu()
    await asyncio.sleep(IDLE_SECONDS)
    return (cpu() - before).total * 1000 / IDLE_SECONDS


async def _cpu_run(
    procs: Processes,
    workdir: Path,
    peer: str,
    rnd: int,
    uas_port: int,
    rate: float,
    calls: int,
) -> CpuRun:
    listen_port = free_udp_port(HOST)
    worker_pid: int | None = None
    if peer == "kamailio":
        proc = await start_kamailio(procs, workdir, (HOST, listen_port), (HOST, uas_port))
    elif peer == "floor":
        proc = await start_floor(procs, listen_port, uas_port)
    else:
        # "baseline": the same config run by another build (--baseline-python), in turns with this one.
        python = BASELINE_PYTHON[0] if peer == "baseline" else sys.executable
        proxy = await start_sipproxy(
            procs, workdir, peer, static_config(listen_port, uas_port, free_tcp_port(HOST)), python=python
        )
        proc = proxy.proc
        async with aiohttp.ClientSession() as session:
            pids = await proxy.worker_pids(session)
        worker_pid = next((pid for name, pid in pids.items() if name.startswith("udp[")), None)
    try:
        root = proc.pid

        def cpu() -> CpuTimes:
            return tree_cpu(root)

        warm, _ = await _measure(procs, workdir, f"warmup-{peer}-{rnd}", listen_port, 100, WARMUP_CALLS, cpu)
        if warm.failed:
            print(f"  warning: {warm.failed} failed warm-up calls through {peer}", file=sys.stderr)
        idle = await _idle_ms_per_s(cpu)
        w_before = process_cpu(worker_pid) if worker_pid else None
        exec_before = tree_exec_seconds(root)
        stats, used = await _measure(procs, workdir, f"uac-{peer}-{rnd}", listen_port, rate, calls, cpu)
        exec_used = tree_exec_seconds(root) - exec_before
        w_used = process_cpu(worker_pid) - w_before if worker_pid and w_before else None
    finally:
        await procs.stop(proc)
    return CpuRun(
        peer=peer,
        round=rnd,
        target_rate=rate,
        calls=stats.created,
        successful=stats.successful,
        failed=stats.failed,
        retransmissions=stats.retransmissions,
        achieved_rate=stats.achieved_rate,
        user_s=used.user,
        system_s=used.system,
        idle_cpu_ms_per_s=idle,
        exec_s=exec_used,
        worker_user_s=w_used.user if w_used else None,
        worker_system_s=w_used.system if w_used else None,
    )


def _print_run(r: CpuRun) -> None:
    extra = ""
    if r.worker_user_s is not None and r.worker_system_s is not None:
        extra = (
            f" (worker alone: user {r.worker_user_s * 1000 / max(r.calls, 1):.3f}"
            f" sys {r.worker_system_s * 1000 / max(r.calls, 1):.3f})"
        )
    print(
        f"  {r.peer:9s} round {r.round}: {r.calls} calls at {r.achieved_rate:.0f}/s, {r.failed} failed,"
        f" {r.retransmissions} retrans; CPU ms/call user {r.user_ms_per_call:.3f}"
        f" sys {r.system_ms_per_call:.3f}"
        f" total {r.total_ms_per_call:.3f}{extra}; on-CPU (schedstat) {r.exec_ms_per_call:.3f};"
        f" idle {r.idle_cpu_ms_per_s:.1f} ms/s",
        flush=True,
    )


async def cpu_per_call(
    workdir: Path, rate: float, seconds: float, rounds: int, peers: tuple[str, ...]
) -> dict[str, Any]:
    calls = int(rate * seconds)
    runs: list[CpuRun] = []
    print(f"proxy_cpu: {calls} calls at {rate:g}/s per run, {rounds} round(s), peers {', '.join(peers)}")
    async with Processes(workdir / "logs") as procs:
        uas_port = free_udp_port(HOST)
        await procs.start("uas", uas_argv(HOST, uas_port), stdout_to_log=False)
        await asyncio.sleep(0.5)
        for rnd in range(rounds):
            # Alternate the order so a drift in the machine's load does not favour one peer.
            order = peers if rnd % 2 == 0 else tuple(reversed(peers))
            for peer in order:
                run = await _cpu_run(procs, workdir, peer, rnd, uas_port, rate, calls)
                runs.append(run)
                _print_run(run)
    summary = summarize(runs)
    for peer in peers:
        s = summary[peer]
        print(
            f"  {peer:9s} all rounds: user {s['user_ms_per_call']:.3f} sys {s['system_ms_per_call']:.3f}"
            f" total {s['total_ms_per_call']:.3f} CPU ms/call (on-CPU {s['exec_ms_per_call']:.3f}),"
            f" {s['failed']} failed of {s['calls']}"
        )
    if "ratio_baseline_total" in summary:
        print(f"  ratio baseline/kamailio: total {summary['ratio_baseline_total']:.2f}x")
    if "ratio_total" in summary:
        print(
            f"  ratio sipproxy/kamailio: total {summary['ratio_total']:.2f}x,"
            f" user {summary.get('ratio_user', float('nan')):.2f}x,"
            f" system {summary.get('ratio_system', float('nan')):.2f}x,"
            f" on-CPU (schedstat) {summary.get('ratio_exec', float('nan')):.2f}x"
        )
    return {
        "runs": [
            asdict(r) | {"user_ms_per_call": r.user_ms_per_call, "system_ms_per_call": r.system_ms_per_call}
            for r in runs
        ],
        "summary": summary,
    }


async def _db_init(procs: Processes, db_url: str) -> None:
    proc = await procs.start(
        "db-init", [sys.executable, "-m", "sipproxy.cli", "db", "init", "--db-url", db_url]
    )
    if await asyncio.wait_for(proc.wait(), 60) != 0:
        raise RuntimeError(f"sipproxy db init failed: {procs.log_tail('db-init')}")


def insert_sockets(db_path: Path, sockets: list[str]) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.executemany("INSERT INTO sockets (socket) VALUES (?)", [(s,) for s in sockets])


def udp_rcvbuf_errors() -> int:
    """The host-wide UDP RcvbufErrors counter (all processes): datagrams dropped on a full buffer."""
    lines = [
        line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")
    ]
    return int(dict(zip(lines[0], lines[1], strict=False))["RcvbufErrors"])


@dataclass(frozen=True)
class RatePeer:
    proc: asyncio.subprocess.Process
    port: int
    uas_port: int
    worker: int  # the pid whose CPU share is reported
    metrics_url: str | None  # ours: Prometheus text with drops by reason


async def _start_peer(procs: Processes, workdir: Path, peer: str, uas_port: int) -> RatePeer:
    """Ours serves one dynamic socket from a pool of one worker; Kamailio its one UDP worker."""
    listen_port = free_udp_port(HOST)
    if peer == "kamailio":
        proc = await start_kamailio(procs, workdir, (HOST, listen_port), (HOST, uas_port))
        return RatePeer(proc, listen_port, uas_port, proc.pid, None)
    db_path = workdir / "pool.sqlite"
    db_path.unlink(missing_ok=True)
    db_url = f"sqlite:///{db_path}"  # an absolute path gives sqlite:////abs
    await _db_init(procs, db_url)
    insert_sockets(db_path, [f"udp:{HOST}:{listen_port}"])
    proxy = await start_sipproxy(
        procs, workdir, "sipproxy-pool", pool_config(db_url, uas_port, free_tcp_port(HOST))
    )
    async with aiohttp.ClientSession() as session:
        pids = await proxy.worker_pids(session)
    worker = next(pid for name, pid in pids.items() if name.startswith("udp-pool"))
    return RatePeer(proxy.proc, listen_port, uas_port, worker, proxy.base_url + "/metrics")


async def proxy_drops(url: str | None) -> dict[str, int]:
    """sipproxy_dropped_packets_total summed by reason."""
    if url is None:
        return {}
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        text = await resp.text()
    drops: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("sipproxy_dropped_packets_total{"):
            labels, _, value = line.partition("} ")
            reason = labels.split('reason="', 1)[1].split('"', 1)[0] if 'reason="' in labels else "?"
            drops[reason] = drops.get(reason, 0) + int(float(value))
    return drops


async def _watch_drops(ports: dict[str, int], seen: dict[str, int], stop: asyncio.Event) -> None:
    """The highest drop count of each watched socket while the step runs (the uac's socket goes with it)."""
    while True:
        now = udp_drops()
        for role, port in ports.items():
            seen[role] = max(seen.get(role, 0), now.get(port, 0))
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def _step(
    procs: Processes, workdir: Path, peer: str, p: RatePeer, rate: float, seconds: float, attempt: int
) -> RateStep:
    calls = int(rate * seconds)
    uac_port = free_udp_port(HOST)
    ports = {"uac": uac_port, "proxy": p.port, "uas": p.uas_port}
    base = udp_drops()
    seen: dict[str, int] = {}
    stop = asyncio.Event()
    watcher = asyncio.get_running_loop().create_task(_watch_drops(ports, seen, stop))
    before, t0, host_drops = process_cpu(p.worker), time.monotonic(), udp_rcvbuf_errors()
    tree_before, drops_before = tree_cpu(p.proc.pid), await proxy_drops(p.metrics_url)
    name = f"uac-rate-{peer}-{rate:g}-{attempt}"
    try:
        stats = await run_uac(procs, name, f"{HOST}:{p.port}", HOST, rate, calls, workdir, uac_port)
    finally:
        stop.set()
        await watcher
    wall = time.monotonic() - t0
    drops_after = await proxy_drops(p.metrics_url)
    return RateStep(
        target_rate=rate,
        attempt=attempt,
        calls=calls,
        successful=stats.successful,
        failed=stats.failed,
        retransmissions=stats.retransmissions,
        achieved_rate=stats.achieved_rate,
        worker_cpu_share=(process_cpu(p.worker) - before).total / wall,
        tree_cpu_share=(tree_cpu(p.proc.pid) - tree_before).total / wall,
        failures=stats.failures,
        proxy_drops={
            k: v - drops_before.get(k, 0) for k, v in drops_after.items() if v - drops_before.get(k, 0)
        },
        socket_drops={
            role: n - (base.get(ports[role], 0) if role != "uac" else 0) for role, n in seen.items()
        },
        host_rcvbuf_errors=udp_rcvbuf_errors() - host_drops,
        sipp_watchdog=stats.watchdog,
        loadavg=load(),
    )


def _print_step(peer: str, step: RateStep) -> None:
    reasons = ", ".join(f"{k} {v}" for k, v in step.failures.items())
    print(
        f"  {peer} {step.target_rate:6g}/s try {step.attempt}: {step.successful}/{step.calls} ok,"
        f" {step.failed} failed{' (' + reasons + ')' if reasons else ''}, {step.retransmissions} retrans,"
        f" CPU {step.tree_cpu_share * 100:.0f}% of a core"
        f"{f' (pool worker {step.worker_cpu_share * 100:.0f}%)' if peer == 'sipproxy' else ''},"
        f" proxy drops {step.proxy_drops or 0}, socket drops {step.socket_drops},"
        f" host UDP buffer drops {step.host_rcvbuf_errors},"
        f" SIPp watchdog {step.sipp_watchdog}, load {step.loadavg}",
        flush=True,
    )


async def max_rate(
    workdir: Path, peers: list[str], rates: list[float], step_seconds: float
) -> dict[str, Any]:
    """Step the call rate up until a rate fails twice, the peers taking turns at each rate so that they meet
    the same machine. Ours: one dynamic UDP socket served by a pool of one worker; Kamailio (the reference
    for what SIPp and this machine manage): its one UDP worker. Each peer has its own SIPp uas.

    A failed step is tried once more after a pause: on a shared machine one stall of a few hundred
    milliseconds makes SIPp retransmit and the retransmissions snowball; both tries are reported."""
    steps: dict[str, list[RateStep]] = {peer: [] for peer in peers}
    print(
        f"max_rate {', '.join(peers)}: {', '.join(f'{r:g}' for r in rates)} calls/s, {step_seconds:g}s each"
    )
    async with Processes(workdir / "logs") as procs:
        running: dict[str, RatePeer] = {}
        for peer in peers:
            uas_port = free_udp_port(HOST)
            await procs.start(f"uas-rate-{peer}", uas_argv(HOST, uas_port), stdout_to_log=False)
            running[peer] = p = await _start_peer(procs, workdir, peer, uas_port)
            warm = await run_uac(
                procs,
                f"warmup-rate-{peer}",
                f"{HOST}:{p.port}",
                HOST,
                100,
                WARMUP_CALLS,
                workdir,
                free_udp_port(HOST),
            )
            if warm.failed or warm.successful < WARMUP_CALLS:
                raise RuntimeError(f"warm-up through {peer} failed: {warm}")
        for rate in rates:
            for peer in list(running):
                for attempt in (1, 2):
                    step = await _step(procs, workdir, peer, running[peer], rate, step_seconds, attempt)
                    steps[peer].append(step)
                    _print_step(peer, step)
                    await asyncio.sleep(1.0 if step.passed else 5.0)  # let stray retransmissions drain
                    if step.passed:
                        break
                if sustained(steps[peer]) != rate:
                    del running[peer]
            if not running:
                break
    out: dict[str, Any] = {}
    for peer in peers:
        best = sustained(steps[peer])
        print(
            f"  {peer}: highest rate with no failed call: {best:g}/s" if best else f"  {peer}: no step passed"
        )
        out[peer] = {"steps": [asdict(s) for s in steps[peer]], "sustained_rate": best}
    return out


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument("--rate", type=float, default=200.0, help="calls/s of the CPU runs (default 200)")
    parser.add_argument("--seconds", type=float, default=25.0, help="length of each CPU run (default 25)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per peer, order alternated (default 2)")
    parser.add_argument("--no-kamailio", action="store_true", help="measure sipproxy alone")
    parser.add_argument(
        "--baseline-python",
        help="also measure, in turns with this build, the sipproxy of this interpreter (another checkout's"
        " .venv/bin/python): peer 'baseline'",
    )
    parser.add_argument(
        "--with-floor",
        action="store_true",
        help="also measure bench.relay_floor: the same runtime relaying datagrams with no SIP work",
    )
    parser.add_argument(
        "--max-rate-steps",
        default="500,1000,1500,2000,2500,3000,3500,4000",
        help="call rates stepped through (ascending, at most 12); a peer stops at a rate failed twice",
    )
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--skip-max-rate", action="store_true")
    parser.add_argument("--max-rate-peers", default="sipproxy,kamailio", help="peers stepped (both)")


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    peers: tuple[str, ...] = ("sipproxy",) if args.no_kamailio else ("sipproxy", "kamailio")
    if args.with_floor:
        peers += ("floor",)
    if args.baseline_python:
        BASELINE_PYTHON[0] = str(args.baseline_python)
        peers += ("baseline",)
    out: dict[str, Any] = {}
    # Bounded whatever is asked: at most 5,000 calls/s for at most 120 s a run, 10 rounds.
    rate, seconds = min(max(args.rate, 1.0), 5000.0), min(max(args.seconds, 1.0), 120.0)
    if args.rounds > 0:
        out["cpu_per_call"] = await cpu_per_call(workdir, rate, seconds, min(args.rounds, 10), peers)
    if not args.skip_max_rate:
        rates = [float(r) for r in str(args.max_rate_steps).split(",") if r.strip()]
        rate_peers = [
            p.strip() for p in str(args.max_rate_peers).split(",") if p.strip() in ("sipproxy", "kamailio")
        ]
        rates = [r for r in rates if 0 < r <= 10000][:12]
        step_seconds = min(max(args.step_seconds, 1.0), 60.0)
        out["max_rate"] = await max_rate(workdir, rate_peers, rates, step_seconds)
    return out
