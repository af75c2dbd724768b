"""The single local node: Ready, real pods from the images built in this run, hostNetwork pods on the node
address, the pod network with Service addresses and cluster DNS, the API server reachable from a pod."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from devenv import images
from devenv.localcluster import LocalCluster
from devenv.processes import free_port
from devenv.sipclient import send_options, status_code

pytestmark = pytest.mark.timeout(1800)  # the first test also waits for a cold image build


def wait_for_pod(cluster: LocalCluster, namespace: str, name: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    pod: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pod = cluster.get_json("pod", name, namespace=namespace, check=False)
        conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        if conds.get("Ready") == "True":
            return pod
        time.sleep(1)
    events = cluster.kubectl("get", "events", "-n", namespace, check=False).stdout
    raise AssertionError(f"pod {namespace}/{name} not Ready after {timeout}s: {pod.get('status')}\n{events}")


def apply(cluster: LocalCluster, *objs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))


def pod(
    name: str,
    namespace: str,
    image: str,
    command: list[str],
    mounts: list[dict[str, Any]] | None = None,
    memory: str = "128Mi",
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "resources": {"limits": {"cpu": "500m", "memory": memory}},
                    "volumeMounts": mounts or [],
                }
            ],
            "terminationGracePeriodSeconds": 2,
            **spec,
        },
    }


def test_node_is_ready_on_its_own_address(local_cluster: LocalCluster) -> None:
    node = local_cluster.get_json("node", local_cluster.node_name)
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == local_cluster.node_ip
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"].startswith("v1.35.")
    assert info["containerRuntimeVersion"].startswith("containerd://")


def test_host_network_proxy_pod_answers_sip_on_the_node_address(
    local_cluster: LocalCluster, built_images: images.Images
) -> None:
    c = local_cluster
    c.ensure_namespace("node-hostnet")
    sip_port, mi_port = free_port(c.node_ip), free_port(c.node_ip)
    config = {
        "sockets": [f"udp:{c.node_ip}:{sip_port}"],
        "mi": {"listen": f"{c.node_ip}:{mi_port}"},
    }
    apply(
        c,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "proxy", "namespace": "node-hostnet"},
            "data": {"proxy.yaml": json.dumps(config)},
        },
        pod(
            "proxy",
            "node-hostnet",
            built_images.proxy,
            ["sipproxy", "--config", "/etc/sipsockets/proxy.yaml"],
            mounts=[{"name": "config", "mountPath": "/etc/sipsockets"}],
            # The chart's limit: the proxy at its default 8 UDP workers needs about 200 MiB (the supervisor
            # about 55, each worker about 18), which 128Mi would OOM-kill at start.
            memory="1Gi",
            hostNetwork=True,
            volumes=[{"name": "config", "configMap": {"name": "proxy"}}],
        ),
    )
    running = wait_for_pod(c, "node-hostnet", "proxy")
    assert running["status"]["podIP"] == c.node_ip
    deadline = time.monotonic() + 60
    while True:
        try:
            reply = send_options(c.node_ip, sip_port, timeout=2)
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
    assert status_code(reply) == 200
    # It is the pod's container doing it: its log shows the proxy that started from the image.
    assert c.kubectl("logs", "proxy", "-n", "node-hostnet").stdout.strip()


def test_pod_network_service_dns_and_api_from_a_pod(
    local_cluster: LocalCluster, built_images: images.Images
) -> None:
    c = local_cluster
    ns = "node-podnet"
    c.ensure_namespace(ns)
    web = pod("web", ns, built_images.proxy, ["python3", "-m", "http.server", "8080", "--directory", "/etc"])
    client = pod("client", ns, built_images.proxy, ["sleep", "3600"])
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }
    apply(c, web, client, service)
    web_pod = wait_for_pod(c, ns, "web")
    wait_for_pod(c, ns, "client")
    pod_ip = web_pod["status"]["podIP"]
    assert pod_ip != c.node_ip
    probe = (
        "import os, ssl, sys, urllib.request\n"
        "def get(url, **kw):\n"
        "    for _ in range(30):\n"
        "        try:\n"
        "            return urllib.request.urlopen(url, timeout=3, **kw).status\n"
        "        except Exception as e:\n"
        "            err = e\n"
        "            import time; time.sleep(1)\n"
        "    return repr(err)\n"
        f"print(get('http://web.{ns}.svc.cluster.local/hostname'))\n"
        "print(get('http://web/hostname'.replace('web', 'web.' + os.environ['NS'])))\n"
        "ctx = ssl.create_default_context(cafile='/var/run/secrets/kubernetes.io/serviceaccount/ca.crt')\n"
        "host = os.environ['KUBERNETES_SERVICE_HOST']\n"
        "print(get(f'https://{host}:{os.environ[\"KUBERNETES_SERVICE_PORT\"]}/readyz', context=ctx))\n"
    )
    out = c.kubectl(
        "exec", "client", "-n", ns, "--", "env", f"NS={ns}", "python3", "-c", probe, timeout=180
    ).stdout.split()
    # The Service by its DNS names, and the API server through the `kubernetes` Service: 200, 200, and the
    # API server's /readyz answers 200 too (unauthenticated access to it is allowed by default RBAC).
    assert out == ["200", "200", "200"], out
