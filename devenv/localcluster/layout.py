"""Names, addresses and paths of the single local node: one place, so that start-up and clean-up agree.

The node lives on a Linux bridge of its own. Its address (the bridge's gateway address) is the node's
InternalIP and what hostNetwork pods listen on; pods of the pod network get addresses of the same subnet.
Nothing is routed off the machine: pods get no default route and the bridge has no masquerade.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

NODE_NAME = "sipsockets-node"
BRIDGE = "sipsk0"
POD_SUBNET = ipaddress.IPv4Network("10.244.0.0/24")
NODE_IP = str(POD_SUBNET.network_address + 1)
# Pods get addresses from network+10 on (render.cni_conflist); the addresses between the node's and those are
# the node's load-balancer pool: a LoadBalancer Service gets one as its ingress address, as from a cloud.
LOAD_BALANCER_POOL = tuple(str(POD_SUBNET.network_address + i) for i in range(2, 10))
# The in-cluster DNS server listens on the node address itself: no extra address to route.
CLUSTER_DNS = NODE_IP
CLUSTER_DOMAIN = "cluster.local"
NFT_TABLE = "sipsockets_node"
CNI_NETWORK = "sipsockets"
CNI_BIN_DIR = Path("/usr/lib/cni")
# Our own cgroup parent: clean-up removes exactly this subtree and nothing else on the machine.
CGROUP_ROOT = "/sipsockets"
PAUSE_IMAGE = "localhost/sipsockets/pause:3.10"
# Names the work dir of the node running on this machine (there can be only one).
OWNER_FILE = Path("/run/sipsockets/node-owner")


@dataclass(frozen=True)
class NodePaths:
    """Every directory the node writes, under the cluster's work dir."""

    workdir: Path

    @property
    def node(self) -> Path:
        return self.workdir / "node"

    @property
    def containerd_root(self) -> Path:
        return self.node / "containerd-root"

    @property
    def containerd_state(self) -> Path:
        return self.node / "containerd-state"

    @property
    def containerd_config(self) -> Path:
        return self.node / "containerd.toml"

    @property
    def containerd_socket(self) -> Path:
        # AF_UNIX paths are limited to 107 bytes; a pytest tmp dir can be longer than that.
        digest = hashlib.sha256(str(self.workdir).encode()).hexdigest()[:12]
        return Path("/run/sipsockets") / f"containerd-{digest}.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.node / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.node / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.node / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.node / "kubelet.yaml"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.node / "kubelet.kubeconfig"

    @property
    def resolv_conf(self) -> Path:
        return self.node / "resolv.conf"

    @property
    def state(self) -> Path:
        return self.workdir / "localcluster.json"
