"""`python -m bench handover`: a proxy replaced while SIPp places calls, without and with the socket handover.

Parts (`--handover-parts`, default `sockets,processes`; `upgrade` needs the local node and takes minutes):

- `sockets`: the handover mechanisms compared at the socket level, before one was chosen
  (bench/handover_sockets.py): SO_REUSEPORT on both sides (the old socket closed with what it queued, or
  drained first) against passing the old socket itself to the new process.
- `processes`: two `sipproxy` processes on loopback with one static and one dynamic UDP socket, SIPp at
  `--handover-rate` calls/s on each. `restart`: the old proxy stopped (SIGTERM), then the new one started, as
  the DaemonSet's `maxSurge: 0` does; `handover`: the new proxy started beside the old one with `handover`
  on, the old one stopped once the new one serves (what the chart's surge does). Failed calls and SIPp's
  retransmissions (each one a message that got no answer in time) per replacement.
- `upgrade`: the chart on the local node (devenv/localcluster), proxy DaemonSet in hostNetwork mode, one
  static socket (`proxy.sockets`) and one SipSocket on the node's address, SIPp at `--handover-rate` calls/s
  on each; `helm upgrade --wait` of a value that rolls the DaemonSet (a pod annotation), first with
  `proxy.hostNetwork.handover=false` (maxSurge 0: today's behaviour before handover), then `true`. Between the
  two, the switch itself is done as docs/reliability.md tells operators (the old pod, which cannot hand over,
  deleted by hand). Run it under the node lock: `flock /tmp/sipsockets-node.lock python -m bench handover
  --handover-parts upgrade`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench import handover_sockets
from bench.machine import load
from bench.procs import Processes, free_tcp_port, free_udp_port
from bench.proxy_cpu import _db_init, insert_sockets
from bench.sipp import TOLERATE_REORDER, SippStats, parse_stat_csv, uac_argv, uas_argv

PARTS = ("sockets", "processes", "upgrade")
HOST = "127.0.0.1"
# Calls keep coming this long before the replacement starts and after it is over.
MARGIN_S = 5.0


@dataclass(frozen=True)
class Replacement:
    part: str  # processes | upgrade
    mode: str  # restart (maxSurge 0) | handover
    round: int
    rate: float  # calls/s on each socket
    socket: str  # static | dynamic
    calls: int
    successful: int
    failed: int
    failures: dict[str, int]
    retransmissions: int
    replace_s: float  # start of the replacement until the new proxy serves (and the old one is gone)
    loadavg: str


class Uac:
    """SIPp placing calls at a fixed rate until told to stop (SIGUSR1: no new call, the open ones finish)."""

    def __init__(self, procs: Processes, name: str, workdir: Path) -> None:
        self.procs = procs
        self.name = name
        self.stat_file = workdir / f"{name}.csv"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, target: str, host: str, rate: float) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.stat_file.unlink()
        argv = uac_argv(
            target,
            host,
            free_udp_port(host),
            rate,
            int(rate * 3600),
            self.stat_file,
            ("-s", "uas", *TOLERATE_REORDER),
        )
        self.proc = await self.procs.start(self.name, argv, stdout_to_log=False)

    async def finish(self) -> SippStats:
        assert self.proc is not None
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGUSR1)
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        finally:
            await self.procs.stop(self.proc)
        try:
            return parse_stat_csv(self.stat_file.read_text())
        except (OSError, ValueError, KeyError) as exc:
            raise RuntimeError(
                f"{self.name}: no SIPp statistics ({exc}); {self.procs.log_tail(self.name)}"
            ) from None


def _record(
    part: str, mode: str, rnd: int, rate: float, which: str, stats: SippStats, replace_s: float
) -> Replacement:
    r = Replacement(
        part,
        mode,
        rnd,
        rate,
        which,
        stats.created,
        stats.successful,
        stats.failed,
        stats.failures,
        stats.retransmissions,
        round(replace_s, 2),
        load(),
    )
    print(
        f"  {part} {mode:8s} round {rnd} {which:7s}: {r.calls} calls, {r.failed} failed {r.failures or ''}, "
        f"{r.retransmissions} retransmissions; replaced in {r.replace_s:.1f}s (load {r.loadavg})",
        flush=True,
    )
    return r


# --- processes ---------------------------------------------------------------------------------------------


async def _serving_pid(session: aiohttp.ClientSession, mi_url: str) -> int | None:
    body = {"jsonrpc": "2.0", "method": "ps", "id": 1}
    try:
        async with session.post(mi_url, json=body, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            data = await resp.json(content_type=None)
        return int(data["result"]["Processes"][0]["PID"])
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError, TypeError):
        return None


async def _ready(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with session.get(base + "/readyz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _start_proxy(
    procs: Processes, workdir: Path, name: str, config: dict[str, Any]
) -> asyncio.subprocess.Process:
    """Start one and wait until it answers the MI address itself and is ready."""
    cfg = workdir / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = await procs.start(name, [sys.executable, "-m", "sipproxy.cli", "--config", str(cfg)])
    base = f"http://{config['metrics']['listen']}"
    mi_url = f"http://{config['mi']['listen']}/mi"
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession() as session:
        while not (await _serving_pid(session, mi_url) == proc.pid and await _ready(session, base)):
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not take over: {procs.log_tail(name)}")
            await asyncio.sleep(0.1)
    return proc


async def _sigterm(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to the supervisor alone, as the kubelet sends it to a container's first process."""
    proc.send_signal(signal.SIGTERM)
    if await asyncio.wait_for(proc.wait(), 60) != 0:
        raise RuntimeError(f"proxy pid {proc.pid} exited with {proc.returncode}")


async def processes_part(workdir: Path, rate: float, rounds: int) -> list[Replacement]:
    out: list[Replacement] = []
    async with Processes(workdir / "logs") as procs:
        uas_port = free_udp_port(HOST)
        await procs.start("uas", uas_argv(HOST, uas_port))
        for mode in ("restart", "handover"):
            static_port, dynamic_port = free_udp_port(HOST), free_udp_port(HOST)
            db_path = workdir / f"{mode}.sqlite"
            db_path.unlink(missing_ok=True)
            db_url = f"sqlite:///{db_path}"
            await _db_init(procs, db_url)
            insert_sockets(db_path, [f"udp:{HOST}:{dynamic_port}"])
            config: dict[str, Any] = {
                "sockets": [f"udp:{HOST}:{static_port}"],
                "udp_workers": 4,
                "tcp_workers": 1,
                "sockets_mgm": {"db_url": db_url, "processes": 4},
                "mi": {"listen": f"{HOST}:{free_tcp_port(HOST)}"},
                "metrics": {"listen": f"{HOST}:{free_tcp_port(HOST)}"},
                "routes": [{"match": {"ruri": "^sip:uas@"}, "forward": f"sip:{HOST}:{uas_port}"}],
                "log_level": "warning",
            }
            if mode == "handover":
                config["handover"] = {"name": f"bench-{os.getpid()}-{static_port}"}
            generation = 0
            current = await _start_proxy(procs, workdir, f"{mode}-{generation}", config)
            for rnd in range(rounds):
                uacs = {
                    which: Uac(procs, f"uac-{mode}-{rnd}-{which}", workdir) for which in ("static", "dynamic")
                }
                for which, port in (("static", static_port), ("dynamic", dynamic_port)):
                    await uacs[which].start(f"{HOST}:{port}", HOST, rate)
                await asyncio.sleep(MARGIN_S)
                t0 = time.monotonic()
                generation += 1
                name = f"{mode}-{generation}"
                if mode == "restart":
                    await _sigterm(current)
                    current = await _start_proxy(procs, workdir, name, config)
                else:
                    new = await _start_proxy(procs, workdir, name, config)
                    await _sigterm(current)
                    current = new
                replace_s = time.monotonic() - t0
                await asyncio.sleep(MARGIN_S)
                for which, uac in uacs.items():
                    out.append(_record("processes", mode, rnd, rate, which, await uac.finish(), replace_s))
            await procs.stop(current, grace=30)
    return out


# --- upgrade (the local node) -------------------------------------------------------------------------------


def _upgrade_part_blocking(workdir: Path, rate: float, rounds: int) -> list[Replacement]:
    """Synchronous (the devenv cluster helpers are); SIPp runs in an event loop of its own per round."""
    from devenv import images
    from devenv.localcluster import LocalCluster, chart, node_environment_problems
    from devenv.processes import free_port

    problems = node_environment_problems()
    if problems:
        raise RuntimeError(f"this machine cannot run the local node: {problems}")
    built = images.build_all()
    cluster = LocalCluster(workdir / "node")
    cluster.start(images_to_import=[r for r in built.all() if r != built.pause])
    out: list[Replacement] = []
    try:
        ip = cluster.node_ip
        chart.provide_volumes(cluster)
        mi_port, metrics_port = free_port(ip), free_port(ip)
        uas_port, static_port, dynamic_port = free_port(ip), free_port(ip), free_port(ip)
        uas = _start_background_uas(workdir, ip, uas_port)
        try:

            def values(handover: bool, rnd: int) -> dict[str, Any]:
                v = chart.values(
                    built,
                    mi_port,
                    metrics_port,
                    sockets=[f"udp:{ip}:{static_port}"],
                    udpWorkers=4,
                    tcpWorkers=2,
                    socketsMgm={"processes": 4, "maxSockets": 20},
                    routes=[{"match": {"ruri": "^sip:uas@"}, "forward": f"sip:{ip}:{uas_port}"}],
                    hostNetwork={"handover": handover},
                    podAnnotations={"bench.sipsockets.io/round": f"{handover}-{rnd}"},
                )
                return v

            chart.helm(cluster, "install", values(False, 0), workdir / "values-install.json")
            _apply_sipsocket(cluster, chart.NAMESPACE, ip, dynamic_port)
            for handover in (False, True):
                mode = "handover" if handover else "restart"
                if handover:
                    _switch_to_handover(cluster, chart, values(True, 0), workdir)
                _wait_answering(ip, (static_port, dynamic_port))
                for rnd in range(1, rounds + 1):
                    ports = {"static": static_port, "dynamic": dynamic_port}
                    asyncio.run(
                        _one_upgrade(
                            cluster, chart, values(handover, rnd), workdir, mode, rnd, ip, rate, ports, out
                        )
                    )
        finally:
            uas.kill()
            uas.wait()
    finally:
        cluster.stop()
    return out


def _start_background_uas(workdir: Path, ip: str, port: int) -> subprocess.Popen[bytes]:
    with (workdir / "uas.log").open("ab") as log:
        proc = subprocess.Popen(uas_argv(ip, port), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    time.sleep(1)
    return proc


def _apply_sipsocket(cluster: Any, ns: str, ip: str, port: int) -> None:
    obj = {
        "apiVersion": "sipsockets.io/v1alpha1",
        "kind": "SipSocket",
        "metadata": {"name": "bench-dynamic", "namespace": ns},
        "spec": {"protocol": "udp", "address": ip, "port": port},
    }
    deadline = time.monotonic() + 180
    while True:
        r = cluster.kubectl("apply", "-f", "-", input=json.dumps(obj), check=False)
        if r.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"SipSocket refused: {r.stderr}")
        time.sleep(2)
    while True:
        got = cluster.get_json("sipsocket", "bench-dynamic", namespace=ns, check=False)
        conds = {c["type"]: c["status"] for c in got.get("status", {}).get("conditions", [])}
        if conds.get("Ready") == "True":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"SipSocket not Ready: {got.get('status')}")
        time.sleep(2)


def _wait_answering(ip: str, ports: tuple[int, ...]) -> None:
    from bench.sipp import SIPP

    scenario = Path(__file__).resolve().parents[1] / "tests" / "integration" / "scenarios" / "options.xml"
    for port in ports:
        deadline = time.monotonic() + 180
        while True:
            r = subprocess.run(
                [SIPP, "-sf", str(scenario), "-m", "1", "-i", ip, "-p", str(free_udp_port(ip)),
                 "-timeout", "10s", "-timeout_error", "-nostdin", f"{ip}:{port}"],
                capture_output=True, timeout=60, check=False, cwd="/tmp",
            )  # fmt: skip
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answers on {ip}:{port}")
            time.sleep(2)


def _proxy_pods(cluster: Any, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json(
        "pods", "-l", "app.kubernetes.io/component=proxy", namespace=ns
    )["items"]
    return items


def _switch_to_handover(cluster: Any, chart: Any, values: dict[str, Any], workdir: Path) -> None:
    """The first upgrade to handover: the running pod cannot hand over, so it is deleted once the new
    DaemonSet exists (docs/reliability.md, what an operator must know). Not measured."""
    old = {p["metadata"]["uid"] for p in _proxy_pods(cluster, chart.NAMESPACE)}
    values_file = workdir / "values-switch.json"
    values_file.write_text(json.dumps(values))
    cluster.helm(
        "upgrade", chart.RELEASE, str(chart.CHART), "--namespace", chart.NAMESPACE,
        "--values", str(values_file), timeout=300,
    )  # fmt: skip
    for pod in _proxy_pods(cluster, chart.NAMESPACE):
        if pod["metadata"]["uid"] in old:
            cluster.kubectl(
                "delete", "pod", pod["metadata"]["name"], "-n", chart.NAMESPACE, "--wait=true", timeout=180
            )
    _wait_rolled(cluster, chart.NAMESPACE, values["proxy"]["podAnnotations"])


def _wait_rolled(cluster: Any, ns: str, annotations: dict[str, str]) -> None:
    """Until one proxy pod is left: Ready, of the new generation (helm's --wait may return before the old pod
    is gone, and with maxUnavailable 1 before the new one is Ready)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        pods = _proxy_pods(cluster, ns)
        if len(pods) == 1 and not pods[0]["metadata"].get("deletionTimestamp"):
            pod = pods[0]
            conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            current = annotations.items() <= pod["metadata"].get("annotations", {}).items()
            if current and conds.get("Ready") == "True":
                return
        time.sleep(0.5)
    raise RuntimeError("the proxy DaemonSet did not finish rolling within 600 s")


async def _one_upgrade(
    cluster: Any,
    chart: Any,
    values: dict[str, Any],
    workdir: Path,
    mode: str,
    rnd: int,
    ip: str,
    rate: float,
    ports: dict[str, int],
    out: list[Replacement],
) -> float:
    async with Processes(workdir / "logs") as procs:
        uacs = {which: Uac(procs, f"uac-upgrade-{mode}-{rnd}-{which}", workdir) for which in ports}
        for which, port in ports.items():
            await uacs[which].start(f"{ip}:{port}", ip, rate)
        await asyncio.sleep(MARGIN_S)
        t0 = time.monotonic()
        await asyncio.to_thread(chart.helm, cluster, "upgrade", values, workdir / f"values-{mode}-{rnd}.json")
        await asyncio.to_thread(_wait_rolled, cluster, chart.NAMESPACE, values["proxy"]["podAnnotations"])
        replace_s = time.monotonic() - t0
        await asyncio.sleep(MARGIN_S)
        for which, uac in uacs.items():
            out.append(_record("upgrade", mode, rnd, rate, which, await uac.finish(), replace_s))
    return replace_s


# --- entry ------------------------------------------------------------------------------------------------


def summarize(runs: list[Replacement]) -> list[dict[str, Any]]:
    rows = []
    for part in ("processes", "upgrade"):
        for mode in ("restart", "handover"):
            mine = [r for r in runs if r.part == part and r.mode == mode]
            if not mine:
                continue
            rows.append(
                {
                    "part": part,
                    "mode": mode,
                    "replacements": len({r.round for r in mine}),
                    "calls": sum(r.calls for r in mine),
                    "failed": sum(r.failed for r in mine),
                    "failed_per_replacement_max": max(
                        sum(r.failed for r in mine if r.round == rnd) for rnd in {r.round for r in mine}
                    ),
                    "retransmissions": sum(r.retransmissions for r in mine),
                    "replace_s_median": sorted(r.replace_s for r in mine)[len(mine) // 2],
                }
            )
    return rows


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument("--handover-parts", default="sockets,processes", help=f"any of {', '.join(PARTS)}")
    parser.add_argument("--handover-rate", type=float, default=200.0, help="calls/s on each socket (200)")
    parser.add_argument("--handover-rounds", type=int, default=3, help="replacements per mode (3)")
    parser.add_argument("--handover-sockets-rounds", type=int, default=10, help="trials per mechanism (10)")
    parser.add_argument(
        "--handover-sockets-work-us",
        type=float,
        default=100.0,
        help="CPU per message in the sockets part (100)",
    )


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    parts = [p for p in args.handover_parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise RuntimeError(f"unknown handover parts {unknown}; choose from {', '.join(PARTS)}")
    result: dict[str, Any] = {}
    if "sockets" in parts:
        print("handover sockets: the mechanisms at the socket level", flush=True)
        result["sockets"] = await asyncio.to_thread(
            handover_sockets.run_all,
            args.handover_sockets_rounds,
            5000,
            1000,
            3.0,
            args.handover_sockets_work_us / 1e6,
        )
        for row in result["sockets"]["summary"]:
            print(f"  {row}", flush=True)
    runs: list[Replacement] = []
    if "processes" in parts:
        print(f"handover processes: {args.handover_rate:g} calls/s on each of two sockets", flush=True)
        runs += await processes_part(workdir, args.handover_rate, args.handover_rounds)
    if "upgrade" in parts:
        print(f"handover upgrade: helm upgrade on the local node, {args.handover_rate:g} calls/s per socket")
        runs += await asyncio.to_thread(
            _upgrade_part_blocking, workdir, args.handover_rate, args.handover_rounds
        )
    result["runs"] = [asdict(r) for r in runs]
    result["summary"] = summarize(runs)
    for row in result["summary"]:
        print(f"  {row}", flush=True)
    return result
