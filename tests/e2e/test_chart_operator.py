"""The chart's RBAC is enough for the operator and no more: `helm install`, then the real operator process
runs with the token of the chart's own ServiceAccount (TokenRequest) and the settings of the chart's own
Deployment (its Secrets materialised as files, as the kubelet would mount them), through a full SipSocket
lifecycle; its webhook is the one the chart registered, with the chart's certificate. Calls outside the Role
are refused."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from devenv.controlplane import ControlPlane
from devenv.fakepods import ProxyPod
from devenv.processes import free_port
from devenv.sipclient import answers_ok
from tests.e2e.chart_support import chart_crds, get_json, helm_install, helm_uninstall, mi_refuses_strangers
from tests.e2e.operator_support import (
    Addresses,
    Operator,
    apply,
    get,
    release_finalizers,
    sipsocket,
    wait_condition,
    wait_for,
)

__all__ = ["chart_crds"]  # fixtures

RELEASE = "sipsockets"
# Generous: the machines are shared and busy; a wait ends as soon as its condition holds.
WAIT = 180.0


def refusals(log: str) -> list[str]:
    """The operator's log lines that tell of a request the API server refused (403). The time stamp in front
    of each line is left out: its milliseconds may read 403."""
    messages = (re.sub(r"^\[[^]]*\]", "", line) for line in log.splitlines())
    return [m for m in messages if re.search(r"\b403\b|[Ff]orbidden", m)]


def mount_secrets(
    cp: ControlPlane, namespace: str, pod_spec: dict[str, Any], container: dict[str, Any], root: Path
) -> dict[str, Path]:
    """What the kubelet does for a container's Secret volumes: each key (or listed item) a file. Returns
    mountPath -> local directory."""
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        data = get_json(cp, "secret", secret["secretName"], "-n", namespace)["data"]
        items = secret.get("items") or [{"key": k, "path": k} for k in data]
        local = root / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        for item in items:
            (local / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
        mounts[mount["mountPath"]] = local
    return mounts


def localise(value: str, mounts: dict[str, Path]) -> str:
    for mount_path, local in mounts.items():
        if value.startswith(mount_path + "/"):
            return str(local) + value[len(mount_path) :]
    return value


@dataclass
class ChartWorld:
    cp: ControlPlane
    namespace: str
    workdir: Path
    addresses: Addresses = field(default_factory=Addresses)
    webhook_port: int = field(default_factory=free_port)
    pods: list[ProxyPod] = field(default_factory=list)
    operators: list[Operator] = field(default_factory=list)
    sa_kubeconfig: Path | None = None

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.workdir / 'sockets.db'}"

    def install(self, **override: Any) -> None:
        # The external-database option: the db_url comes from an existing Secret (here a SQLite file that the
        # operator and proxy processes on this machine share).
        self.cp.kubectl(
            "create",
            "secret",
            "generic",
            "carrier-db",
            "-n",
            self.namespace,
            f"--from-literal=url={self.db_url}",
        )
        values: dict[str, Any] = {
            "database": {"external": {"existingSecret": "carrier-db", "secretKey": "url"}},
            "operator": {
                "resyncPeriod": 10,
                "miTimeout": 3,
                "webhook": {
                    # The API server reaches the operator process on loopback, with the chart's certificate.
                    "url": f"https://127.0.0.1:{self.webhook_port}/validate-sipsocket",
                    "extraIpAddresses": ["127.0.0.1"],
                },
            },
            # This control plane has cert-manager's CRDs (stand-ins) but no cert-manager: the chart's own CA.
            "mi": {"tls": {"certManager": {"enabled": False}}},
        }
        for key, value in override.items():
            values[key] = {**values.get(key, {}), **value}
        helm_install(self.cp, self.namespace, values, self.workdir)

    def operator_template(self) -> dict[str, Any]:
        """The operator's pod template (a Deployment, whatever the number of replicas)."""
        template: dict[str, Any] = get_json(
            self.cp, "deployment", f"{RELEASE}-operator", "-n", self.namespace
        )["spec"]["template"]
        return template

    def service_account_kubeconfig(self) -> Path:
        sa = self.operator_template()["spec"]["serviceAccountName"]
        token = self.cp.kubectl("create", "token", sa, "-n", self.namespace, "--duration=1h").stdout.strip()
        self.sa_kubeconfig = self.cp.kubeconfig_for_token(token, self.workdir / "operator-sa.kubeconfig")
        return self.sa_kubeconfig

    def run_schema_init(self, spec: dict[str, Any]) -> None:
        """The chart's init step, run as its container would: `sipproxy db init` with the Secret's URL in
        its volume."""
        init = next(c for c in spec["initContainers"] if c["name"] == "db-init")
        mounts = mount_secrets(self.cp, self.namespace, spec, init, self.workdir / "db-init" / "mounts")
        command = [localise(part, mounts) for part in init["command"]]
        command[0] = str(Path(sys.executable).parent / command[0])
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start_proxy(self, name: str) -> ProxyPod:
        deployment = get_json(self.cp, "deployment", f"{RELEASE}-proxy", "-n", self.namespace)
        template = deployment["spec"]["template"]
        spec = template["spec"]
        container = next(c for c in spec["containers"] if c["name"] == "proxy")
        mounts = mount_secrets(self.cp, self.namespace, spec, container, self.workdir / name / "mounts")
        config = yaml.safe_load(
            get_json(self.cp, "configmap", f"{RELEASE}-proxy", "-n", self.namespace)["data"]["proxy.yaml"]
        )
        config["sockets_mgm"]["db_url"] = self.db_url
        if "token_file" in config["mi"]:
            config["mi"]["token_file"] = localise(config["mi"]["token_file"], mounts)
        if "tls" in config["mi"]:
            config["mi"]["tls"] = {k: localise(v, mounts) for k, v in config["mi"]["tls"].items()}
        ip = self.addresses.next()
        for key in ("mi", "metrics"):  # the pod's own address, here a loopback one
            port = int(config[key]["listen"].rsplit(":", 1)[1])
            config[key]["listen"] = f"{ip}:{port}"
        pod = ProxyPod(
            self.cp,
            self.namespace,
            name,
            ip,
            config,
            self.workdir,
            labels=dict(template["metadata"]["labels"]),
        )
        pod.start()
        self.pods.append(pod)
        return pod

    def start_operator(self, pod_index: int = 0) -> Operator:
        """Replica `pod_index` of the chart's operator workload, with the chart's settings."""
        spec = self.operator_template()["spec"]
        if not self.operators:
            self.run_schema_init(spec)
        (container,) = spec["containers"]
        root = self.workdir / f"operator-{pod_index}"
        mounts = mount_secrets(self.cp, self.namespace, spec, container, root / "mounts")
        op = Operator(self.cp, self.namespace, self.db_url, root)
        fields = {
            "metadata.namespace": self.namespace,
            "metadata.labels['apps.kubernetes.io/pod-index']": str(pod_index),
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIPSOCKETS_")}
        for item in container["env"]:
            if "valueFrom" not in item:  # the API server drops an empty value
                env[item["name"]] = localise(item.get("value", ""), mounts)
            elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") in fields:
                env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                raise AssertionError(f"unexpected env source in the chart's operator: {item}")
        # The pod's 0.0.0.0 listeners, kept on loopback here.
        env["SIPSOCKETS_HEALTH_LISTEN"] = f"127.0.0.1:{op.health_port}"
        if env.get("SIPSOCKETS_WEBHOOK_LISTEN"):
            env["SIPSOCKETS_WEBHOOK_LISTEN"] = (
                f"127.0.0.1:{self.webhook_port if pod_index == 0 else free_port()}"
            )
        env["KUBECONFIG"] = str(self.sa_kubeconfig or self.service_account_kubeconfig())
        op.env = env
        self.operators.append(op)
        return op.start()

    def close(self) -> None:
        for op in self.operators:
            op.stop()
        for pod in self.pods:
            pod.stop()
        release_finalizers(self.cp, self.namespace)
        helm_uninstall(self.cp, self.namespace)


@pytest.fixture
def world(
    control_plane: ControlPlane, chart_crds: None, namespace: str, tmp_path: Path
) -> Iterator[ChartWorld]:
    w = ChartWorld(control_plane, namespace, tmp_path)
    try:
        yield w
    finally:
        w.close()


def forbidden(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode != 0 and "forbidden" in result.stderr.lower()


def test_operator_with_the_charts_service_account(world: ChartWorld) -> None:
    cp, ns = world.cp, world.namespace
    world.install()
    pod = world.start_proxy(f"{RELEASE}-proxy-0")
    op = world.start_operator()
    addr = world.addresses.next()

    # The MI answers only the operator's certificate: neither plain HTTP nor TLS without the certificate
    # gets an answer; /readyz and /metrics are plain HTTP on the metrics port.
    assert mi_refuses_strangers(pod.mi_listen)
    with urllib.request.urlopen(f"http://{pod.probe_listen}/metrics", timeout=10) as r:
        assert r.status == 200 and b"sipproxy_reloads_total" in r.read()

    # Create: accepted by the chart-registered webhook, programmed, listening, answering SIP.
    assert apply(cp, ns, sipsocket("carrier-a", "udp", addr, 5060)).returncode == 0
    obj = wait_condition(cp, ns, "carrier-a", "Ready", "True", timeout=WAIT)
    assert obj["status"]["listeners"][0]["pod"] == pod.name
    assert wait_for(lambda: answers_ok(addr, 5060), f"OPTIONS answered on udp {addr}:5060", timeout=WAIT)
    reasons = {
        e["reason"] for e in json.loads(cp.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    }
    assert "Programmed" in reasons

    # The chart's webhook registration and certificate reach the operator's webhook: a conflict is refused.
    out = apply(cp, ns, sipsocket("carrier-b", "udp", addr, 5060), check=False)
    assert out.returncode != 0
    assert "admission webhook" in out.stderr and "carrier-a" in out.stderr, out.stderr
    assert get(cp, ns, "carrier-b") is None

    # Update: the port moves.
    apply(cp, ns, sipsocket("carrier-a", "udp", addr, 5062))
    wait_condition(cp, ns, "carrier-a", "Ready", "True", timeout=WAIT)
    assert wait_for(lambda: answers_ok(addr, 5062), f"OPTIONS answered on udp {addr}:5062", timeout=WAIT)
    assert wait_for(lambda: not answers_ok(addr, 5060), f"udp {addr}:5060 closed", timeout=WAIT)

    # Delete: the finalizer runs (row removed, proxies reloaded) and the object goes.
    cp.kubectl("delete", "sipsocket", "carrier-a", "-n", ns, "--wait=false")
    wait_for(lambda: get(cp, ns, "carrier-a") is None, "carrier-a deleted", timeout=WAIT)
    assert wait_for(lambda: not answers_ok(addr, 5062), f"udp {addr}:5062 closed", timeout=WAIT)

    # Nothing the operator did was refused: the chart's Role is enough.
    assert refusals(op.tail(200_000)) == []

    # And no more than enough: the same token is refused outside the Role.
    assert world.sa_kubeconfig is not None
    kc = world.sa_kubeconfig
    # Secrets: read in its own namespace (the certificates of tls/wss SipSockets), never written, never
    # elsewhere.
    assert forbidden(cp.kubectl("get", "secrets", "-n", "default", kubeconfig=kc, check=False))
    assert forbidden(
        cp.kubectl(
            "create", "secret", "generic", "x", "-n", ns, "--from-literal=a=b", kubeconfig=kc, check=False
        )
    )
    assert forbidden(
        cp.kubectl("delete", "secret", f"{RELEASE}-mi-token", "-n", ns, kubeconfig=kc, check=False)
    )
    assert forbidden(cp.kubectl("get", "sipsockets", "-n", "default", kubeconfig=kc, check=False))
    assert forbidden(cp.kubectl("delete", "pod", pod.name, "-n", ns, kubeconfig=kc, check=False))
    assert forbidden(cp.kubectl("create", "configmap", "x", "-n", ns, kubeconfig=kc, check=False))
    assert forbidden(cp.kubectl("get", "customresourcedefinitions", kubeconfig=kc, check=False))
    assert forbidden(
        cp.kubectl(
            "apply",
            "-n",
            ns,
            "-f",
            "-",
            input=json.dumps(sipsocket("by-operator", "udp", addr, 5064)),
            kubeconfig=kc,
            check=False,
        )
    )
    # While what it needs is allowed with the very same token.
    assert cp.kubectl("get", "sipsockets", "-n", ns, kubeconfig=kc, check=False).returncode == 0
    assert cp.kubectl("get", "pods", "-n", ns, kubeconfig=kc, check=False).returncode == 0
    assert cp.kubectl("get", "secrets", "-n", ns, kubeconfig=kc, check=False).returncode == 0


def leads(op: Operator) -> bool:
    return bool(re.search(r"^sipsockets_leader 1$", op.metrics(), flags=re.M))


def test_replicas_elect_a_leader_with_the_charts_service_account(world: ChartWorld) -> None:
    """operator.replicas > 1: the replicas elect a leader through the Lease the chart's Role names (get and
    update on it only, create), one writing, the other watching; the other takes over when it stops."""
    cp, ns = world.cp, world.namespace
    world.install(operator={"replicas": 2, "webhook": {"enabled": False}})
    world.start_proxy(f"{RELEASE}-proxy-0")
    ops = [world.start_operator(pod_index=0), world.start_operator(pod_index=1)]
    leader = wait_for(lambda: next((op for op in ops if leads(op)), None), "a leader", timeout=WAIT)
    standby = next(op for op in ops if op is not leader)
    lease = get_json(cp, "lease", f"{RELEASE}-operator", "-n", ns)
    assert lease["spec"]["holderIdentity"] in leader.tail(200_000)

    addr = world.addresses.next()
    apply(cp, ns, sipsocket("carrier-a", "udp", addr, 5060))
    wait_condition(cp, ns, "carrier-a", "Ready", "True", timeout=WAIT)
    assert wait_for(lambda: answers_ok(addr, 5060), f"OPTIONS answered on udp {addr}:5060", timeout=WAIT)
    # The other replica watched: it did not handle the SipSocket.
    assert "carrier-a" not in standby.tail(200_000)
    assert not leads(standby)

    # The leader goes away (a rolling update, a drained node): it releases the Lease, the other takes over.
    leader.stop()
    wait_for(lambda: leads(standby), "the other replica leading", timeout=WAIT)
    apply(cp, ns, sipsocket("carrier-b", "udp", addr, 5062))
    wait_condition(cp, ns, "carrier-b", "Ready", "True", timeout=WAIT)
    assert wait_for(lambda: answers_ok(addr, 5062), f"OPTIONS answered on udp {addr}:5062", timeout=WAIT)

    for op in world.operators:
        assert refusals(op.tail(200_000)) == []
