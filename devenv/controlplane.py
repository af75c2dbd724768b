"""A real Kubernetes control plane on loopback: etcd and kube-apiserver processes, RBAC on, a service-account
issuer with its keys, an admin kubeconfig. Used by the e2e fixtures and by `make demo`.

Everything lives in one work dir (certificates, etcd data, logs, kubeconfigs, the process table), so a later
process can stop what an earlier one started (`make demo-down`).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from devenv import binaries
from devenv.cluster_client import ClusterClient, write_kubeconfig
from devenv.processes import ProcessTable, free_port

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"  # allocated in etcd; only the local node provider routes it
# The `kubernetes` Service's address: in-cluster clients verify the serving certificate against it.
API_SERVICE_IP = str(ipaddress.ip_network(SERVICE_CIDR).network_address + 1)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(pki: Path) -> None:
    """CA, API server serving cert, admin client cert (system:masters), service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "admin.crt").exists():
        return
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
             "-subj", "/CN=sipsockets-dev-ca", cwd=pki)  # fmt: skip
    (pki / "serving.ext").write_text(
        f"subjectAltName=IP:127.0.0.1,IP:::1,IP:{API_SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
        "extendedKeyUsage=serverAuth\n"
    )
    (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subj, ext in (
        ("apiserver", "/CN=kube-apiserver", "serving.ext"),
        ("admin", "/O=system:masters/CN=sipsockets-admin", "client.ext"),
    ):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj, cwd=pki)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "3650", "-extfile", ext, "-out", f"{name}.crt", cwd=pki)  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


class ControlPlane(ClusterClient):
    # Flags a provider adds to kube-apiserver's (the local node provider's kubelet addressing, for one).
    apiserver_extra_args: tuple[str, ...] = ()

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir.resolve(), workdir.resolve() / "kubeconfig")
        self.pki = self.workdir / "pki"
        self.procs = ProcessTable(self.workdir)
        self._state = self.workdir / "controlplane.json"
        self.server = ""
        self.apiserver_argv: list[str] = []
        if self._state.exists():
            self.server = json.loads(self._state.read_text())["server"]

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        bins = binaries.ensure(["etcd", "kube-apiserver", "kubectl"])
        self.workdir.mkdir(parents=True, exist_ok=True)
        _make_pki(self.pki)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self.procs.start(
            "etcd",
            [
                str(bins["etcd"]),
                "--name=dev",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=dev=http://127.0.0.1:{peer_port}",
                "--listen-metrics-urls=",
                # Test data: durability is not worth the fsync latency on a shared machine.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            self.workdir / "etcd.log",
        )
        self.server = f"https://127.0.0.1:{api_port}"
        self.apiserver_argv = [
            str(bins["kube-apiserver"]),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            "--authorization-mode=RBAC",
            f"--client-ca-file={self.pki / 'ca.crt'}",
            f"--tls-cert-file={self.pki / 'apiserver.crt'}",
            f"--tls-private-key-file={self.pki / 'apiserver.key'}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={self.pki / 'sa.pub'}",
            f"--service-account-signing-key-file={self.pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",
            "--v=1",
            *self.apiserver_extra_args,
        ]
        self.procs.start("kube-apiserver", self.apiserver_argv, self.workdir / "kube-apiserver.log")
        self._state.write_text(json.dumps({"server": self.server}))
        write_kubeconfig(self.kubeconfig, self.server, _b64(self.pki / "ca.crt"), user={
            "client-certificate-data": _b64(self.pki / "admin.crt"),
            "client-key-data": _b64(self.pki / "admin.key"),
        })  # fmt: skip
        self._wait_ready(timeout)

    def stop(self) -> None:
        self.procs.stop_all(order=["kube-apiserver", "etcd"])

    def stop_apiserver(self, grace: float = 5.0) -> None:
        """Stop kube-apiserver alone, etcd and its data kept: SIGTERM (its graceful shutdown: it stops
        listening at once, but its process lingers in shutdown for longer than 15 s here), SIGKILL after
        `grace` seconds (0: at once, a crash)."""
        self.procs.stop("kube-apiserver", timeout=grace)

    def start_apiserver(self, timeout: float = 120.0) -> None:
        """Start kube-apiserver again, same port, flags and etcd, after `stop_apiserver`."""
        self.procs.start("kube-apiserver", self.apiserver_argv, self.workdir / "kube-apiserver.log")
        self._wait_ready(timeout)

    def running(self) -> bool:
        if not self.server:
            return False
        try:
            return self._get("/readyz", timeout=3) == 200
        except OSError:
            return False

    # -- clients ---------------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _get(self, path: str, timeout: float) -> int:
        try:
            with urllib.request.urlopen(
                self.server + path, context=self._ssl_context(), timeout=timeout
            ) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for name, pid in self.procs.load().items():
                if not Path(f"/proc/{pid}").exists():
                    log = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited during start-up; end of its log:\n{log}")
            try:
                status = self._get("/readyz", timeout=3)
                if status == 200:
                    return
                last = f"HTTP {status}"
            except OSError as e:
                last = str(e)
            time.sleep(0.3)
        raise TimeoutError(f"kube-apiserver not ready after {timeout}s ({last}); see {self.workdir}")
