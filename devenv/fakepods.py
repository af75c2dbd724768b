"""Proxy "pods" without a kubelet: a `sipproxy` process on its own loopback address, registered as a Pod
object whose status (Running, Ready, podIP) this harness sets, as a kubelet would. The operator sees
ordinary Pods.

A pod may also run in a network namespace of its own (`netns`, devenv/netns.py), where its SIP sockets see
that namespace's addresses only (a node holding a carrier's address, or not); its MI and probe ports are then
reached at `ip` through relays into the namespace. `node` is the Pod's spec.nodeName.

This simulation belongs to the e2e tier and the demo only; nothing in the operator knows about it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from devenv.controlplane import ControlPlane
from devenv.netns import Netns, Relay
from devenv.processes import ProcessTable, alive

PROXY_LABELS = {"app.kubernetes.io/name": "sipsockets", "app.kubernetes.io/component": "proxy"}
MI_PORT = 8888


def sipproxy_command() -> str:
    """The console script installed beside the running interpreter (the project's virtualenv)."""
    return str(Path(sys.executable).parent / "sipproxy")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProxyPod:
    def __init__(
        self,
        cp: ControlPlane,
        namespace: str,
        name: str,
        ip: str,
        config: dict[str, Any],
        workdir: Path,
        labels: dict[str, str] | None = None,
        netns: Netns | None = None,
        node: str | None = None,
    ) -> None:
        self.cp = cp
        self.netns = netns
        self.node = node
        self.relays: list[Relay] = []
        self.namespace = namespace
        self.name = name
        self.ip = ip
        self.labels = dict(labels if labels is not None else PROXY_LABELS)
        self.workdir = workdir / name
        self.config = json.loads(json.dumps(config))  # a private deep copy
        mi = self.config.setdefault("mi", {})
        mi.setdefault("listen", f"{ip}:{MI_PORT}")
        self.mi_listen = str(mi["listen"])
        scheme = "https" if mi.get("tls") else "http"
        self.mi_url = f"{scheme}://{self.mi_listen}/{mi.get('root', 'mi')}"
        if mi.get("tls"):
            # Mutual TLS on the MI: /readyz (and /metrics) on a plain-HTTP port of their own, as in the chart.
            self.config.setdefault("metrics", {"listen": f"{ip}:{MI_PORT + 1}"})
        # Where the harness (as the kubelet's probe would) asks /readyz.
        self.probe_listen = str((self.config.get("metrics") or {}).get("listen") or self.mi_listen)
        self.procs = ProcessTable(cp.workdir)
        self._proc_name = f"proxy-{namespace}-{name}"
        if netns is not None:
            # Inside the namespace the ports listen on its loopback; the host reaches them at `ip`.
            self.config["node_name"] = node
            self._inner: dict[str, tuple[str, int]] = {}
            for section in ("mi", "metrics"):
                if section in self.config:
                    host, _, port = str(self.config[section]["listen"]).rpartition(":")
                    self._inner[f"{host}:{port}"] = ("127.0.0.1", int(port))
                    self.config[section] = {**self.config[section], "listen": f"127.0.0.1:{port}"}

    # -- the process -----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.procs.load().get(self._proc_name)

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "proxy.yaml"
        cfg.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.procs.stop(self._proc_name)
        self._close_relays()
        self._refuse_taken_mi_address()
        argv = [sipproxy_command(), "--config", str(cfg)]
        if self.netns is not None:
            argv = self.netns.command(argv)
            for outer, inner in self._inner.items():
                host, _, port = outer.rpartition(":")
                self.relays.append(Relay((host, int(port)), self.netns, inner))
        proc = self.procs.start(self._proc_name, argv, self.workdir / "sipproxy.log", env=dict(os.environ))
        self._wait_ready(proc.pid, timeout)
        self._register(ready=True)

    def _refuse_taken_mi_address(self) -> None:
        """Readiness is read from the MI address: a process already answering there (a proxy left behind by
        an interrupted run, say) would pass for this one, so that is an error of its own."""
        host, _, port = self.mi_listen.rpartition(":")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            taken = probe.connect_ex((host.strip("[]"), int(port))) == 0
        if taken:
            raise RuntimeError(
                f"cannot start proxy pod {self.name}: something already listens on its MI address "
                f"{self.mi_listen} (a sipproxy left over from an interrupted run?)"
            )

    def _wait_ready(self, pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive(pid):
                log = (self.workdir / "sipproxy.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"sipproxy {self.name} exited during start-up:\n{log}")
            try:
                with urllib.request.urlopen(f"http://{self.probe_listen}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"sipproxy {self.name} not ready after {timeout}s; see {self.workdir}")

    def kill(self) -> None:
        """The container crashed: the process dies at once and the Pod stops being Ready."""
        pid = self.pid
        if pid is not None:
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass
            self.procs.stop(self._proc_name, timeout=5)
        self._close_relays()
        self._set_status(ready=False)

    def pause(self) -> None:
        """The container hangs: every process stops where it is; the Pod stays Ready."""
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"proxy pod {self.name} has no process to pause")
        os.killpg(pid, signal.SIGSTOP)

    def resume(self) -> None:
        pid = self.pid
        if pid is not None:
            os.killpg(pid, signal.SIGCONT)

    def stop(self) -> None:
        """The pod is deleted: graceful stop of the process, then the Pod object goes."""
        self.procs.stop(self._proc_name)
        self._close_relays()
        self.cp.kubectl(
            "delete",
            "pod",
            self.name,
            "-n",
            self.namespace,
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )

    def _close_relays(self) -> None:
        for relay in self.relays:
            relay.close()
        self.relays = []

    # -- the Pod object --------------------------------------------------------------------------------

    def _register(self, ready: bool) -> None:
        spec: dict[str, Any] = {
            "containers": [{"name": "sipproxy", "image": "sipsockets/proxy:dev", "imagePullPolicy": "Never"}]
        }
        if self.node is not None:
            spec["nodeName"] = self.node  # bound to that node at creation, as the scheduler would
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": self.labels},
            "spec": spec,
        }
        exists = self.cp.kubectl("get", "pod", self.name, "-n", self.namespace, check=False).returncode == 0
        if not exists:
            self.cp.kubectl("create", "-f", "-", input=json.dumps(pod))
        self._set_status(ready)

    def _set_status(self, ready: bool) -> None:
        flag = "True" if ready else "False"
        conditions = [
            {
                "type": t,
                "status": "True" if t in ("PodScheduled", "Initialized") else flag,
                "lastTransitionTime": _now(),
            }
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        status = {
            "status": {
                "phase": "Running",
                "podIP": self.ip,
                "podIPs": [{"ip": self.ip}],
                "hostIP": "127.0.0.1",
                "startTime": _now(),
                "conditions": conditions,
            }
        }
        self.cp.kubectl(
            "patch", "pod", self.name, "-n", self.namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps(status), check=False,
        )  # fmt: skip
