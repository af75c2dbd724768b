"""The chart's default mode, `service`, installed for real into the local node: two proxy pods on the pod
network behind the chart's LoadBalancer Service. The node plays the cloud: it gives the Service an address
of its pool (status.loadBalancer.ingress) and translates that address and the cluster address to the ready
proxy pods, as kube-proxy does. A SipSocket on the wildcard address with `advertised.fromService` is then
reached through the Service, and what the callee receives names the load balancer's address, not a pod's.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devenv import images
from devenv.localcluster import LocalCluster, chart, layout
from devenv.processes import free_port
from tests.e2e.cluster.test_chart import NS, RELEASE, Release, wait_for

pytestmark = pytest.mark.timeout(1800)

SERVICE = f"{RELEASE}-proxy"
SIP_PORT = 5060  # the chart's default Service ports (sip-udp, sip-tcp)


class ServiceRelease(Release):
    def __init__(self, cluster: LocalCluster, built: images.Images, workdir: Path) -> None:
        super().__init__(cluster, built, workdir)
        # The callee listens on the node address, which the pods reach over the pod network's bridge.
        self.uas_port = free_port(cluster.node_ip)

    def service_values(self) -> dict[str, Any]:
        return self.values(
            mode="service",
            replicas=2,
            routes=[{"match": {}, "forward": f"sip:{self.c.node_ip}:{self.uas_port}"}],
        )

    def service(self) -> dict[str, Any]:
        svc: dict[str, Any] = self.c.get_json("service", SERVICE, namespace=NS)
        return svc

    def load_balancer_address(self) -> str:
        def check() -> str | None:
            ingress = self.service().get("status", {}).get("loadBalancer", {}).get("ingress") or []
            return str(ingress[0]["ip"]) if ingress else None

        return wait_for(check, f"Service {SERVICE} given a load-balancer address")


@pytest.fixture(scope="module")
def release(
    local_cluster: LocalCluster, built_images: images.Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceRelease]:
    chart.provide_volumes(local_cluster)
    rel = ServiceRelease(local_cluster, built_images, tmp_path_factory.mktemp("chart"))
    rel.helm("install", rel.service_values())
    yield rel


def calls_through(address: str, uas_port: int, node_ip: str, trace_dir: Path, calls: int = 5) -> str:
    """SIPp's uac places `calls` calls to address:5060 from the node address, SIPp's uas answers on the
    node address; returns every message the uas received (its -trace_msg log)."""
    trace_dir.mkdir(parents=True, exist_ok=True)
    uas = subprocess.Popen(
        ["sipp", "-sn", "uas", "-i", node_ip, "-p", str(uas_port), "-trace_msg", "-nostdin"],
        cwd=trace_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        uac = subprocess.run(
            ["sipp", "-sn", "uac", "-i", node_ip, "-p", str(free_port(node_ip)), "-m", str(calls),
             "-r", "5", "-timeout", "60s", "-timeout_error", "-nostdin", f"{address}:{SIP_PORT}"],
            capture_output=True, text=True, timeout=120, check=False, cwd=trace_dir,
        )  # fmt: skip
        assert uac.returncode == 0, (
            f"calls through {address} failed: {uac.stdout[-2000:]} {uac.stderr[-2000:]}"
        )
    finally:
        uas.terminate()
        uas.wait(timeout=30)
    return "\n".join(p.read_text(errors="replace") for p in trace_dir.glob("*_messages.log"))


def test_a_wildcard_sipsocket_is_reached_through_the_service_and_advertises_its_address(
    release: ServiceRelease, tmp_path: Path
) -> None:
    proxies = [release.ready_pod("proxy")]
    proxies.append(release.ready_pod("proxy", not_uid=proxies[0]["metadata"]["uid"]))
    for pod in proxies:
        assert not pod["spec"].get("hostNetwork"), "service mode runs the proxies on the pod network"
        assert pod["status"]["podIP"] != release.c.node_ip
    service = release.service()
    assert service["spec"]["type"] == "LoadBalancer"
    lb = release.load_balancer_address()
    assert lb in layout.LOAD_BALANCER_POOL

    obj = {
        "apiVersion": "sipsockets.io/v1alpha1",
        "kind": "SipSocket",
        "metadata": {"name": "edge", "namespace": NS},
        "spec": {
            "protocol": "udp",
            "address": "0.0.0.0",
            "port": SIP_PORT,
            "advertised": {"fromService": SERVICE},
        },
    }

    # As in test_chart: right after the install the operator's webhook can lack a ready endpoint for a moment.
    def applied() -> bool:
        r = release.c.kubectl("apply", "-f", "-", input=json.dumps(obj), check=False)
        if r.returncode != 0 and "failed calling webhook" not in r.stderr:
            raise AssertionError(f"kubectl apply refused the SipSocket: {r.stderr}")
        return r.returncode == 0

    wait_for(applied, "SipSocket edge accepted", timeout=120)
    ready = release.sipsocket_ready("edge")
    assert ready["status"]["advertised"] == f"{lb}:{SIP_PORT}"
    assert ready["status"]["listening"] == "2/2", ready["status"]
    assert release.sql("select socket, advertised from sockets") == f"udp:0.0.0.0:{SIP_PORT}|{lb}:{SIP_PORT}"

    # Through the load balancer's address and through the cluster address: both reach a proxy pod, and the
    # callee sees the Service's address in the proxy's Via, never a pod's own.
    for name, address in (("lb", lb), ("cluster", service["spec"]["clusterIP"])):
        received = calls_through(address, release.uas_port, release.c.node_ip, tmp_path / name)
        vias = [line for line in received.splitlines() if line.lower().startswith("via:")]
        assert any(f"SIP/2.0/UDP {lb}:{SIP_PORT}" in v for v in vias), vias[:6]
        for pod in proxies:
            assert pod["status"]["podIP"] not in received
