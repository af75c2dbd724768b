"""Helpers of the operator's e2e tests: the CRD, the operator as a real subprocess, proxy pods, waiting.

The operator runs as `sipsockets-operator` with the admin kubeconfig, so killing and restarting it is real.
Proxy pods are `sipproxy` processes on their own 127.0.x.y address (devenv.fakepods); each test takes fresh
addresses from `Addresses` so that tests never share an address:port.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devenv.controlplane import ControlPlane
from devenv.fakepods import ProxyPod
from devenv.processes import free_port

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "sipsockets.io_sipsockets.yaml"
T = TypeVar("T")
_subnets = itertools.count(60)


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


class Addresses:
    """Fresh loopback addresses for one test: 127.0.<n>.1, .2, ..."""

    def __init__(self) -> None:
        self.subnet = next(_subnets)
        self._host = itertools.count(1)

    def next(self) -> str:
        return f"127.0.{self.subnet}.{next(self._host)}"


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 90.0, interval: float = 0.5) -> T:
    """Poll until `check` returns something truthy; generous timeouts, the machines are shared."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


def sipsocket(name: str, protocol: str, address: str, port: int | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"protocol": protocol, "address": address, **spec}
    if port is not None:
        body["port"] = port
    return {
        "apiVersion": "sipsockets.io/v1alpha1",
        "kind": "SipSocket",
        "metadata": {"name": name},
        "spec": body,
    }


def apply(
    cp: ControlPlane, namespace: str, *objs: dict[str, Any], check: bool = True
) -> subprocess.CompletedProcess[str]:
    doc = {"apiVersion": "v1", "kind": "List", "items": list(objs)}
    return cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc), check=check)


def get(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    out = cp.kubectl("get", "sipsocket", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or ():
        if c.get("type") == ctype:
            return dict(c)
    return {}


def wait_condition(
    cp: ControlPlane,
    namespace: str,
    name: str,
    ctype: str,
    status: str,
    reason: str | None = None,
    timeout: float = 90.0,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get(cp, namespace, name)
        c = condition(obj, ctype)
        ok = c.get("status") == status and (reason is None or c.get("reason") == reason)
        gen_ok = (
            obj is not None
            and obj.get("status", {}).get("observedGeneration") == obj["metadata"]["generation"]
        )
        return obj if ok and gen_ok else None

    return wait_for(check, f"{namespace}/{name} {ctype}={status} {reason or ''}", timeout)


def events(cp: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    out = cp.kubectl(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    )
    return list(json.loads(out.stdout)["items"])


def proxy_config(db_url: str, max_sockets: int = 100, static: list[str] | None = None) -> dict[str, Any]:
    return {
        "sockets": static or [],
        "udp_workers": 1,
        "tcp_workers": 1,
        "sockets_mgm": {"db_url": db_url, "processes": 1, "max_sockets": max_sockets},
    }


def init_db(db_url: str) -> None:
    subprocess.run([_bin("sipproxy"), "db", "init", "--db-url", db_url], check=True, capture_output=True)


def start_pod(
    cp: ControlPlane, namespace: str, name: str, ip: str, db_url: str, workdir: Path, **config: Any
) -> ProxyPod:
    pod = ProxyPod(cp, namespace, name, ip, proxy_config(db_url, **config), workdir)
    pod.start()
    return pod


class Operator:
    """`sipsockets-operator` as a real process (kill -9 and restart are real)."""

    def __init__(self, cp: ControlPlane, namespace: str, db_url: str, workdir: Path, **settings: str) -> None:
        self.cp, self.namespace, self.workdir = cp, namespace, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.health_port = free_port()
        self.log = workdir / "operator.log"
        self.env = dict(os.environ)
        self.env.update(
            KUBECONFIG=str(cp.kubeconfig),
            SIPSOCKETS_NAMESPACE=namespace,
            SIPSOCKETS_DB_URL=db_url,
            SIPSOCKETS_HEALTH_LISTEN=f"127.0.0.1:{self.health_port}",
            SIPSOCKETS_RESYNC_PERIOD="10",
            SIPSOCKETS_MI_TIMEOUT="3",
        )
        self.env.update({f"SIPSOCKETS_{k.upper()}": v for k, v in settings.items()})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [_bin("sipsockets-operator")],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self.healthy, "the operator's /healthz", timeout=60)
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the operator exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None


def release_finalizers(cp: ControlPlane, namespace: str) -> None:
    """After a test, so the namespace can go although its operator is stopped."""
    out = cp.kubectl("get", "sipsockets", "-n", namespace, "-o", "name", check=False)
    for ref in out.stdout.split():
        cp.kubectl(
            "patch",
            ref,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )


@pytest.fixture(scope="session")
def crd(control_plane: ControlPlane) -> Path:
    control_plane.kubectl("apply", "-f", str(CRD))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/sipsockets.sipsockets.io", "--timeout=60s"
    )
    return CRD


class Env:
    """One test's world: namespace, SQLite database, proxy pods, operator; everything stopped afterwards."""

    def __init__(self, cp: ControlPlane, namespace: str, workdir: Path) -> None:
        self.cp, self.namespace, self.workdir = cp, namespace, workdir
        self.addresses = Addresses()
        self.db_url = f"sqlite:///{workdir / 'sockets.db'}"
        init_db(self.db_url)
        self.pods: list[ProxyPod] = []
        self.operators: list[Operator] = []

    def pod(self, name: str, ip: str | None = None, db_url: str | None = None, **config: Any) -> ProxyPod:
        pod = start_pod(
            self.cp,
            self.namespace,
            name,
            ip or self.addresses.next(),
            db_url or self.db_url,
            self.workdir,
            **config,
        )
        self.pods.append(pod)
        return pod

    def operator(self, db_url: str | None = None, **settings: str) -> Operator:
        op = Operator(
            self.cp,
            self.namespace,
            db_url or self.db_url,
            self.workdir / f"op{len(self.operators)}",
            **settings,
        )
        self.operators.append(op)
        return op.start()

    def close(self) -> None:
        for op in self.operators:
            op.stop()
        for pod in self.pods:
            pod.stop()
        release_finalizers(self.cp, self.namespace)


@pytest.fixture
def env(control_plane: ControlPlane, crd: Path, namespace: str, tmp_path: Path) -> Iterator[Env]:
    e = Env(control_plane, namespace, tmp_path)
    try:
        yield e
    finally:
        e.close()
