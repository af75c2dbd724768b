"""`python -m bench reliability`: faults and churn at the chart's worker counts (8 UDP workers per static
socket, 8 pool workers, 8 TCP workers), with what was lost and how long until everything was right again.
The figures are in docs/reliability.md.

Parts (`--rel-parts`, default all but `soak`, which takes 10 minutes):

- `reloads`: `--reload-count` (100) `sockets_reload`s, each adding another UDP and TCP socket or removing
  them, spread over a run of `--rel-rate` (300) calls/s through an unchanged dynamic socket served by the
  pool of 8: failed calls with SIPp tolerating a 180 after its 200 (as a real UA does), the same in SIPp's
  strict mode, and strict mode without reloads (what reordering alone costs); each reload's latency.
- `soak`: a reload every second for `--soak-seconds` (600) during the same load: failed calls, reload
  latency, and the proxy's memory and descriptors over the run.
- `workerkill`: `kill -9` of a pool worker (`--kill-victims`, default `udp-pool#0`, the member that serves
  while the load is light, and `udp-pool#5`, on standby) at `--rel-rate` calls/s spread over 10 dynamic
  sockets: failed calls; time until MI `ps` shows the replacement's pid, until a `sockets_reload` is
  acknowledged by every worker with the replacement (it holds the supervisor's lock until it has every
  socket, so the reload's answer marks that) with `sockets_list` all listening, and until the replacement
  has read datagrams; every socket answering OPTIONS afterwards.
- `database`, `operator`, `apiserver`, `pod`: SipSocket churn against the operator while a fault is
  injected (bench/reliability_churn.py).
- `scale`: 1,000 SipSockets (bench/reliability_scale.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import reliability_churn, reliability_scale
from bench.cpu import memory_and_fds
from bench.machine import load
from bench.operator_apply import percentile
from bench.peers import SipProxy, start_sipproxy
from bench.procs import Processes, free_tcp_port, free_udp_port
from bench.proxy_cpu import _db_init, insert_sockets
from bench.sipp import TOLERATE_REORDER, SippStats, run_uac, spread_scenario, uas_argv
from devenv.sipclient import send_options

HOST = "127.0.0.1"
PROXY_PARTS = ("reloads", "soak", "workerkill")
PARTS = (*PROXY_PARTS, *reliability_churn.PARTS, "scale")
DEFAULT_PARTS = tuple(p for p in PARTS if p != "soak")
POOL, TCP = 8, 8  # the chart's defaults


def _sqlite_delete(db_path: Path, sockets: list[str]) -> None:
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        conn.executemany("DELETE FROM sockets WHERE socket = ?", [(s,) for s in sockets])


async def start_pool_proxy(
    procs: Processes, workdir: Path, name: str, sockets: list[str], uas_port: int
) -> tuple[SipProxy, Path]:
    """A proxy at the chart's worker counts whose dynamic sockets are `sockets` (a SQLite table)."""
    db_path = workdir / f"{name}.sqlite"
    db_path.unlink(missing_ok=True)
    db_url = f"sqlite:///{db_path}"
    await _db_init(procs, db_url)
    insert_sockets(db_path, sockets)
    config: dict[str, Any] = {
        "mi": {"listen": f"{HOST}:{free_tcp_port(HOST)}"},
        "routes": [{"match": {}, "forward": f"sip:{HOST}:{uas_port}"}],
        "sockets_mgm": {"db_url": db_url, "processes": POOL, "max_sockets": 100},
        "tcp_workers": TCP,
        "log_level": "warning",
    }
    return await start_sipproxy(procs, workdir, name, config), db_path


def latency_summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "count": len(values),
        "p50_ms": statistics.median(values),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values),
    }


@dataclass
class ReloadRun:
    label: str
    tolerant: bool
    reloads: int
    rate: float
    calls: int
    successful: int
    failed: int
    failures: dict[str, int]
    retransmissions: int
    reload_ms: dict[str, float]
    reload_errors: int
    reloads_during_calls: int
    before: dict[str, int]
    after: dict[str, int]
    samples: list[dict[str, Any]]
    loadavg_start: str
    loadavg_end: str


async def reloads_under_load(
    procs: Processes,
    workdir: Path,
    label: str,
    rate: float,
    seconds: float,
    reloads: int,
    tolerant: bool,
    sample_every: float = 0.0,
) -> ReloadRun:
    """`reloads` reloads spread evenly over a run of `seconds` at `rate` calls/s through one unchanged
    dynamic socket; every reload adds another UDP and TCP socket, or removes them."""
    uas_port = free_udp_port(HOST)
    uas = await procs.start(f"uas-{label}", uas_argv(HOST, uas_port), stdout_to_log=False)
    steady, other = free_udp_port(HOST), free_tcp_port(HOST)
    loadavg_start = load()
    proxy, db_path = await start_pool_proxy(
        procs, workdir, f"proxy-{label}", [f"udp:{HOST}:{steady}"], uas_port
    )
    changing = [f"udp:{HOST}:{other}", f"tcp:{HOST}:{other}"]
    latencies: list[float] = []
    errors = 0
    samples: list[dict[str, Any]] = []
    try:
        root = proxy.proc.pid
        before = memory_and_fds(root)
        extra = list(TOLERATE_REORDER) if tolerant else []
        uac = asyncio.create_task(
            run_uac(
                procs,
                f"uac-{label}",
                f"{HOST}:{steady}",
                HOST,
                rate,
                int(rate * seconds),
                workdir,
                free_udp_port(HOST),
                extra,
            )
        )
        during = 0
        async with aiohttp.ClientSession() as session:
            if reloads:
                interval = max(seconds - 6.0, 1.0) / reloads
                t0 = time.monotonic() + 3.0
                next_sample = time.monotonic() + sample_every
                for i in range(reloads):
                    wait = t0 + i * interval - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if uac.done():
                        break
                    if i % 2 == 0:
                        await asyncio.to_thread(insert_sockets, db_path, changing)
                    else:
                        await asyncio.to_thread(_sqlite_delete, db_path, changing)
                    t = time.perf_counter()
                    try:
                        result = await proxy.mi(session, "sockets_reload")
                        latencies.append((time.perf_counter() - t) * 1000)
                        got = len(result["added"]) if i % 2 == 0 else len(result["removed"])
                        kept = [e["socket"] for e in result["kept"]]
                        if got != 2 or result["failed"] or f"udp:{HOST}:{steady}" not in kept:
                            errors += 1
                    except (RuntimeError, aiohttp.ClientError, TimeoutError):
                        errors += 1
                    during += 0 if uac.done() else 1
                    if sample_every and time.monotonic() >= next_sample:
                        next_sample += sample_every
                        sample = memory_and_fds(root) | {
                            "t_s": round(time.monotonic() - t0, 1),
                            "reload_p50_ms": statistics.median(latencies[-60:]) if latencies else None,
                            "load": load(),
                        }
                        samples.append(sample)
                        print(f"    {label}: {sample}", flush=True)
            stats: SippStats = await uac
        after = memory_and_fds(root)
    finally:
        await procs.stop(proxy.proc)
        await procs.stop(uas)
    return ReloadRun(
        label=label,
        tolerant=tolerant,
        reloads=len(latencies),
        rate=rate,
        calls=stats.created,
        successful=stats.successful,
        failed=stats.failed,
        failures=stats.failures,
        retransmissions=stats.retransmissions,
        reload_ms=latency_summary(latencies),
        reload_errors=errors,
        reloads_during_calls=during,
        before=before,
        after=after,
        samples=samples,
        loadavg_start=loadavg_start,
        loadavg_end=load(),
    )


def show_reload_run(r: ReloadRun) -> None:
    lat = r.reload_ms
    fails = ", ".join(f"{k} {v}" for k, v in r.failures.items())
    print(
        f"  {r.label}: {r.reloads} reloads ({r.reloads_during_calls} during the calls,"
        f" {r.reload_errors} wrong answers), {r.successful}/{r.calls} calls ok, {r.failed} failed"
        f"{' (' + fails + ')' if fails else ''}, {r.retransmissions} retrans; reload p50"
        f" {lat.get('p50_ms', 0):.1f} p99 {lat.get('p99_ms', 0):.1f} max {lat.get('max_ms', 0):.1f} ms;"
        f" RSS {r.before['rss_kib'] / 1024:.0f} -> {r.after['rss_kib'] / 1024:.0f} MiB,"
        f" fds {r.before['fds']} -> {r.after['fds']}; load {r.loadavg_start} -> {r.loadavg_end}",
        flush=True,
    )


@dataclass
class KillRun:
    victim: str
    rate: float
    calls: int
    successful: int
    failed: int
    failures: dict[str, int]
    retransmissions: int
    old_pid: int
    new_pid: int
    new_pid_s: float  # kill -> MI ps shows a new pid for the victim's name
    applied_s: float  # kill -> a sockets_reload acknowledged by every worker, sockets_list all listening
    first_read_s: float | None  # kill -> the replacement has read datagrams (None: not within the run)
    partial_seen: bool  # sockets_list said anything but listening meanwhile
    unanswered_after: list[str]
    loadavg: str


def _by_name(ps: Any) -> dict[str, dict[str, Any]]:
    items = ps.get("Processes", ps) if isinstance(ps, dict) else ps
    return {str(p["Name"]): p for p in items}


async def kill_one(
    procs: Processes, workdir: Path, victim: str, rate: float, seconds: float, at: float
) -> KillRun:
    uas_port = free_udp_port(HOST)
    uas = await procs.start(f"uas-kill-{victim}", uas_argv(HOST, uas_port), stdout_to_log=False)
    targets = [(HOST, free_udp_port(HOST)) for _ in range(10)]
    label = victim.replace("#", "")
    proxy, _ = await start_pool_proxy(
        procs, workdir, f"proxy-kill-{label}", [f"udp:{h}:{p}" for h, p in targets], uas_port
    )
    partial = False
    first_read: float | None = None
    try:
        scenario = spread_scenario(workdir, targets)
        uac = asyncio.create_task(
            run_uac(
                procs,
                f"uac-kill-{label}",
                f"{HOST}:{targets[0][1]}",
                HOST,
                rate,
                int(rate * seconds),
                workdir,
                free_udp_port(HOST),
                list(TOLERATE_REORDER),
                scenario,
            )
        )
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(at)
            old = int(_by_name(await proxy.mi(session, "ps"))[victim]["PID"])
            os.kill(old, signal.SIGKILL)
            t0 = time.monotonic()
            new = old
            while new == old:
                await asyncio.sleep(0.01)
                new = int(_by_name(await proxy.mi(session, "ps"))[victim]["PID"] or old)
            new_pid_s = time.monotonic() - t0
            result = await proxy.mi(session, "sockets_reload")
            listing = await proxy.mi(session, "sockets_list")
            applied_s = time.monotonic() - t0
            if result["failed"] or any(e.get("state") != "listening" for e in listing):
                partial = True
            while not uac.done():
                async with session.get(proxy.base_url + "/metrics") as resp:
                    await resp.read()  # collects every worker's counters
                entry = _by_name(await proxy.mi(session, "ps"))[victim]
                listing = await proxy.mi(session, "sockets_list")
                partial = partial or any(e.get("state") != "listening" for e in listing)
                if first_read is None and int(entry.get("Received") or 0) > 0 and int(entry["PID"]) == new:
                    first_read = time.monotonic() - t0
                await asyncio.sleep(0.2)
            stats = await uac
        unanswered = []
        for h, p in targets:
            try:
                if not send_options(h, p, timeout=2).startswith("SIP/2.0 200"):
                    unanswered.append(f"udp:{h}:{p}")
            except (TimeoutError, OSError):
                unanswered.append(f"udp:{h}:{p}")
    finally:
        await procs.stop(proxy.proc)
        await procs.stop(uas)
    return KillRun(
        victim=victim,
        rate=rate,
        calls=stats.created,
        successful=stats.successful,
        failed=stats.failed,
        failures=stats.failures,
        retransmissions=stats.retransmissions,
        old_pid=old,
        new_pid=new,
        new_pid_s=new_pid_s,
        applied_s=applied_s,
        first_read_s=first_read,
        partial_seen=partial,
        unanswered_after=unanswered,
        loadavg=load(),
    )


def show_kill(k: KillRun) -> None:
    fails = ", ".join(f"{a} {b}" for a, b in k.failures.items())
    read = f"{k.first_read_s:.2f}s" if k.first_read_s is not None else "not within the run"
    print(
        f"  kill -9 {k.victim} (pid {k.old_pid}) at {k.rate:g} calls/s: {k.successful}/{k.calls} calls ok,"
        f" {k.failed} failed{' (' + fails + ')' if fails else ''}, {k.retransmissions} retrans;"
        f" new pid {k.new_pid} in ps after {k.new_pid_s:.2f}s, every socket applied (reload acknowledged by"
        f" all workers) after {k.applied_s:.2f}s, first datagrams read by it after {read};"
        f" sockets_list {'NOT always' if k.partial_seen else 'always'} listening;"
        f" {len(k.unanswered_after)} sockets not answering afterwards; load {k.loadavg}",
        flush=True,
    )


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument("--rel-parts", default=",".join(DEFAULT_PARTS), help=f"any of {', '.join(PARTS)}")
    parser.add_argument("--rel-rate", type=float, default=300.0, help="calls/s of the proxy parts (300)")
    parser.add_argument("--reload-count", type=int, default=100, help="reloads of the reloads part (100)")
    parser.add_argument("--reload-seconds", type=float, default=40.0, help="length of each reloads run (40)")
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="length of the soak (600)")
    parser.add_argument("--kill-victims", default="udp-pool#0,udp-pool#5", help="MI ps names to kill -9")
    parser.add_argument("--kill-seconds", type=float, default=30.0, help="length of each kill run (30)")
    reliability_churn.add_arguments(parser)
    reliability_scale.add_arguments(parser)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    parts = [p.strip() for p in str(args.rel_parts).split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise RuntimeError(f"unknown reliability parts {unknown}; choose from {', '.join(PARTS)}")
    rate = min(max(float(args.rel_rate), 1.0), 3000.0)
    out: dict[str, Any] = {}
    if any(p in PROXY_PARTS for p in parts):
        async with Processes(workdir / "logs") as procs:
            if "reloads" in parts:
                count = max(1, min(int(args.reload_count), 1000))
                seconds = min(max(float(args.reload_seconds), 10.0), 600.0)
                print(
                    f"reliability reloads: {count} reloads during {rate:g} calls/s for {seconds:g}s,"
                    " pool of 8"
                )
                runs = []
                for label, reloads, tolerant in (
                    ("tolerant", count, True),
                    ("strict", count, False),
                    ("strict-no-reloads", 0, False),
                ):
                    r = await reloads_under_load(procs, workdir, label, rate, seconds, reloads, tolerant)
                    show_reload_run(r)
                    runs.append(asdict(r))
                out["reloads"] = runs
            if "soak" in parts:
                seconds = min(max(float(args.soak_seconds), 10.0), 7200.0)
                print(f"reliability soak: a reload every second for {seconds:g}s during {rate:g} calls/s")
                r = await reloads_under_load(
                    procs, workdir, "soak", rate, seconds + 6.0, int(seconds), True, sample_every=60.0
                )
                show_reload_run(r)
                out["soak"] = asdict(r)
            if "workerkill" in parts:
                victims = [v.strip() for v in str(args.kill_victims).split(",") if v.strip()]
                seconds = min(max(float(args.kill_seconds), 10.0), 300.0)
                print(f"reliability workerkill: {victims} at {rate:g} calls/s over 10 dynamic sockets")
                kills = []
                for victim in victims:
                    k = await kill_one(procs, workdir, victim, rate, seconds, at=seconds / 3)
                    show_kill(k)
                    kills.append(asdict(k))
                out["workerkill"] = kills
    churn_parts = [p for p in parts if p in reliability_churn.PARTS]
    if churn_parts:
        out.update(await reliability_churn.run(args, workdir, churn_parts))
    if "scale" in parts:
        out["scale"] = await reliability_scale.run(args, workdir)
    return out


if __name__ == "__main__":  # pragma: no cover - use `python -m bench reliability`
    sys.exit("use: python -m bench reliability [--rel-parts ...]")
