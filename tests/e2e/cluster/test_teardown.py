"""`python -m devenv.cluster down`, run as a separate process like `make` would, removes everything the
node put on the machine while pods were running: processes (containerd shims and containers included),
cgroups, mounts, the bridge, the nftables table, the kubelet's iptables chains, state dirs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from devenv import images
from devenv.localcluster import LocalCluster, hostnet, layout
from devenv.processes import alive

pytestmark = pytest.mark.timeout(1800)
REPO = Path(__file__).resolve().parents[3]


def _output(*cmd: str) -> str:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=True, timeout=60).stdout


def _pod(name: str, image: str, host_network: bool) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "hostNetwork": host_network,
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    # Ignores SIGTERM: clean-up must not depend on pods stopping politely.
                    "command": ["python3", "-c", "import signal, time\n"
                                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(3600)"],
                    "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}},
                }
            ],
        },
    }  # fmt: skip


def test_down_from_another_process_leaves_nothing_behind(
    tmp_path_factory: pytest.TempPathFactory, built_images: images.Images
) -> None:
    # A short work dir: the kubelet's unix sockets live under it (see LocalCluster.start).
    cluster = LocalCluster(tmp_path_factory.mktemp("teardown") / "cluster")
    cluster.start(images_to_import=[built_images.proxy])
    try:
        pods = [_pod("bridged", built_images.proxy, False), _pod("host", built_images.proxy, True)]
        cluster.kubectl(
            "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": pods})
        )
        cluster.kubectl(
            "wait", "--for=condition=Ready", "pod/bridged", "pod/host", "--timeout=180s", timeout=200
        )
        recorded = cluster.procs.load()
        shims = hostnet.processes_mentioning(str(cluster.paths.containerd_socket))
        assert shims, "containerd shims should be running for the pods"
        assert hostnet.cgroup_pids(), "the pods' processes should be in the node's cgroups"
        assert hostnet.mounts_under(cluster.paths.node)
    finally:
        done = subprocess.run(
            [sys.executable, "-m", "devenv.cluster", "down", "--workdir", str(cluster.workdir)],
            cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    time.sleep(0.5)
    assert not [name for name, pid in recorded.items() if alive(pid)]
    assert not [pid for pid in shims if alive(pid)]
    assert not hostnet.processes_mentioning(str(cluster.paths.containerd_socket))
    assert not Path("/sys/class/net", layout.BRIDGE).exists()
    tables = _output("nft", "list", "tables")
    assert layout.NFT_TABLE not in tables
    assert not (Path("/sys/fs/cgroup/memory") / layout.CGROUP_ROOT.lstrip("/")).exists()
    assert not hostnet.mounts_under(cluster.workdir)
    assert not cluster.paths.node.exists()
    assert not cluster.paths.containerd_socket.exists()
    rules = _output("iptables-save")
    assert "KUBE-FIREWALL" not in rules and "KUBE-KUBELET-CANARY" not in rules
