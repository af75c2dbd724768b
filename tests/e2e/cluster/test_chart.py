"""The chart installed for real into the local node: the operator, the proxy DaemonSet (hostNetwork) and the
bundled PostgreSQL run as pods from the images built in this run, and the user-visible promises hold:

- a SipSocket applied with kubectl is answered (SIPp) on the node address;
- the proxy pod deleted (with the operator scaled to zero) comes back and serves every socket from the
  database alone;
- the operator pod deleted right after a SipSocket is applied: its replacement finishes the work;
- `helm upgrade` changing the proxy config rolls the proxy pod (a surge pod takes the sockets over) while
  SIPp's OPTIONS to a SipSocket are all answered, and the sockets come back;
- `helm test` sends an OPTIONS to every Ready SipSocket and names each one that answered;
- `helm uninstall` leaves no pod behind, and the CRD stays.

The tests of this module share one release and run in file order; each uses sockets of its own.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devenv import images
from devenv.localcluster import LocalCluster, chart
from devenv.processes import free_port
from tests.e2e.chart_support import mi_refuses_strangers

pytestmark = pytest.mark.timeout(1800)

REPO = Path(__file__).resolve().parents[3]
OPTIONS_SCENARIO = REPO / "tests" / "integration" / "scenarios" / "options.xml"
NS = chart.NAMESPACE
RELEASE = chart.RELEASE
T = TypeVar("T")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 180.0) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


def sipp_answers(address: str, port: int) -> bool:
    """One OPTIONS from SIPp to address:port over UDP; True when it gets its 200."""
    result = subprocess.run(
        ["sipp", "-sf", str(OPTIONS_SCENARIO), "-m", "1", "-i", "127.0.0.1", "-p", str(free_port()),
         "-timeout", "15s", "-timeout_error", "-nostdin",
         f"{address}:{port}"],
        capture_output=True, text=True, timeout=60, check=False, cwd="/tmp",
    )  # fmt: skip
    return result.returncode == 0


class Release:
    def __init__(self, cluster: LocalCluster, built: images.Images, workdir: Path) -> None:
        self.c = cluster
        self.built = built
        self.workdir = workdir
        self.mi_port = free_port(cluster.node_ip)
        self.metrics_port = free_port(cluster.node_ip)

    def values(self, **proxy_overrides: Any) -> dict[str, Any]:
        return chart.values(self.built, self.mi_port, self.metrics_port, **proxy_overrides)

    def helm(self, command: str, values: dict[str, Any]) -> None:
        chart.helm(self.c, command, values, self.workdir / f"values-{command}.json", NS, RELEASE)

    def pods(self, component: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.c.get_json(
            "pods", "-l", f"app.kubernetes.io/component={component}", namespace=NS
        )["items"]
        return items

    def ready_pod(self, component: str, not_uid: str = "") -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            for pod in self.pods(component):
                conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
                deleting = pod["metadata"].get("deletionTimestamp")
                if conds.get("Ready") == "True" and not deleting and pod["metadata"]["uid"] != not_uid:
                    return pod
            return None

        return wait_for(check, f"a Ready {component} pod other than {not_uid or '-'}", timeout=300)

    def apply_sipsocket(self, name: str, port: int) -> None:
        obj = {
            "apiVersion": "sipsockets.io/v1alpha1",
            "kind": "SipSocket",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"protocol": "udp", "address": self.c.node_ip, "port": port},
        }

        # Right after the operator pod (re)starts its webhook Service can be without a ready endpoint for a
        # moment, as in any cluster: the API server then refuses the object; a user would retry.
        def applied() -> bool:
            r = self.c.kubectl("apply", "-f", "-", input=json.dumps(obj), check=False)
            if r.returncode != 0 and "failed calling webhook" not in r.stderr:
                raise AssertionError(f"kubectl apply refused {name}: {r.stderr}")
            return r.returncode == 0

        wait_for(applied, f"SipSocket {name} accepted", timeout=120)

    def sipsocket_ready(self, name: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.c.get_json("sipsocket", name, namespace=NS, check=False)
            conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
            return obj if conds.get("Ready") == "True" else None

        return wait_for(check, f"SipSocket {name} Ready", timeout=240)

    def answered(self, port: int) -> bool:
        return wait_for(lambda: sipp_answers(self.c.node_ip, port), f"SIPp answered on port {port}", 180)

    def sql(self, query: str) -> str:
        pod = self.ready_pod("database")["metadata"]["name"]
        return self.c.kubectl(
            "exec", pod, "-n", NS, "--", "sh", "-c",
            f'PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" '
            f"-tAc '{query}'",
        ).stdout.strip()  # fmt: skip


@pytest.fixture(scope="module")
def release(
    local_cluster: LocalCluster, built_images: images.Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    chart.provide_volumes(local_cluster)
    rel = Release(local_cluster, built_images, tmp_path_factory.mktemp("chart"))
    rel.helm("install", rel.values())
    yield rel


def test_sipsocket_applied_with_kubectl_is_answered_on_the_node_address(release: Release) -> None:
    proxy = release.ready_pod("proxy")
    assert proxy["spec"]["hostNetwork"] is True
    assert proxy["status"]["podIP"] == release.c.node_ip
    operator = release.ready_pod("operator")
    assert operator["spec"]["serviceAccountName"] == f"{RELEASE}-operator"
    # The MI on the node's address answers only the operator's certificate (mutual TLS, the chart's own
    # CA); the probes and /metrics are plain HTTP on the metrics port.
    assert mi_refuses_strangers(f"{release.c.node_ip}:{release.mi_port}")
    metrics = f"http://{release.c.node_ip}:{release.metrics_port}/metrics"
    with urllib.request.urlopen(metrics, timeout=10) as r:
        assert r.status == 200 and b"sipproxy_" in r.read()
    port = free_port(release.c.node_ip)
    release.apply_sipsocket("first", port)
    release.sipsocket_ready("first")
    assert release.answered(port)
    assert release.sql("select count(*) from sockets") == "1"


def test_proxy_pod_recreated_serves_every_socket_from_the_database(release: Release) -> None:
    ports = [free_port(release.c.node_ip) for _ in range(2)]
    for i, port in enumerate(ports):
        release.apply_sipsocket(f"recreate-{i}", port)
        release.sipsocket_ready(f"recreate-{i}")
    c = release.c
    c.kubectl("scale", "deployment", f"{RELEASE}-operator", "-n", NS, "--replicas=0")
    try:
        wait_for(lambda: not release.pods("operator"), "the operator pod gone", timeout=120)
        old = release.ready_pod("proxy")
        c.kubectl("delete", "pod", old["metadata"]["name"], "-n", NS, "--wait=true", timeout=180)
        release.ready_pod("proxy", not_uid=old["metadata"]["uid"])
        for port in ports:
            assert release.answered(port)
    finally:
        c.kubectl("scale", "deployment", f"{RELEASE}-operator", "-n", NS, "--replicas=1")
    release.ready_pod("operator")


def test_operator_pod_deleted_midway_its_replacement_finishes(release: Release) -> None:
    old = release.ready_pod("operator")
    port = free_port(release.c.node_ip)
    release.apply_sipsocket("midway", port)
    # Killed at once (no graceful stop), at whatever point it had reached with this SipSocket.
    release.c.kubectl(
        "delete", "pod", old["metadata"]["name"], "-n", NS, "--grace-period=0", "--force", "--wait=false"
    )
    release.ready_pod("operator", not_uid=old["metadata"]["uid"])
    release.sipsocket_ready("midway")
    assert release.answered(port)


def test_helm_upgrade_of_the_proxy_config_rolls_pods_and_sockets_return(release: Release) -> None:
    """The DaemonSet rolls with a surge pod that takes the sockets over (proxy.hostNetwork.handover): SIPp's
    OPTIONS to a SipSocket, sent all along, are every one answered."""
    before = release.ready_pod("proxy")
    port = int(release.sipsocket_ready("first")["spec"]["port"])
    stats = release.workdir / "options-during-upgrade.csv"
    sipp = subprocess.Popen(
        ["sipp", "-sf", str(OPTIONS_SCENARIO), "-r", "50", "-m", "100000", "-i", "127.0.0.1",
         "-p", str(free_port()), "-trace_stat", "-stf", str(stats), "-fd", "1", "-nostdin",
         f"{release.c.node_ip}:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd="/tmp",
    )  # fmt: skip
    try:
        time.sleep(3)
        release.helm("upgrade", release.values(udpWorkers=2))
        after = release.ready_pod("proxy", not_uid=before["metadata"]["uid"])
        wait_for(lambda: len(release.pods("proxy")) == 1, "the old proxy pod gone", timeout=180)
        time.sleep(3)
    finally:
        sipp.send_signal(signal.SIGUSR1)  # no new OPTIONS; those sent are waited for
        _out, err = sipp.communicate(timeout=60)
    last = stats.read_text().splitlines()[-1].split(";")
    header = stats.read_text().splitlines()[0].split(";")
    counts = dict(zip(header, last, strict=False))
    assert int(counts["SuccessfulCall(C)"]) > 0 and counts["FailedCall(C)"] == "0", (counts, err[-2000:])
    # It was a handover: the new pod took the sockets from the old one.
    logs = release.c.kubectl("logs", after["metadata"]["name"], "-n", NS, "-c", "proxy").stdout
    assert "handover" in logs and "sockets over from pid" in logs, logs[-3000:]
    assert (
        after["metadata"]["annotations"]["checksum/config"]
        != before["metadata"]["annotations"]["checksum/config"]
    )
    for name in ("first", "recreate-0", "recreate-1", "midway"):
        obj = release.sipsocket_ready(name)
        assert release.answered(int(obj["spec"]["port"]))


def test_helm_test_names_every_ready_sipsocket_that_answered(release: Release) -> None:
    c = release.c
    names = ("first", "recreate-0", "recreate-1", "midway")
    ports = {name: int(release.sipsocket_ready(name)["spec"]["port"]) for name in names}
    out = c.helm("test", RELEASE, "--namespace", NS, "--logs", "--timeout", "5m", timeout=400).stdout
    lines = [line.strip() for line in out.splitlines()]
    for name, port in ports.items():
        assert f"answered    {name}  udp {c.node_ip}:{port}: SIP/2.0 200 OK" in lines, out
    assert f"4 of 4 probed Ready SipSockets in namespace {NS} answered" in lines, out
    # The test Pod stays after `helm test` so that its report can be read (Helm deletes a hook before
    # `--logs` reads it otherwise), until the next `helm test` replaces it; `helm uninstall` leaves hooks
    # alone, so it is removed here as a user would.
    c.kubectl("delete", "pod", f"{RELEASE}-test", "-n", NS, "--wait=true", timeout=180)


def test_helm_uninstall_leaves_no_pod_and_keeps_the_crd(release: Release) -> None:
    c = release.c
    names = c.kubectl("get", "sipsockets", "-n", NS, "-o", "name").stdout.split()
    c.kubectl("delete", *names, "-n", NS, "--wait=true", timeout=180)
    # The operator removed every row when the SipSockets went away.
    wait_for(lambda: release.sql("select count(*) from sockets") == "0", "no row left", timeout=120)
    c.helm("uninstall", RELEASE, "--namespace", NS, "--wait", "--timeout", "5m", timeout=400)
    wait_for(lambda: not c.get_json("pods", namespace=NS)["items"], "no pod left", timeout=180)
    left = c.kubectl(
        "get", "deployments,daemonsets,statefulsets,services,secrets,configmaps,serviceaccounts,roles",
        "-n", NS, "-o", "name",
    ).stdout.split()  # fmt: skip
    assert [n for n in left if not n.startswith(("configmap/kube-root-ca", "serviceaccount/default"))] == []
    assert c.kubectl("get", "crd", "sipsockets.sipsockets.io", check=False).returncode == 0
    hooks = c.kubectl("get", "validatingwebhookconfigurations", "-o", "name").stdout.split()
    assert not [h for h in hooks if RELEASE in h]
