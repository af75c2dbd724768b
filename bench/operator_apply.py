"""Operator benchmarks against the local control plane (devenv: etcd + kube-apiserver, sipproxy "pods"):

- `kubectl apply` of one SipSocket -> the socket answering OPTIONS, for 100 SipSockets applied one by one
  (p50, p99; the k-th is applied with k-1 already present);
- a cold-started operator bringing 1,000 SipSockets (created while it was stopped) to Ready;
- the operator's peak RSS (VmHWM) in each phase."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.cpu import read_all, tree, vm_hwm_kib
from bench.procs import free_tcp_port, udp_port_free
from devenv.controlplane import ControlPlane
from devenv.fakepods import MI_PORT, ProxyPod
from devenv.sipclient import options_request, status_code

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "sipsockets.io_sipsockets.yaml"
# Outside 127.0.x.y, which the e2e tests (127.0.60.x upwards, one subnet per test) and the reload
# benchmark use, so that a run beside them never meets their addresses.
POD_IPS = ("127.77.0.1", "127.77.1.1")


def socket_address(phase: int, i: int) -> str:
    return f"127.77.{10 + phase * 10 + i // 250}.{1 + i % 250}"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def answers_options(address: str, port: int, timeout: float = 0.5) -> bool:
    """One OPTIONS over a connected UDP socket: nothing listening shows at once as ICMP port unreachable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.bind(("127.0.0.1", 0))
        s.connect((address, port))
        try:
            s.send(options_request(address, port, s.getsockname()[:2]))
            data = s.recv(65535)
        except (TimeoutError, ConnectionRefusedError, OSError):
            return False
    return status_code(data.decode(errors="replace")) == 200


def sipsocket(name: str, address: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "sipsockets.io/v1alpha1",
        "kind": "SipSocket",
        "metadata": {"name": name},
        "spec": {"protocol": "udp", "address": address, "port": port},
    }


def apply(cp: ControlPlane, namespace: str, objs: list[dict[str, Any]]) -> None:
    doc = {"apiVersion": "v1", "kind": "List", "items": objs}
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc), timeout=300)


def ready_count(cp: ControlPlane, namespace: str) -> int:
    out = cp.kubectl("get", "sipsockets", "-n", namespace, "-o", "json", check=False, timeout=120)
    if out.returncode != 0:
        return 0
    n = 0
    for obj in json.loads(out.stdout)["items"]:
        status = obj.get("status") or {}
        for c in status.get("conditions") or ():
            if c.get("type") == "Ready" and c.get("status") == "True":
                n += 1
    return n


def pick_port(addresses: list[str], tries: int = 20) -> int:
    for _ in range(tries):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if all(udp_port_free(a, port) for a in addresses):
            return port
    raise RuntimeError("no UDP port free on all benchmark addresses")


class OperatorProc:
    """`sipsockets-operator` for one namespace, as the e2e tests run it; peak RSS sampled while it runs."""

    def __init__(
        self, cp: ControlPlane, namespace: str, db_url: str, log: Path, argv: list[str] | None = None
    ) -> None:
        self.argv = argv or [str(Path(sys.executable).parent / "sipsockets-operator")]
        self.health = free_tcp_port()
        self.env = dict(os.environ)
        self.env.update(
            KUBECONFIG=str(cp.kubeconfig),
            SIPSOCKETS_NAMESPACE=namespace,
            SIPSOCKETS_DB_URL=db_url,
            SIPSOCKETS_HEALTH_LISTEN=f"127.0.0.1:{self.health}",
        )
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_kib = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def sample_rss(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for st in tree(read_all(), self.proc.pid):
            self.peak_kib = max(self.peak_kib, vm_hwm_kib(st.pid) or 0)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.sample_rss()
        for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.proc = None


def pod_config(db_url: str, max_sockets: int) -> dict[str, Any]:
    return {
        "udp_workers": 1,
        "tcp_workers": 1,
        "sockets_mgm": {"db_url": db_url, "processes": 1, "max_sockets": max_sockets},
        "log_level": "warning",
    }


def db_init(db_url: str) -> None:
    subprocess.run(
        [str(Path(sys.executable).parent / "sipproxy"), "db", "init", "--db-url", db_url],
        check=True,
        capture_output=True,
        timeout=120,
    )


async def apply_to_options(cp: ControlPlane, workdir: Path, count: int, limit: float) -> dict[str, Any]:
    ns = "bench-apply"
    cp.ensure_namespace(ns)
    db_url = f"sqlite:///{workdir / 'apply.sqlite'}"
    db_init(db_url)
    addresses = [socket_address(0, i) for i in range(count)]
    port = pick_port(addresses)
    pod = ProxyPod(cp, ns, "sipproxy-0", POD_IPS[0], pod_config(db_url, max(100, count)), workdir)
    op = OperatorProc(cp, ns, db_url, workdir / "operator-apply.log")
    latencies: list[float] = []
    try:
        pod.start(timeout=120)
        op.start()
        for i, addr in enumerate(addresses):
            t0 = time.monotonic()
            apply(cp, ns, [sipsocket(f"s-{i:04d}", addr, port)])
            while not answers_options(addr, port, timeout=0.2):
                if not op.alive():
                    raise RuntimeError(f"the operator exited; see {op.log}")
                if time.monotonic() - t0 > limit:
                    raise RuntimeError(f"SipSocket s-{i:04d} not answering OPTIONS after {limit:.0f}s")
                await asyncio.sleep(0.01)
            latencies.append(time.monotonic() - t0)
            op.sample_rss()
            if (i + 1) % 20 == 0:
                print(f"  {i + 1}/{count} applied; last {latencies[-1]:.2f}s", flush=True)
    finally:
        op.stop()
        pod.stop()
    return {
        "count": len(latencies),
        "p50_s": statistics.median(latencies),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies),
        "latencies_s": latencies,
        "operator_peak_rss_kib": op.peak_kib,
    }


async def cold_start(cp: ControlPlane, workdir: Path, count: int, limit: float) -> dict[str, Any]:
    ns = "bench-cold"
    cp.ensure_namespace(ns)
    db_url = f"sqlite:///{workdir / 'cold.sqlite'}"
    db_init(db_url)
    addresses = [socket_address(1, i) for i in range(count)]
    port = pick_port(addresses)
    pod = ProxyPod(cp, ns, "sipproxy-0", POD_IPS[1], pod_config(db_url, max(100, count)), workdir)
    op = OperatorProc(cp, ns, db_url, workdir / "operator-cold.log")
    progress: list[tuple[float, int]] = []
    try:
        pod.start(timeout=120)
        objs = [sipsocket(f"c-{i:04d}", a, port) for i, a in enumerate(addresses)]
        for start in range(0, len(objs), 100):
            apply(cp, ns, objs[start : start + 100])
        print(f"  {count} SipSockets created with no operator running; starting it", flush=True)
        t0 = time.monotonic()
        op.start()
        ready = 0
        while ready < count:
            if not op.alive():
                raise RuntimeError(f"the operator exited; see {op.log}")
            if time.monotonic() - t0 > limit:
                break
            await asyncio.sleep(2.0)
            op.sample_rss()
            ready = ready_count(cp, ns)
            progress.append((time.monotonic() - t0, ready))
            if len(progress) % 15 == 0:
                print(f"  {ready}/{count} Ready after {progress[-1][0]:.0f}s", flush=True)
        elapsed = time.monotonic() - t0
        sample = addresses[:: max(1, count // 10)]
        answering = sum(1 for a in sample if answers_options(a, port))
    finally:
        op.stop()
        pod.stop()
    return {
        "count": count,
        "ready": ready,
        "seconds_to_all_ready": elapsed if ready >= count else None,
        "gave_up_after_s": None if ready >= count else elapsed,
        "options_answered_sample": f"{answering}/{len(sample)}",
        "progress": progress,
        "operator_peak_rss_kib": op.peak_kib,
    }


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument("--apply-count", type=int, default=100, help="SipSockets applied one by one (100)")
    parser.add_argument("--cold-count", type=int, default=1000, help="SipSockets for the cold start (1000)")
    parser.add_argument("--operator-timeout", type=float, default=900.0, help="bound of each phase, s (900)")


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    count = max(1, min(int(args.apply_count), 500))
    cold = max(1, min(int(args.cold_count), 2000))
    limit = float(args.operator_timeout)
    for ip in POD_IPS:
        if not free_mi_port(ip):
            raise RuntimeError(f"{ip}:{MI_PORT} is in use: the benchmark pods need it")
    cp = ControlPlane(workdir / "cluster")
    out: dict[str, Any] = {}
    try:
        print("operator: starting etcd + kube-apiserver", flush=True)
        cp.start()
        cp.kubectl("apply", "-f", str(CRD))
        cp.kubectl("wait", "--for=condition=Established", "crd/sipsockets.sipsockets.io", "--timeout=60s")
        print(f"operator: apply -> OPTIONS, {count} SipSockets one by one", flush=True)
        out["apply_to_options"] = a = await apply_to_options(cp, workdir, count, min(limit, 300))
        print(
            f"  p50 {a['p50_s']:.2f}s p99 {a['p99_s']:.2f}s max {a['max_s']:.2f}s;"
            f" operator peak RSS {a['operator_peak_rss_kib'] / 1024:.0f} MiB",
            flush=True,
        )
        print(f"operator: cold start with {cold} SipSockets", flush=True)
        out["cold_start"] = c = await cold_start(cp, workdir, cold, limit)
        done = c["seconds_to_all_ready"]
        print(
            f"  {c['ready']}/{cold} Ready "
            + (
                f"after {done:.0f}s"
                if done is not None
                else f"when giving up after {c['gave_up_after_s']:.0f}s"
            )
            + f"; OPTIONS answered on {c['options_answered_sample']} sampled;"
            f" operator peak RSS {c['operator_peak_rss_kib'] / 1024:.0f} MiB",
            flush=True,
        )
    finally:
        cp.stop()
    return out


def free_mi_port(ip: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy's MI server does
        try:
            s.bind((ip, MI_PORT))
        except OSError:
            return False
    return True
