"""The `scale` part of `python -m bench reliability`: `--scale-count` (1,000) SipSockets against one proxy pod
at the chart's worker counts, on the API-server tier (etcd + kube-apiserver, devenv.fakepods).

In order, on one control plane:
1. the SipSockets created with no operator running (8 API clients at once: the API server's create rate);
2. the operator started: time until every one is Ready (followed by a watch, not polled), until the proxy
   lists them all listening, until its Events (posted from a queue, behind the passes) are all posted; the
   API requests the cold start made, by verb and resource (the API server's own `apiserver_request_total`),
   and the API server's rate for the operator's kind of write (status merge patches from 8 clients at once,
   measured after the cold start and its Events);
3. idle: the operator's RSS, its CPU (and the API server's and the proxy's) over `--idle-seconds` (120,
   two resync periods at the default 60 s);
4. apply -> answering for one more SipSocket with all of them present, `--scale-probes` (30) times: the time
   from the create call until the socket answers OPTIONS (probed every 10 ms), and until it is Ready;
5. the proxy's RSS and descriptors with them all (and before any), and `sockets_reload` with nothing changed;
6. all of them deleted at once (one deletecollection): time until the API, the table and the proxy are empty.

`--scale-profile`: the operator runs under cProfile and the run stops after step 2, so the profile
(`<workdir>/operator-scale.prof`) is the cold start's.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.cpu import memory_and_fds, tree_cpu, vm_hwm_kib
from bench.machine import load
from bench.operator_apply import CRD, OperatorProc, answers_options, db_init, free_mi_port, percentile
from devenv import churn
from devenv.controlplane import ControlPlane
from devenv.fakepods import MI_PORT, ProxyPod
from devenv.kubeapi import ApiClient, ApiError, Watch, crd_path

POD_IP = "127.78.0.2"
PORT = 5070
NAMESPACE = "rel-scale"


def address(i: int) -> str:
    return f"127.78.{100 + i // 250}.{1 + i % 250}"


def request_counts(api: ApiClient) -> dict[str, float]:
    """`apiserver_request_total` summed by verb and resource (the API server's own metrics)."""
    status, text = api.raw("GET", "/metrics")
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        sub = labels.get("subresource")
        key = f"{labels.get('verb')} {labels.get('resource')}{'/' + sub if sub else ''}"
        out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    diff = {k: int(v - before.get(k, 0.0)) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in diff.items() if v > 0), key=lambda kv: -kv[1]))


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Tracker:
    """When each SipSocket was first seen Ready for its current generation (from the watch's thread)."""

    def __init__(self) -> None:
        self.ready_at: dict[str, float] = {}

    def __call__(self, name: str, body: dict[str, Any] | None) -> None:
        if body is None or name in self.ready_at:
            return
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        if status.get("observedGeneration") != meta.get("generation"):
            return
        if churn._condition(body, "Ready").get("status") == "True":
            self.ready_at[name] = time.monotonic()


def create_all(api: ApiClient, path: str, ops: list[churn.Op], clients: int = 8) -> float:
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda op: api.request("POST", path, churn.manifest(op)), ops))
    return time.monotonic() - t0


def patch_rate(api: ApiClient, path: str, names: list[str], clients: int = 8) -> float:
    """Status merge patches per second the API server takes from `clients` at once (the operator's kind of
    write), on objects no operator watches; each patch changes the status, so each is written to etcd."""

    def one(name: str) -> None:
        patch = {"status": {"observedGeneration": 7, "socket": f"udp:{name}"}}
        api.request("PATCH", f"{path}/{name}/status", patch, "application/merge-patch+json")

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, names))
    return len(names) / (time.monotonic() - t0)


async def wait_until(check: Any, limit: float, interval: float = 0.2) -> float | None:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > limit:
            return None
        await asyncio.sleep(interval)
    return time.monotonic() - t0


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    count = max(1, min(int(args.scale_count), 2000))
    probes = max(1, min(int(args.scale_probes), 200))
    limit = float(args.converge_limit)
    if not free_mi_port(POD_IP):
        raise RuntimeError(f"{POD_IP}:{MI_PORT} is in use: another reliability run?")
    cp = ControlPlane(workdir / "scale-cluster")
    out: dict[str, Any] = {"count": count, "loadavg_start": load()}
    db_url = f"sqlite:///{workdir / 'scale.sqlite'}"
    argv = None
    if args.scale_profile:
        argv = [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(workdir / "operator-scale.prof"),
            "-m",
            "sipoperator.cli",
        ]
    try:
        print(f"reliability scale: {count} SipSockets; starting etcd + kube-apiserver", flush=True)
        await asyncio.to_thread(cp.start)
        cp.kubectl("apply", "-f", str(CRD))
        cp.kubectl("wait", "--for=condition=Established", "crd/sipsockets.sipsockets.io", "--timeout=60s")
        cp.ensure_namespace(NAMESPACE)
        db_init(db_url)
        config = {
            "sockets_mgm": {"db_url": db_url, "max_sockets": count + probes + 10},
            "log_level": "warning",
        }
        pod = ProxyPod(cp, NAMESPACE, "sipproxy-0", POD_IP, config, workdir)
        operator = OperatorProc(cp, NAMESPACE, db_url, workdir / "operator-scale.log", argv)
        api = ApiClient(cp.kubeconfig)
        path = crd_path(churn.GROUP, churn.VERSION, churn.PLURAL, NAMESPACE)
        tracker = Tracker()
        try:
            await asyncio.to_thread(pod.start, 120)
            assert pod.pid is not None
            out["proxy_empty"] = memory_and_fds(pod.pid)
            ops = [churn.Op("create", f"s-{i:04d}", address(i), PORT) for i in range(count)]
            with Watch(api, path, on_event=tracker) as watch:
                # 1. the objects, no operator yet
                create_s = await asyncio.to_thread(create_all, api, path, ops)
                out["create"] = {"seconds": create_s, "per_second": count / create_s, "clients": 8}
                print(
                    f"  created {count} with 8 clients in {create_s:.1f}s ({count / create_s:.0f}/s)",
                    flush=True,
                )
                # 2. cold start
                before = await asyncio.to_thread(request_counts, api)
                t0 = time.monotonic()
                operator.start()
                progress: list[tuple[float, int]] = []
                all_listed: float | None = None
                while len(tracker.ready_at) < count:
                    if not operator.alive():
                        raise RuntimeError(f"the operator exited; see {operator.log}")
                    if time.monotonic() - t0 > limit:
                        break
                    await asyncio.sleep(0.5)
                    progress.append((round(time.monotonic() - t0, 1), len(tracker.ready_at)))
                    if all_listed is None and len(progress) % 2 == 0:
                        listing = await asyncio.to_thread(churn.sockets_list, pod.mi_url)
                        if listing and sum(1 for s in listing.values() if s == "listening") >= count:
                            all_listed = time.monotonic() - t0
                    if len(progress) % 10 == 0:
                        print(f"  {progress[-1][1]}/{count} Ready after {progress[-1][0]:.0f}s", flush=True)
                times = sorted(t - t0 for t in tracker.ready_at.values())
                after = await asyncio.to_thread(request_counts, api)
                operator.sample_rss()
                out["cold_start"] = {
                    "ready": len(times),
                    "all_ready_s": times[-1] if len(times) >= count else None,
                    "first_ready_s": times[0] if times else None,
                    "half_ready_s": times[len(times) // 2] if times else None,
                    "proxy_listing_all_s": all_listed,
                    "progress": progress,
                    "api_requests": delta(after, before),
                    "operator_peak_rss_kib": operator.peak_kib,
                    "loadavg": load(),
                }
                c = out["cold_start"]
                print(
                    f"  cold start: first Ready {c['first_ready_s']}, half {c['half_ready_s']},"
                    f" all {c['all_ready_s']} s;"
                    f" proxy listing all after {all_listed}; API requests {c['api_requests']}; load {load()}",
                    flush=True,
                )
                # The operator posts its Events from a queue, behind the passes: wait for them (3 per
                # SipSocket: Accepted, Programmed, Listening), so that they are not counted in what follows.
                events_s: float | None = None
                while time.monotonic() - t0 < limit:
                    posted = delta(await asyncio.to_thread(request_counts, api), before).get("POST events", 0)
                    if posted >= 3 * count:
                        events_s = time.monotonic() - t0
                        break
                    await asyncio.sleep(0.5)
                out["cold_start"]["events_posted_s"] = events_s
                print(f"  all {3 * count} Events posted after {events_s} s", flush=True)
                cp.ensure_namespace(f"{NAMESPACE}-api")
                other = crd_path(churn.GROUP, churn.VERSION, churn.PLURAL, f"{NAMESPACE}-api")
                sample = [churn.Op("create", f"p-{i:03d}", address(i), PORT) for i in range(400)]
                await asyncio.to_thread(create_all, api, other, sample)
                rate = await asyncio.to_thread(patch_rate, api, other, [o.name for o in sample])
                await asyncio.to_thread(api.request, "DELETE", other)
                out["apiserver_status_patches_per_s"] = rate
                print(f"  the API server takes {rate:.0f} status merge patches/s from 8 clients", flush=True)
                if args.scale_profile:
                    operator.stop()
                    out["profile"] = str(workdir / "operator-scale.prof")
                    return out
                # 3. idle
                await asyncio.sleep(5)
                assert operator.proc is not None
                op_pid = operator.proc.pid
                api_pid = cp.procs.load()["kube-apiserver"]
                idle = float(args.idle_seconds)
                c0 = (tree_cpu(op_pid), tree_cpu(api_pid), tree_cpu(pod.pid))
                r0 = await asyncio.to_thread(request_counts, api)
                await asyncio.sleep(idle)
                c1 = (tree_cpu(op_pid), tree_cpu(api_pid), tree_cpu(pod.pid))
                r1 = await asyncio.to_thread(request_counts, api)
                out["idle"] = {
                    "seconds": idle,
                    "operator_cpu_pct": (c1[0] - c0[0]).total / idle * 100,
                    "apiserver_cpu_pct": (c1[1] - c0[1]).total / idle * 100,
                    "proxy_cpu_pct": (c1[2] - c0[2]).total / idle * 100,
                    "operator_rss_kib": rss_kib(op_pid),
                    "operator_peak_rss_kib": vm_hwm_kib(op_pid),
                    "api_requests": delta(r1, r0),
                    "loadavg": load(),
                }
                print(f"  idle: {out['idle']}", flush=True)
                # 4. apply -> answering with all present
                answering: list[float] = []
                ready: list[float] = []
                for k in range(probes):
                    op = churn.Op("create", f"probe-{k:03d}", address(count + 10 + k), PORT)
                    t = time.monotonic()
                    await asyncio.to_thread(api.request, "POST", path, churn.manifest(op))
                    while not await asyncio.to_thread(answers_options, op.address, PORT, 0.2):
                        if time.monotonic() - t > 60:
                            raise RuntimeError(f"{op.name} not answering after 60s")
                        await asyncio.sleep(0.01)
                    answering.append(time.monotonic() - t)
                    await wait_until(lambda n=op.name: n in tracker.ready_at, 60, 0.01)
                    if op.name in tracker.ready_at:
                        ready.append(tracker.ready_at[op.name] - t)
                    await asyncio.to_thread(api.request, "DELETE", f"{path}/{op.name}")
                    await wait_until(lambda n=op.name: n not in watch.snapshot(), 60, 0.05)
                out["apply_to_answering"] = {
                    "present": count,
                    "probes": len(answering),
                    "p50_s": statistics.median(answering),
                    "p99_s": percentile(answering, 99),
                    "max_s": max(answering),
                    "ready_p50_s": statistics.median(ready) if ready else None,
                    "ready_p99_s": percentile(ready, 99) if ready else None,
                    "all_s": answering,
                    "loadavg": load(),
                }
                a = out["apply_to_answering"]
                print(
                    f"  apply -> answering with {count} present: p50 {a['p50_s'] * 1000:.0f} ms,"
                    f" p99 {a['p99_s'] * 1000:.0f} ms, max {a['max_s'] * 1000:.0f} ms;"
                    f" -> Ready p50 {a['ready_p50_s']}, p99 {a['ready_p99_s']}; load {load()}",
                    flush=True,
                )
                # 5. the proxy with all of them
                out["proxy_full"] = memory_and_fds(pod.pid)
                reloads = []
                for _ in range(5):
                    t = time.monotonic()
                    await asyncio.to_thread(churn.sockets_list, pod.mi_url)
                    reloads.append(time.monotonic() - t)
                out["proxy_sockets_list_ms"] = statistics.median(reloads) * 1000
                print(f"  proxy: empty {out['proxy_empty']}, with {count}: {out['proxy_full']}", flush=True)
                # 6. delete everything
                t = time.monotonic()
                await asyncio.to_thread(api.request, "DELETE", path)
                call_s = time.monotonic() - t  # the deletecollection call itself (1,000 objects marked)
                gone = await wait_until(lambda: not watch.snapshot(), limit, 0.2)
                if gone is not None:
                    gone += call_s  # from the call, as the table's figure is
                empty: float | None = None
                while time.monotonic() - t < limit:
                    # read_table runs its own event loop: in a thread, never in this one.
                    view = await asyncio.to_thread(churn.read_table, db_url)
                    if view is not None and view.rows == []:
                        empty = time.monotonic() - t
                        break
                    await asyncio.sleep(0.5)
                listed = await asyncio.to_thread(churn.sockets_list, pod.mi_url)
                out["delete_all"] = {
                    "deletecollection_call_s": call_s,
                    "api_empty_s": gone,
                    "table_empty_s": empty,
                    "proxy_listing_after": len(listed or {}),
                    "loadavg": load(),
                }
                print(f"  delete all: {out['delete_all']}", flush=True)
        finally:
            operator.stop()
            pod.stop()
    except ApiError as exc:
        raise RuntimeError(f"API: {exc}") from exc
    finally:
        cp.stop()
    out["loadavg_end"] = load()
    return out


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument("--scale-count", type=int, default=1000, help="SipSockets of the scale part (1000)")
    parser.add_argument("--scale-probes", type=int, default=30, help="apply -> answering probes (30)")
    parser.add_argument("--idle-seconds", type=float, default=120.0, help="idle CPU window (120)")
    parser.add_argument("--scale-profile", action="store_true", help="cProfile the operator's cold start")
