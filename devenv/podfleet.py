"""The operator's e2e fleet as real pods on the local node (devenv.localcluster): the proxies and the operator
run from the images built in this run, started and stopped by the kubelet.

Counterpart of devenv.fakepods (proxy "pods" that are host processes) with the same small API, so that one
test body runs on both: `start()`, `kill()` (the container crashes), `stop()` (the pod is deleted),
`pause()`/`resume()` (the container hangs), and for the operator `healthy()`, `metrics()`, `tail()`.

How the pods are made, and why:
- Bare Pods, `hostNetwork: true`: the SIP sockets the tests add are on 127.0.x.y, and only the host's network
  namespace has the test's loopback. The operator is on host networking too, so its health port on
  127.0.0.1 is reachable from the test, the API server reaches its webhook on 127.0.0.1, and it reaches a
  database server listening on 127.0.0.1.
- hostNetwork pods on one node share one address (the node's InternalIP), so each proxy's MI gets a port of
  its own, named by the pod annotation sipsockets.io/mi-port that the operator honours.
- The test's work dir is mounted by hostPath at the same path, so `sqlite:///<workdir>/sockets.db` is one
  file for the test, the operator and the proxies; the images run as uid 10001, hence `share()`.
- `restartPolicy: Never`: a crashed container stays down until the test starts the pod again, instead of a
  kubelet restart racing the test's look at the crashed state. `start()` after a crash deletes the Pod and
  creates it again under the same name, as a controller would.
- Signals go to every process of the container on the host (found through containerd): SIGKILL is a crash,
  SIGSTOP a hang. The proxies' readiness probe tolerates a long hang (failureThreshold), so Kubernetes keeps
  the pod Ready and the operator is the one that notices (ProxyUnreachable), as the tests expect.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from devenv import images
from devenv.fakepods import PROXY_LABELS
from devenv.localcluster import LocalCluster, layout, node_environment_problems
from devenv.processes import free_port
from sipoperator.proxies import MI_PORT_ANNOTATION

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "sipsockets"
RELEASE = "sipsockets"  # the release name the operator's RBAC is rendered with
OPERATOR_LABELS = {"app.kubernetes.io/name": "sipsockets", "app.kubernetes.io/component": "operator"}
IMAGE_UID = 10001  # USER of both Dockerfile targets
# Readiness checks once a second; a paused proxy stays Ready for this many seconds (see the module doc).
PROBE_FAILURES_TOLERATED = 600
T = TypeVar("T")


def _wait(check: Callable[[], T | None], what: str, timeout: float, interval: float = 0.3) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def share(workdir: Path) -> None:
    """Let the images' uid read and write the test's work dir (the database, its journal, certificates).
    Test-only: a throw-away temporary directory."""
    for root, dirs, files in os.walk(workdir):
        Path(root).chmod(0o777)
        for d in dirs:
            (Path(root) / d).chmod(0o777)
        for f in files:
            path = Path(root) / f
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o666)


class PodNode:
    """One LocalCluster shared by the `pods` tests of a session: started on first use with this run's proxy
    and operator images and the SipSocket CRD, stopped by `stop()`. Only one node can run on a machine, so
    whoever starts another one (tests/e2e/cluster) stops this one first."""

    def __init__(self, workdir: Path, crd: Path) -> None:
        self.workdir, self.crd = workdir, crd
        self._cluster: LocalCluster | None = None
        self._images: images.Images | None = None

    @property
    def images(self) -> images.Images:
        if self._images is None:
            self._images = images.build_all()
        return self._images

    def cluster(self) -> LocalCluster:
        if self._cluster is None:
            problems = node_environment_problems()
            if problems:
                raise RuntimeError(f"this machine cannot run the local node: {problems}")
            built = self.images
            cluster = LocalCluster(self.workdir)
            cluster.start(images_to_import=[built.proxy, built.operator])
            try:
                cluster.kubectl("apply", "-f", str(self.crd))
                cluster.kubectl(
                    "wait", "--for=condition=Established", "crd/sipsockets.sipsockets.io", "--timeout=60s"
                )
            except BaseException:
                cluster.stop()
                raise
            self._cluster = cluster
        return self._cluster

    def stop(self) -> None:
        if self._cluster is not None:
            cluster, self._cluster = self._cluster, None
            cluster.stop()


class _Pod:
    """A bare Pod of this harness; its container's processes found on the host through containerd."""

    container = ""

    def __init__(self, cluster: LocalCluster, namespace: str, name: str, log: Path) -> None:
        self.cluster, self.namespace, self.name, self.log = cluster, namespace, name, log
        self._container_id: str | None = None

    def manifest(self) -> dict[str, Any]:
        raise NotImplementedError

    def _get(self) -> dict[str, Any]:
        return self.cluster.get_json("pod", self.name, namespace=self.namespace, check=False)

    def _create(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.cluster.kubectl("create", "-f", "-", input=json.dumps(self.manifest()))
        self._container_id = None

    def _state(self) -> dict[str, Any]:
        statuses = (self._get().get("status") or {}).get("containerStatuses") or []
        return dict(statuses[0]) if statuses else {}

    def container_id(self) -> str | None:
        """Of the running container (kept once known: after a crash the pid lookup needs it still)."""
        if self._container_id is None:
            state = self._state()
            if "running" in (state.get("state") or {}):
                self._container_id = str(state.get("containerID", "")).partition("://")[2] or None
        return self._container_id

    def pids(self) -> list[int]:
        """Every host process of the container (runc's init and what it started)."""
        cid = self.container_id()
        if cid is None:
            return []
        out = self.cluster.ctr("tasks", "ps", cid, check=False)
        if out.returncode != 0:
            return []  # the task is gone
        return [int(line.split()[0]) for line in out.stdout.splitlines()[1:] if line.split()[:1] != []]

    def main_pid(self) -> int | None:
        """The host pid of the container's main process (what the kubelet signals to stop it)."""
        cid = self.container_id()
        if cid is None:
            return None
        out = self.cluster.ctr("tasks", "ls", check=False)
        for line in out.stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == cid and fields[1].isdigit():
                return int(fields[1])
        return None

    def _signal(self, sig: signal.Signals) -> list[int]:
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def _save_log(self) -> None:
        """Keep what the container said before the Pod goes (a new Pod under the name starts a new log)."""
        out = self.cluster.kubectl("logs", self.name, "-n", self.namespace, check=False)
        if out.returncode == 0 and out.stdout:
            with self.log.open("a") as f:
                f.write(out.stdout)

    def kill(self) -> None:
        """The container crashes: every process gets SIGKILL; with restartPolicy Never it stays down."""
        self.container_id()
        _wait(lambda: not self._signal(signal.SIGKILL), f"the processes of pod {self.name} gone", 30)

    def pause(self) -> None:
        """The container hangs: its processes stop where they are (Kubernetes still calls the pod Ready)."""
        if not self._signal(signal.SIGSTOP):
            raise RuntimeError(f"pod {self.name} has no running container to pause")

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _delete(self, grace: int) -> None:
        """Delete the Pod and return once its processes are gone."""
        if not self._get():
            return
        self.container_id()
        if grace == 0:
            self._save_log()
            self.kill()
            self.cluster.kubectl(
                "delete", "pod", self.name, "-n", self.namespace, "--grace-period=0", "--force",
                "--ignore-not-found", check=False,
            )  # fmt: skip
        else:
            # The kubelet's graceful stop, done here so that what the process says while it stops is kept: a
            # deleted Pod's log goes with it. SIGTERM to the container's main process, SIGKILL to what is left
            # after the grace period; the exited container stays (restartPolicy Never) with its whole log.
            main = self.main_pid()
            if main is not None:
                try:
                    os.kill(main, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    _wait(lambda: not self.pids(), f"pod {self.name} stopped by SIGTERM", grace)
                except TimeoutError:
                    self.kill()
            self._save_log()
            self.cluster.kubectl(
                "delete", "pod", self.name, "-n", self.namespace, "--grace-period=0", "--force",
                "--ignore-not-found", check=False,
            )  # fmt: skip
        _wait(lambda: not self._get(), f"pod {self.name} deleted", 60)
        _wait(lambda: not self.pids(), f"the processes of pod {self.name} gone", 60)
        self._container_id = None

    def _wait_running(self, timeout: float) -> None:
        def running() -> bool:
            state = self._state().get("state") or {}
            if "terminated" in state:
                raise RuntimeError(
                    f"pod {self.name} exited during start-up: {state['terminated']}\n{self.tail(3000)}"
                )
            return "running" in state

        _wait(running, f"pod {self.name} running", timeout)

    def tail(self, chars: int = 6000) -> str:
        saved = self.log.read_text(errors="replace") if self.log.exists() else ""
        out = self.cluster.kubectl("logs", self.name, "-n", self.namespace, check=False)
        current = out.stdout if out.returncode == 0 else ""
        return (saved + current)[-chars:]


class ProxyPod(_Pod):
    """A `sipproxy` Pod: labels of the chart's proxies, config in a ConfigMap, MI on the node's address at
    a port of its own."""

    container = "proxy"

    def __init__(
        self,
        cluster: LocalCluster,
        image: str,
        namespace: str,
        name: str,
        config: dict[str, Any],
        share_dir: Path,
    ) -> None:
        super().__init__(cluster, namespace, name, share_dir / name / "sipproxy.log")
        self.image, self.share_dir = image, share_dir
        self.config = json.loads(json.dumps(config))  # a private deep copy
        self.mi_port = free_port(layout.NODE_IP)
        mi = self.config.setdefault("mi", {})
        mi["listen"] = f"{layout.NODE_IP}:{self.mi_port}"
        self.mi_url = f"{'https' if mi.get('tls') else 'http'}://{mi['listen']}/{mi.get('root', 'mi')}"
        # The readiness probe's port: with mutual TLS on the MI, a plain-HTTP port of its own (as the chart).
        self.probe_port = self.mi_port
        if mi.get("tls"):
            self.probe_port = free_port(layout.NODE_IP)
            self.config["metrics"] = {"listen": f"{layout.NODE_IP}:{self.probe_port}"}
        self.config_map = f"{name}-config"

    def manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": dict(PROXY_LABELS),
                "annotations": {MI_PORT_ANNOTATION: str(self.mi_port)},
            },
            "spec": {
                "hostNetwork": True,
                "dnsPolicy": "Default",
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 5,
                "automountServiceAccountToken": False,
                "securityContext": {"runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID},
                "containers": [
                    {
                        "name": self.container,
                        "image": self.image,
                        "imagePullPolicy": "Never",
                        "command": ["sipproxy", "--config", "/etc/sipsockets/proxy.yaml"],
                        "readinessProbe": {
                            "httpGet": {"path": "/readyz", "port": self.probe_port},
                            "periodSeconds": 1,
                            "timeoutSeconds": 1,
                            "failureThreshold": PROBE_FAILURES_TOLERATED,
                        },
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "64Mi"},
                            # The chart's limit: a proxy at its default worker counts is 17 to 25 processes.
                            "limits": {"memory": "1Gi"},
                        },
                        "volumeMounts": [
                            {"name": "config", "mountPath": "/etc/sipsockets", "readOnly": True},
                            {"name": "work", "mountPath": str(self.share_dir)},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "config", "configMap": {"name": self.config_map}},
                    {"name": "work", "hostPath": {"path": str(self.share_dir), "type": "Directory"}},
                ],
            },
        }

    def start(self, timeout: float = 120.0) -> None:
        self._delete(grace=0)  # a crashed container's Pod: replaced, as its controller would
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": self.config_map, "namespace": self.namespace},
            "data": {"proxy.yaml": yaml.safe_dump(self.config, sort_keys=False)},
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(config_map))
        share(self.share_dir)
        self._create()
        self._wait_running(timeout)

        def ready() -> bool:
            self._wait_running(timeout)  # raises if the proxy exited
            status = self._get().get("status") or {}
            return any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ()
            )

        _wait(ready, f"pod {self.name} Ready", timeout)

    def stop(self) -> None:
        self._delete(grace=5)


class OperatorPod(_Pod):
    """`sipsockets-operator` as a Pod with the chart's ServiceAccount and RBAC; health on 127.0.0.1."""

    container = "operator"

    def __init__(
        self,
        cluster: LocalCluster,
        image: str,
        namespace: str,
        name: str,
        env: dict[str, str],
        share_dir: Path,
        log: Path,
    ) -> None:
        super().__init__(cluster, namespace, name, log)
        self.image, self.share_dir = image, share_dir
        self.health_port = free_port()
        self.env = {**env, "SIPSOCKETS_HEALTH_LISTEN": f"127.0.0.1:{self.health_port}"}
        self.service_account = ""

    def ensure_rbac(self) -> None:
        """The chart's own operator ServiceAccount, Role and RoleBinding, rendered for this namespace (its
        Lease is the chart's default name, which is the operator's default too)."""
        rendered = self.cluster.helm(
            "template", RELEASE, str(CHART), "--namespace", self.namespace,
            "--show-only", "templates/operator-rbac.yaml",
        ).stdout  # fmt: skip
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        self.service_account = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
        doc = {"apiVersion": "v1", "kind": "List", "items": docs}
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(doc))

    def manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(OPERATOR_LABELS)},
            "spec": {
                "hostNetwork": True,
                # kopf's in-cluster login names https://kubernetes.default.svc: the cluster's DNS.
                "dnsPolicy": "ClusterFirstWithHostNet",
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 20,
                "serviceAccountName": self.service_account,
                "securityContext": {"runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID},
                "containers": [
                    {
                        "name": self.container,
                        "image": self.image,
                        "imagePullPolicy": "Never",
                        "env": [{"name": k, "value": v} for k, v in sorted(self.env.items())],
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "64Mi"},
                            "limits": {"memory": "512Mi"},
                        },
                        "volumeMounts": [{"name": "work", "mountPath": str(self.share_dir)}],
                    }
                ],
                "volumes": [{"name": "work", "hostPath": {"path": str(self.share_dir), "type": "Directory"}}],
            },
        }

    def start(self, timeout: float = 120.0) -> None:
        self.launch()
        self.wait_started(timeout)

    def launch(self) -> None:
        """Create the Pod and return at once (several replicas are created at the same instant)."""
        if not self.service_account:
            self.ensure_rbac()
        self._delete(grace=0)
        share(self.share_dir)
        self._create()

    def wait_started(self, timeout: float = 120.0) -> None:
        self._wait_running(timeout)
        _wait(self.healthy, f"the operator's /healthz (pod {self.name})", timeout, interval=0.5)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            state = self._state().get("state") or {}
            if "terminated" in state:
                raise AssertionError(
                    f"the operator pod {self.name} exited: {state['terminated']}\n{self.tail()}"
                ) from None
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def stop(self) -> None:
        """Graceful: the kubelet sends SIGTERM and waits (the operator releases its Lease)."""
        self._delete(grace=20)
