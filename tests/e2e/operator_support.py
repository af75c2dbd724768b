"""Helpers of the operator's e2e tests: the CRD, the fleet (proxy pods and operator), waiting.

Every test that takes `env` runs twice, on two fleets with one API (start, kill, stop, pause, resume; the
operator's health, metrics and log):
- `processes`: the API-server-only control plane; the operator is `sipsockets-operator` as a subprocess with
  the admin kubeconfig, proxy pods are `sipproxy` processes on their own 127.0.x.y address registered as Pods
  whose status the harness sets (devenv.fakepods);
- `pods`: a real single-node cluster (devenv.localcluster); the operator and the proxies are Pods run by the
  kubelet from the images built in this run (devenv.podfleet).
Killing and restarting is real on both. Each test takes fresh SIP addresses from `Addresses` so that tests
never share an address:port.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from devenv import podfleet
from devenv.cluster_client import ClusterClient
from devenv.controlplane import ControlPlane
from devenv.fakepods import ProxyPod
from devenv.mitls import MiPki
from devenv.processes import free_port

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "sipsockets.io_sipsockets.yaml"
T = TypeVar("T")
_subnets = itertools.count(60)
_namespaces = itertools.count(1)
BACKENDS = ("processes", "pods")


def namespace_name(test_name: str) -> str:
    """Unique within the session: without a controller-manager a deleted namespace never finishes
    terminating, so a name is never reused."""
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower().replace("_", "-"))[:40].strip("-")
    return f"{base}-{next(_namespaces)}"


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
    cp: ClusterClient, namespace: str, *objs: dict[str, Any], check: bool = True
) -> subprocess.CompletedProcess[str]:
    doc = {"apiVersion": "v1", "kind": "List", "items": list(objs)}
    return cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc), check=check)


def get(cp: ClusterClient, namespace: str, name: str) -> dict[str, Any] | None:
    out = cp.kubectl("get", "sipsocket", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or ():
        if c.get("type") == ctype:
            return dict(c)
    return {}


def wait_condition(
    cp: ClusterClient,
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


def events(cp: ClusterClient, namespace: str, name: str) -> list[dict[str, Any]]:
    out = cp.kubectl(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    )
    return list(json.loads(out.stdout)["items"])


def proxy_config(
    db_url: str, max_sockets: int = 100, static: list[str] | None = None, mi_tls: dict[str, str] | None = None
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "sockets": static or [],
        # The worker counts at their defaults (8 UDP per static socket, 8 in the pool, 8 TCP), as deployed.
        "sockets_mgm": {"db_url": db_url, "max_sockets": max_sockets},
    }
    if mi_tls is not None:
        config["mi"] = {"tls": mi_tls}  # the fleet puts /metrics and the probes on a port of their own
    return config


def init_db(db_url: str) -> None:
    subprocess.run([_bin("sipproxy"), "db", "init", "--db-url", db_url], check=True, capture_output=True)


def operator_env(namespace: str, db_url: str, settings: dict[str, str]) -> dict[str, str]:
    """The operator's settings in every fleet: quick resyncs and MI timeouts, then the test's own."""
    env = {
        "SIPSOCKETS_NAMESPACE": namespace,
        "SIPSOCKETS_DB_URL": db_url,
        "SIPSOCKETS_RESYNC_PERIOD": "10",
        "SIPSOCKETS_MI_TIMEOUT": "3",
    }
    env.update({f"SIPSOCKETS_{k.upper()}": v for k, v in settings.items()})
    return env


class Operator:
    """`sipsockets-operator` as a real process (kill -9 and restart are real)."""

    def __init__(
        self, cp: ClusterClient, namespace: str, db_url: str, workdir: Path, **settings: str
    ) -> None:
        self.cp, self.namespace, self.workdir = cp, namespace, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.health_port = free_port()
        self.log = workdir / "operator.log"
        self.env = dict(os.environ)
        self.env.update(
            KUBECONFIG=str(cp.kubeconfig),
            SIPSOCKETS_HEALTH_LISTEN=f"127.0.0.1:{self.health_port}",
            **operator_env(namespace, db_url, settings),
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        self.launch()
        self.wait_started()
        return self

    def launch(self) -> None:
        """Start the process and return at once (several replicas are launched at the same instant)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [_bin("sipsockets-operator")],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_started(self) -> None:
        wait_for(self.healthy, "the operator's /healthz", timeout=60)

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


def release_finalizers(cp: ClusterClient, namespace: str) -> None:
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
def crd(control_plane: ClusterClient) -> Path:
    control_plane.kubectl("apply", "-f", str(CRD))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/sipsockets.sipsockets.io", "--timeout=60s"
    )
    return CRD


class FleetPod(Protocol):
    """A proxy pod, whichever fleet runs it."""

    name: str

    def start(self) -> None: ...
    def kill(self) -> None: ...  # the container crashes
    def stop(self) -> None: ...  # the pod is deleted
    def pause(self) -> None: ...  # the container hangs; the pod stays Ready
    def resume(self) -> None: ...


class FleetOperator(Protocol):
    def start(self) -> object: ...
    def launch(self) -> None: ...
    def wait_started(self) -> None: ...
    def healthy(self) -> bool: ...
    def metrics(self) -> str: ...
    def tail(self, chars: int = ...) -> str: ...
    def kill(self) -> None: ...
    def stop(self) -> None: ...


class ProcessBackend:
    """Proxies and the operator as host processes against the API-server-only control plane."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def proxy_pod(
        self, namespace: str, name: str, ip: str, config: dict[str, Any], workdir: Path
    ) -> FleetPod:
        return ProxyPod(self.cp, namespace, name, ip, config, workdir)

    def operator(
        self, namespace: str, db_url: str, workdir: Path, index: int, settings: dict[str, str]
    ) -> FleetOperator:
        return Operator(self.cp, namespace, db_url, workdir / f"op{index}", **settings)


class PodBackend:
    """Proxies and the operator as Pods of the session's local node."""

    def __init__(self, node: podfleet.PodNode) -> None:
        self.node = node
        self.cp = node.cluster()

    def proxy_pod(
        self, namespace: str, name: str, ip: str, config: dict[str, Any], workdir: Path
    ) -> FleetPod:
        # `ip` is not used: hostNetwork pods have the node's address; the MI gets a port of its own.
        return podfleet.ProxyPod(self.cp, self.node.images.proxy, namespace, name, config, workdir)

    def operator(
        self, namespace: str, db_url: str, workdir: Path, index: int, settings: dict[str, str]
    ) -> FleetOperator:
        return podfleet.OperatorPod(
            self.cp,
            self.node.images.operator,
            namespace,
            f"operator-{index}",
            operator_env(namespace, db_url, settings),
            workdir,
            workdir / f"op{index}" / "operator.log",
        )


class Env:
    """One test's world: namespace, SQLite database, proxy pods, operator; everything stopped afterwards.

    The MI is mutual TLS, as the chart sets it up by default: a CA of the test's own, the proxies' server
    certificate and the operator's client certificate (devenv.mitls), in the work dir both fleets share."""

    def __init__(self, backend: ProcessBackend | PodBackend, namespace: str, workdir: Path) -> None:
        self.backend = backend
        self.cp: ClusterClient = backend.cp
        self.namespace, self.workdir = namespace, workdir
        self.addresses = Addresses()
        self.db_path = workdir / "sockets.db"
        self.db_url = f"sqlite:///{self.db_path}"
        init_db(self.db_url)
        self.pki = MiPki.create(workdir)
        self.pods: list[FleetPod] = []
        self.operators: list[FleetOperator] = []

    def pod(self, name: str, ip: str | None = None, db_url: str | None = None, **config: Any) -> FleetPod:
        pod = self.backend.proxy_pod(
            self.namespace,
            name,
            ip or self.addresses.next(),
            proxy_config(db_url or self.db_url, mi_tls=self.pki.proxy_config(), **config),
            self.workdir,
        )
        self.pods.append(pod)
        pod.start()
        return pod

    def operator(self, db_url: str | None = None, **settings: str) -> FleetOperator:
        (op,) = self.replicas(1, db_url, **settings)
        return op

    def replicas(self, count: int, db_url: str | None = None, **settings: str) -> list[FleetOperator]:
        """`count` operator replicas of one namespace, launched at the same instant, then waited for."""
        tls = {k.removeprefix("SIPSOCKETS_").lower(): v for k, v in self.pki.operator_env().items()}
        ops = [
            self.backend.operator(
                self.namespace,
                db_url or self.db_url,
                self.workdir,
                len(self.operators) + i,
                {**tls, **settings},
            )
            for i in range(count)
        ]
        self.operators.extend(ops)
        for op in ops:
            op.launch()
        for op in ops:
            op.wait_started()
        return ops

    def close(self) -> None:
        for op in self.operators:
            op.stop()
        for pod in self.pods:
            pod.stop()
        release_finalizers(self.cp, self.namespace)


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    backend: ProcessBackend | PodBackend
    if request.param == "processes":
        request.getfixturevalue("crd")
        backend = ProcessBackend(request.getfixturevalue("control_plane"))
    else:
        backend = PodBackend(request.getfixturevalue("pod_node"))
    namespace = namespace_name(request.node.name)
    backend.cp.ensure_namespace(namespace)
    e = Env(backend, namespace, tmp_path)
    try:
        yield e
    finally:
        try:
            e.close()
        finally:
            e.cp.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
