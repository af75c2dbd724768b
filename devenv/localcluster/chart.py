"""helm/sipsockets installed into the local node: values that use the images built here (never pulled),
the proxy on the node's own address (hostNetwork), and PersistentVolumes for the bundled PostgreSQL (there is
no volume provisioner on the node)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devenv import binaries
from devenv.images import Images
from devenv.localcluster import layout
from devenv.localcluster.cluster import LocalCluster
from devenv.processes import free_port

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "sipsockets"
NAMESPACE = "voip"
RELEASE = "sipsockets"


def image_values(ref: str) -> dict[str, str]:
    repo, tag = Images.split(ref)
    return {"repository": repo, "tag": tag, "pullPolicy": "Never"}


def values(
    built: Images, mi_port: int, metrics_port: int | None = None, **proxy_overrides: Any
) -> dict[str, Any]:
    """Chart values for this node. Small worker counts: the machine is shared and has two cores. The MI and
    metrics ports are on the node's address (hostNetwork), so free ones of this machine; the proxies reach the
    bundled PostgreSQL from the node's address, which its NetworkPolicy admits by CIDR."""
    return {
        "mi": {"port": mi_port, "metricsPort": metrics_port or free_port(layout.NODE_IP)},
        "networkPolicy": {"database": {"nodeCIDRs": [f"{layout.NODE_IP}/32"]}},
        "operator": {"image": image_values(built.operator), "resyncPeriod": 15},
        "proxy": {
            "mode": "hostNetwork",
            "image": image_values(built.proxy),
            "socketsMgm": {"maxSockets": 20},
            **proxy_overrides,
        },
        "postgresql": {"image": image_values(built.postgresql)},
    }


def provide_volumes(cluster: LocalCluster, count: int = 2) -> None:
    """hostPath PersistentVolumes under the node's work dir (removed with it by `stop`)."""
    pvs = []
    for i in range(count):
        path = cluster.paths.node / "volumes" / f"pv{i}"
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # the PostgreSQL pod runs as uid 999
        pvs.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"local-pv{i}"},
                "spec": {
                    "capacity": {"storage": "2Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": str(path), "type": "Directory"},
                },
            }
        )
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": pvs}))


def helm(
    cluster: LocalCluster,
    command: str,
    chart_values: dict[str, Any],
    values_file: Path,
    namespace: str = NAMESPACE,
    release: str = RELEASE,
) -> None:
    """`helm install` or `helm upgrade`, waiting until every workload of the release is Ready."""
    binaries.ensure(["helm"])
    values_file.write_text(json.dumps(chart_values))
    cluster.helm(
        command, release, str(CHART), "--namespace", namespace, "--create-namespace",
        "--values", str(values_file), "--wait", "--timeout", "10m", timeout=700,
    )  # fmt: skip
