"""The churn parts of `python -m bench reliability`: SipSockets created, changed and deleted through the API
server (devenv/churn.py) while one fault is injected, then the time until everything converged (the table
holds exactly one owned row per live SipSocket, every one Ready, the proxy listing exactly the table).

The API-server tier as in the e2e tests: etcd + kube-apiserver (devenv.controlplane), one proxy "pod"
(devenv.fakepods: a real sipproxy at the chart's worker counts), the operator as a real process with its
default settings (resync 60 s, MI timeout 5 s, Lease duration 15 s: a SIGKILLed operator's successor waits
that long before it writes). Addresses in 127.78.x.y, clear of the e2e tests' and the other benchmarks'.

- `database`: PostgreSQL (devenv.databases) stopped for `--outage-seconds` (30) during `--db-churn` (100)
  operations; what the conditions said meanwhile, and that deletions kept their finalizer until it returned.
- `operator`: the operator SIGKILLed `--kills` (20) times at random moments of `--op-churn` (200)
  operations, started again at once each time.
- `apiserver`: kube-apiserver stopped and started again (etcd kept) during `--api-churn` (100) operations.
- `pod`: the proxy pod deleted (graceful stop, Pod object deleted) and created anew during the same churn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from bench.machine import load
from bench.operator_apply import CRD, OperatorProc, db_init, free_mi_port
from devenv import churn
from devenv.controlplane import ControlPlane
from devenv.databases import PostgresServer
from devenv.fakepods import MI_PORT, ProxyPod
from devenv.kubeapi import ApiClient, Watch, crd_path

PARTS = ("database", "operator", "apiserver", "pod")
POD_IP = "127.78.0.1"


def addresses(part: int) -> Iterator[str]:
    """127.78.<10 + 10 * part + i // 250>.<1 + i % 250>: a range of its own per part."""
    i = 0
    while True:
        yield f"127.78.{10 + part * 10 + i // 250}.{1 + i % 250}"
        i += 1


def pod_config(db_url: str) -> dict[str, Any]:
    # The chart's worker counts (8 UDP per static socket, 8 in the pool, 8 TCP): the proxy's defaults.
    return {"sockets_mgm": {"db_url": db_url, "max_sockets": 1000}, "log_level": "warning"}


class Setup:
    """One namespace's world: the proxy pod, the operator, the API client and a watch of the SipSockets."""

    def __init__(self, cp: ControlPlane, namespace: str, db_url: str, workdir: Path) -> None:
        self.cp, self.namespace, self.db_url, self.workdir = cp, namespace, db_url, workdir
        cp.ensure_namespace(namespace)
        self.pod = ProxyPod(cp, namespace, "sipproxy-0", POD_IP, pod_config(db_url), workdir)
        self.operator = OperatorProc(cp, namespace, db_url, workdir / f"operator-{namespace}.log")
        self.api = ApiClient(cp.kubeconfig)
        self.watch = Watch(self.api, crd_path(churn.GROUP, churn.VERSION, churn.PLURAL, namespace))
        self.observer = churn.Observer(self.watch, db_url, {self.pod.name: self.pod.mi_url})
        self.churn = churn.Churn(self.api, namespace)

    def __enter__(self) -> Setup:
        self.pod.start(timeout=120)
        self.operator.start()
        self.watch.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.watch.__exit__()
        self.operator.stop()
        self.pod.stop()
        release = '{"metadata":{"finalizers":null}}'
        out = self.cp.kubectl("get", "sipsockets", "-n", self.namespace, "-o", "name", check=False)
        for ref in out.stdout.split():
            self.cp.kubectl("patch", ref, "-n", self.namespace, "--type=merge", "-p", release, check=False)


def kill_operator(op: OperatorProc) -> None:
    if op.proc is not None and op.proc.poll() is None:
        os.killpg(op.proc.pid, signal.SIGKILL)
        op.proc.wait(10)
    op.proc = None


async def churn_with_fault(
    setup: Setup,
    ops: list[churn.Op],
    rate: float,
    fault: Callable[[float], Awaitable[dict[str, Any]]],
    converge_limit: float,
) -> dict[str, Any]:
    """Runs the churn in a thread and `fault(t0)` beside it; then waits until converged. The fault returns
    its own figures, with `fault_end`: the monotonic time the system was whole again."""
    expected = churn.expected_after(ops)
    t0 = time.monotonic()
    load_start = load()
    churn_task = asyncio.create_task(asyncio.to_thread(setup.churn.run, ops, rate))
    figures = await fault(t0)
    await churn_task
    churn_end = time.monotonic()
    converge_s = await asyncio.to_thread(setup.observer.wait, expected, converge_limit)
    done = time.monotonic()
    unanswered = await asyncio.to_thread(churn.unanswered, expected)
    fault_end = float(figures.pop("fault_end"))
    kinds = {k: sum(1 for o in ops if o.kind == k) for k in ("create", "update", "delete")}
    return {
        "operations": len(ops),
        "by_kind": kinds,
        "live_at_end": len(expected),
        "churn_seconds": churn_end - t0,
        "api_retries": setup.churn.retries,
        # The figure: from the later of the fault's end and the last operation taken by the API.
        "converged_s": done - max(fault_end, churn_end),
        "converged_after_fault_end_s": done - fault_end,
        "converged_after_last_operation_s": done - churn_end,
        "waited_for_convergence_s": converge_s,
        "unanswered_after": unanswered,
        "convergence": setup.observer.history,
        "loadavg_start": load_start,
        "loadavg_end": load(),
        **figures,
    }


def conditions_now(watch: Watch, names: set[str]) -> dict[str, int]:
    """How many of `names` show each Programmed reason, and how many are being deleted."""
    counts: dict[str, int] = {}
    for name, body in watch.snapshot().items():
        if name not in names:
            continue
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            counts["deleting (finalizer kept)"] = counts.get("deleting (finalizer kept)", 0) + 1
            continue
        programmed = churn._condition(body, "Programmed")
        key = f"Programmed={programmed.get('status')} {programmed.get('reason')}"
        counts[key] = counts.get(key, 0) + 1
    return counts


async def database_part(cp: ControlPlane, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    pg = PostgresServer(workdir / "pg")
    pg.start()
    try:
        db_url = pg.create_database("reliability")
        db_init(db_url)
        ops = churn.plan(int(args.db_churn), seed=3, addresses=addresses(0), prefix="db")
        rate = float(args.churn_rate)
        outage = float(args.outage_seconds)
        with Setup(cp, "rel-database", db_url, workdir) as setup:

            async def fault(t0: float) -> dict[str, Any]:
                await asyncio.sleep(len(ops) / rate * 0.3)
                before = setup.churn.done
                await asyncio.to_thread(pg.halt)
                down_at = time.monotonic()
                samples = []
                while time.monotonic() - down_at < outage:
                    await asyncio.sleep(1.0)
                    touched = {o.name for o in ops[before : setup.churn.done] if o.kind != "delete"}
                    deleted = {o.name for o in ops[before : setup.churn.done] if o.kind == "delete"}
                    samples.append(
                        {
                            "t_s": round(time.monotonic() - down_at, 1),
                            "applied_during_outage": len(touched),
                            "of_those": conditions_now(setup.watch, touched),
                            "deleted_during_outage": len(deleted),
                            "of_deleted": conditions_now(setup.watch, deleted),
                            "all": conditions_now(setup.watch, set(setup.watch.snapshot())),
                        }
                    )
                ops_during = setup.churn.done - before
                await asyncio.to_thread(pg.resume)
                return {
                    "outage_s": time.monotonic() - down_at,
                    "operations_during_outage": ops_during,
                    "during_outage": samples,
                    "fault_end": time.monotonic(),
                }

            return await churn_with_fault(setup, ops, rate, fault, float(args.converge_limit))
    finally:
        pg.stop()


async def operator_part(cp: ControlPlane, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    db_url = f"sqlite:///{workdir / 'operator-kills.sqlite'}"
    db_init(db_url)
    ops = churn.plan(int(args.op_churn), seed=4, addresses=addresses(1), prefix="op")
    rate = float(args.churn_rate)
    kills = int(args.kills)
    rng = random.Random(4)
    with Setup(cp, "rel-operator", db_url, workdir) as setup:

        async def fault(t0: float) -> dict[str, Any]:
            span = len(ops) / rate
            moments = sorted(rng.uniform(0.05 * span, span) for _ in range(kills))
            at: list[float] = []
            for moment in moments:
                wait = t0 + moment - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                kill_operator(setup.operator)
                setup.operator.start()
                at.append(round(time.monotonic() - t0, 2))
            return {"kills": len(at), "killed_at_s": at, "fault_end": time.monotonic()}

        return await churn_with_fault(setup, ops, rate, fault, float(args.converge_limit))


async def apiserver_part(cp: ControlPlane, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    db_url = f"sqlite:///{workdir / 'apiserver.sqlite'}"
    db_init(db_url)
    ops = churn.plan(int(args.api_churn), seed=5, addresses=addresses(2), prefix="api")
    rate = float(args.churn_rate)
    with Setup(cp, "rel-apiserver", db_url, workdir) as setup:

        async def fault(t0: float) -> dict[str, Any]:
            await asyncio.sleep(len(ops) / rate * 0.3)
            down = time.monotonic()
            await asyncio.to_thread(cp.stop_apiserver)
            stopped = time.monotonic()
            await asyncio.to_thread(cp.start_apiserver)
            back = time.monotonic()
            return {
                "apiserver_stop_s": stopped - down,
                "apiserver_unavailable_s": back - down,
                "fault_end": back,
            }

        return await churn_with_fault(setup, ops, rate, fault, float(args.converge_limit))


async def pod_part(cp: ControlPlane, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    db_url = f"sqlite:///{workdir / 'pod.sqlite'}"
    db_init(db_url)
    ops = churn.plan(int(args.api_churn), seed=6, addresses=addresses(3), prefix="pod")
    rate = float(args.churn_rate)
    with Setup(cp, "rel-pod", db_url, workdir) as setup:

        async def fault(t0: float) -> dict[str, Any]:
            await asyncio.sleep(len(ops) / rate * 0.3)
            down = time.monotonic()
            await asyncio.to_thread(setup.pod.stop)  # graceful stop, the Pod object deleted
            await asyncio.to_thread(setup.pod.start, 120)  # a new Pod, a new process
            back = time.monotonic()
            return {"pod_replaced_in_s": back - down, "fault_end": back}

        return await churn_with_fault(setup, ops, rate, fault, float(args.converge_limit))


FAULTS: dict[str, Callable[[ControlPlane, Path, argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "database": database_part,
    "operator": operator_part,
    "apiserver": apiserver_part,
    "pod": pod_part,
}


def show(name: str, r: dict[str, Any]) -> None:
    keys = [k for k in r if k not in ("during_outage", "killed_at_s", "convergence")]
    print(f"  {name}: " + ", ".join(f"{k} {r[k]}" for k in keys), flush=True)
    for sample in r.get("during_outage", [])[:: max(1, len(r.get("during_outage", [])) // 6)]:
        print(f"    outage t={sample['t_s']}s: {json.dumps(sample)}", flush=True)
    for t, n, first in r.get("convergence", []):
        print(f"    +{t}s: {n} problems, e.g. {first}", flush=True)


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument("--churn-rate", type=float, default=2.0, help="churn operations per second (2)")
    parser.add_argument("--db-churn", type=int, default=100, help="operations of the database part (100)")
    parser.add_argument("--outage-seconds", type=float, default=30.0, help="database outage (30)")
    parser.add_argument("--op-churn", type=int, default=200, help="operations of the operator part (200)")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the operator (20)")
    parser.add_argument("--api-churn", type=int, default=100, help="operations of apiserver and pod (100)")
    parser.add_argument("--converge-limit", type=float, default=600.0, help="give up after, s (600)")


async def run(args: argparse.Namespace, workdir: Path, parts: list[str]) -> dict[str, Any]:
    if not free_mi_port(POD_IP):
        raise RuntimeError(f"{POD_IP}:{MI_PORT} is in use: another reliability run?")
    cp = ControlPlane(workdir / "cluster")
    out: dict[str, Any] = {}
    try:
        print("reliability: starting etcd + kube-apiserver", flush=True)
        await asyncio.to_thread(cp.start)
        cp.kubectl("apply", "-f", str(CRD))
        cp.kubectl("wait", "--for=condition=Established", "crd/sipsockets.sipsockets.io", "--timeout=60s")
        for name in parts:
            print(f"reliability {name}: churn with the fault injected", flush=True)
            try:
                out[name] = await FAULTS[name](cp, workdir, args)
            except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
                out[name] = {"error": str(exc)}
                print(f"  {name}: FAILED: {exc}", flush=True)
                continue
            show(name, out[name])
    finally:
        cp.stop()
    return out
