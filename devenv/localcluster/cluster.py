"""LocalCluster: the control plane of devenv.controlplane plus a real node on this machine.

kube-controller-manager, kube-scheduler, containerd (Debian's package, as a plain background process with its
own root, state dir and socket), a kubelet, the CNI bridge network, and `services` (Service addresses and
cluster DNS; see devenv/localcluster/services.py). Everything is recorded in the work dir so that another
process can stop it (`python -m devenv.cluster down`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from devenv import binaries, images
from devenv.controlplane import SERVICE_CIDR, ControlPlane
from devenv.localcluster import hostnet, layout, render
from devenv.localcluster.layout import NodePaths
from devenv.processes import alive, free_port

# The API server reaches the kubelet (logs, exec, port-forward) by the node's InternalIP: the node name
# resolves nowhere on this machine.
APISERVER_EXTRA_ARGS = ("--kubelet-preferred-address-types=InternalIP,Hostname",)

MAX_KUBELET_ROOT = 75

_ORDER = ("kubelet", "services", "kube-scheduler", "kube-controller-manager", "containerd")


class LocalCluster(ControlPlane):
    apiserver_extra_args = APISERVER_EXTRA_ARGS
    node_name = layout.NODE_NAME
    node_ip = layout.NODE_IP

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.paths = NodePaths(self.workdir)

    # -- start -----------------------------------------------------------------------------------------

    def start(self, timeout: float = 300.0, images_to_import: Iterable[str] = ()) -> None:
        # The kubelet binds unix sockets up to ~30 bytes below its root dir (pod-resources/<n>,
        # device-plugins/kubelet.sock), and AF_UNIX paths stop at 107 bytes.
        if len(str(self.paths.kubelet_root)) > MAX_KUBELET_ROOT:
            raise ValueError(
                f"work dir {self.workdir} is too long for the kubelet's unix sockets: its root dir "
                f"{self.paths.kubelet_root} must stay within {MAX_KUBELET_ROOT} characters"
            )
        deadline = time.monotonic() + timeout
        bins = binaries.ensure(["kubelet", "kube-controller-manager", "kube-scheduler", "kubectl"])
        pause = images.pause_image()
        self._claim_node()
        super().start(timeout=max(30.0, deadline - time.monotonic()))
        try:
            self._prepare_node()
            self._start_containerd(deadline)
            images.import_into(self.paths.containerd_socket, [pause, *images_to_import])
            self._start_controllers(bins)
            self._start_services()
            self._start_kubelet(bins["kubelet"])
            self._wait_node_ready(deadline)
            self._wait_service_account("default", deadline)
        except BaseException:
            self.stop()
            raise

    def _claim_node(self) -> None:
        """One local node per machine (fixed bridge, nftables table and cgroup root). A node left behind by
        a run that died is cleaned up first; a live one is an error."""
        owner = layout.OWNER_FILE
        if owner.exists():
            other = Path(owner.read_text().strip())
            if other != self.workdir:
                previous = LocalCluster(other)
                if any(alive(pid) for pid in previous.procs.load().values()):
                    raise RuntimeError(
                        f"a local cluster from {other} is running; stop it first: "
                        f"python -m devenv.cluster down --workdir {other}"
                    )
                previous.stop()
        owner.parent.mkdir(parents=True, exist_ok=True)
        owner.write_text(str(self.workdir))

    def _prepare_node(self) -> None:
        p = self.paths
        for d in (p.node, p.cni_conf_dir, p.cni_ipam_dir, p.kubelet_root, p.containerd_socket.parent):
            d.mkdir(parents=True, exist_ok=True)
        p.containerd_config.write_text(render.containerd_toml(p))
        (p.cni_conf_dir / "10-sipsockets.conflist").write_text(render.cni_conflist_json(p))
        p.resolv_conf.write_text(render.resolv_conf())
        shutil.copy(self.kubeconfig, p.kubelet_kubeconfig)
        hostnet.bridge_up()
        hostnet.cgroup_root_create()
        (self.paths.state).write_text(json.dumps({"containerd_socket": str(p.containerd_socket)}))

    def _start_containerd(self, deadline: float) -> None:
        sock = self.paths.containerd_socket
        sock.unlink(missing_ok=True)
        self.procs.start(
            "containerd",
            ["containerd", "--config", str(self.paths.containerd_config), "--log-level", "warn"],
            self.workdir / "containerd.log",
        )
        while not sock.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"containerd did not create {sock}")
            time.sleep(0.2)
        # The socket appears before the CRI plugin is ready to serve; `ctr version` waits on the API.
        while subprocess.run(
            ["ctr", f"--address={sock}", "version"], capture_output=True, check=False, timeout=30
        ).returncode:
            self._check_alive()
            time.sleep(0.3)

    def _start_controllers(self, bins: dict[str, Path]) -> None:
        kc = str(self.kubeconfig)
        self.procs.start(
            "kube-controller-manager",
            [
                str(bins["kube-controller-manager"]),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allocate-node-cidrs=false",
                # A deleted pod's replacement should not wait for the default five-minute eviction.
                "--node-monitor-grace-period=20s",
                "--v=1",
            ],
            self.workdir / "kube-controller-manager.log",
        )
        self.procs.start(
            "kube-scheduler",
            [
                str(bins["kube-scheduler"]),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--v=1",
            ],
            self.workdir / "kube-scheduler.log",
        )

    def _start_services(self) -> None:
        self.procs.start(
            "services",
            [sys.executable, "-m", "devenv.localcluster.services", str(self.workdir)],
            self.workdir / "services.log",
            cwd=Path(__file__).resolve().parents[2],
        )

    def _start_kubelet(self, kubelet: Path) -> None:
        p = self.paths
        config = render.kubelet_config(p, port=free_port(layout.NODE_IP), healthz_port=free_port())
        p.kubelet_config.write_text(json.dumps(config, indent=1))
        self.procs.start(
            "kubelet",
            [
                str(kubelet),
                f"--config={p.kubelet_config}",
                f"--kubeconfig={p.kubelet_kubeconfig}",
                f"--root-dir={p.kubelet_root}",
                f"--cert-dir={p.node / 'kubelet-pki'}",
                f"--hostname-override={layout.NODE_NAME}",
                f"--node-ip={layout.NODE_IP}",
                "--v=1",
            ],
            self.workdir / "kubelet.log",
        )

    def _check_alive(self) -> None:
        for name, pid in self.procs.load().items():
            if not Path(f"/proc/{pid}").exists():
                log = self.workdir / f"{name}.log"
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise RuntimeError(f"{name} exited during start-up; end of its log:\n{tail}")

    def _wait_node_ready(self, deadline: float) -> None:
        last = "not registered"
        while time.monotonic() < deadline:
            self._check_alive()
            node = self.get_json("node", layout.NODE_NAME, check=False)
            if node:
                conds = {c["type"]: c for c in node.get("status", {}).get("conditions", [])}
                ready = conds.get("Ready", {})
                if ready.get("status") == "True":
                    return
                last = f"{ready.get('reason')}: {ready.get('message')}"
            time.sleep(1)
        raise TimeoutError(f"node {layout.NODE_NAME} not Ready ({last}); see {self.workdir}/kubelet.log")

    def _wait_service_account(self, namespace: str, deadline: float) -> None:
        """Pods are refused until the controller-manager has made the namespace's `default` account."""
        while not self.get_json("serviceaccount", "default", namespace=namespace, check=False):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ServiceAccount {namespace}/default; see kube-controller-manager.log")
            time.sleep(0.5)

    # -- helpers ---------------------------------------------------------------------------------------

    def ensure_namespace(self, name: str) -> None:
        """The namespace, and its `default` ServiceAccount made by the controller-manager (creating it here
        as well would race with it)."""
        manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        self._wait_service_account(name, time.monotonic() + 60)

    def get_json(self, *args: str, namespace: str | None = None, check: bool = True) -> dict[str, Any]:
        ns = [f"--namespace={namespace}"] if namespace else []
        r = self.kubectl("get", *args, *ns, "-o", "json", check=check)
        if r.returncode != 0:
            return {}
        result: dict[str, Any] = json.loads(r.stdout)
        return result

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            ["ctr", f"--address={self.paths.containerd_socket}", "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def import_images(self, refs: Iterable[str]) -> None:
        images.import_into(self.paths.containerd_socket, refs)

    # -- stop ------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Everything goes: pods and their containers, the node's cgroups, mounts, bridge, nftables table,
        state dirs and processes. Safe to call after a failed or partial start, and from another process."""
        table = self.procs.load()
        if "kubelet" in table and self.running():
            self._drain_pods()
        for name in _ORDER:
            if name == "containerd" and name in self.procs.load():
                self._kill_containers()
            self.procs.stop(name)
        sock = str(self.paths.containerd_socket)
        hostnet.kill_all(hostnet.processes_mentioning(sock))
        hostnet.cgroup_cleanup()
        hostnet.unmount_under(self.paths.node)
        hostnet.bridge_down()
        hostnet.nft_delete()
        hostnet.kubelet_iptables_cleanup()
        hostnet.container_log_links_cleanup(self.paths.node / "pod-logs")
        super().stop()
        for leftover in (self.paths.containerd_socket, Path(sock + ".ttrpc")):
            leftover.unlink(missing_ok=True)
        if self.paths.node.exists() and not hostnet.mounts_under(self.paths.node):
            shutil.rmtree(self.paths.node, ignore_errors=True)
        # The cluster's objects die with it: a later `up` in this work dir starts from an empty etcd.
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        try:
            if layout.OWNER_FILE.read_text().strip() == str(self.workdir):
                layout.OWNER_FILE.unlink()
        except OSError:
            pass

    def _drain_pods(self) -> None:
        """Stop the controllers first so nothing is recreated, then let the kubelet tear pods down (CNI DEL,
        volume unmounts) for a bounded time; what is left is killed below."""
        for name in ("kube-controller-manager", "kube-scheduler"):
            self.procs.stop(name)
        self.kubectl(
            "delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false",
            check=False, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = self.kubectl("get", "pods", "-A", "-o", "name", check=False, timeout=30)
            sandboxes = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
            if not left.stdout.strip() and not sandboxes:
                return
            time.sleep(1)

    def _kill_containers(self) -> None:
        for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
        time.sleep(0.5)
        for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "delete", "-f", task, check=False)


def node_environment_problems() -> list[str]:
    """Why this machine cannot run the local node (empty when it can): used to fall back to the
    API-server-only provider."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not running as root")
    for tool in ("containerd", "runc", "ctr", "buildah", "debootstrap", "nft", "ip", "go"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found")
    if not (layout.CNI_BIN_DIR / "bridge").exists():
        problems.append(f"CNI plugins not found in {layout.CNI_BIN_DIR}")
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        problems.append("no usable cgroup hierarchy")
    return problems
