"""Configuration files of the node, as pure functions of the layout: containerd, CNI, kubelet, resolv.conf.

The settings these machines need (docs/local-cluster.md): cgroup v1 with the cgroupfs driver, kubelet
`failCgroupV1: false` and `oomScoreAdj: 0`, containerd `restrict_oom_score_adj` (root lacks
CAP_SYS_RESOURCE), a sandbox image that exists locally (there is no registry).
"""

from __future__ import annotations

import json
from typing import Any

from devenv.controlplane import SERVICE_CIDR
from devenv.localcluster import layout
from devenv.localcluster.layout import NodePaths


def containerd_toml(paths: NodePaths) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{paths.containerd_root}"
state = "{paths.containerd_state}"
# Snapshotters this machine cannot use only slow start-up down with errors.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{paths.containerd_socket}"

[ttrpc]
  address = "{paths.containerd_socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{paths.node / "containerd-opt"}"

[{cri}]
  sandbox_image = "{layout.PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  # Pod network namespaces under our state dir instead of the machine's /run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
  max_container_log_line_size = 16384

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{layout.CNI_BIN_DIR}"
  conf_dir = "{paths.cni_conf_dir}"
  max_conf_num = 1

[{cri}.registry]
  config_path = ""
"""


def cni_conflist(paths: NodePaths) -> dict[str, Any]:
    subnet = layout.POD_SUBNET
    return {
        "cniVersion": "0.4.0",
        "name": layout.CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.BRIDGE,
                # The bridge and its address exist before the first pod (the node address lives there), and
                # no gateway mode: the bridge plugin would turn on IP forwarding for the whole machine.
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(paths.cni_ipam_dir),
                    "ranges": [
                        [
                            {
                                "subnet": str(subnet),
                                "rangeStart": str(subnet.network_address + 10),
                                "rangeEnd": str(subnet.broadcast_address - 1),
                                "gateway": layout.NODE_IP,
                            }
                        ]
                    ],
                    # Only the Service range goes through the node; no default route, so nothing a pod
                    # sends can leave the machine.
                    "routes": [{"dst": SERVICE_CIDR, "gw": layout.NODE_IP}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(paths: NodePaths, port: int, healthz_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "oomScoreAdj": 0,
        "cgroupRoot": layout.CGROUP_ROOT,
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "address": layout.NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        # The API server reaches the kubelet (logs, exec) only on the node address of our own bridge.
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDNS": [layout.CLUSTER_DNS],
        "clusterDomain": layout.CLUSTER_DOMAIN,
        "resolvConf": str(paths.resolv_conf),
        "podLogsDir": str(paths.node / "pod-logs"),
        "failSwapOn": False,
        # A shared disk that is fuller than a dedicated node must neither evict our pods nor garbage-collect
        # the images we imported (they cannot be pulled back).
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": 50,
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "containerLogMaxSize": "5Mi",
        "containerLogMaxFiles": 2,
    }


def resolv_conf() -> str:
    # Pods with dnsPolicy Default get this file: the node's own DNS server, never the machine's resolver.
    return f"nameserver {layout.CLUSTER_DNS}\noptions ndots:1\n"


def cni_conflist_json(paths: NodePaths) -> str:
    return json.dumps(cni_conflist(paths), indent=1)
