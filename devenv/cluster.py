"""Manual entry to the `local` provider: a real single-node cluster on this machine, left running.

    python -m devenv.cluster up [--workdir DIR] [--no-app-images] [--chart]
    python -m devenv.cluster down [--workdir DIR]

`up` builds (or reuses) the images, starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
containerd and the kubelet, imports the images and waits for the node to be Ready; it prints the kubeconfig
and image references; with --chart it also installs helm/sipsockets (namespace voip, proxy on the node
address in hostNetwork mode, the bundled PostgreSQL). `down` removes everything again (pods, containers,
cgroups, mounts, bridge, state).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from devenv import images
from devenv.localcluster import LocalCluster, chart, node_environment_problems
from devenv.processes import free_port

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORKDIR = REPO / ".dev" / "localcluster"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv.cluster")
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--no-app-images", action="store_true", help="only the pause image")
    parser.add_argument("--chart", action="store_true", help="helm install helm/sipsockets too")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.workdir)
    if args.command == "down":
        cluster.stop()
        print(f"[cluster] stopped; {args.workdir} cleaned")
        return 0
    if problems := node_environment_problems():
        print("[cluster] this machine cannot run the local node: " + "; ".join(problems), file=sys.stderr)
        return 1
    started = time.monotonic()
    built = images.build_all(with_app=not args.no_app_images)
    cluster.start(images_to_import=[r for r in built.all() if r != built.pause])
    print(
        f"[cluster] node {cluster.node_name} Ready at {cluster.node_ip} in {int(time.monotonic() - started)}s"
    )
    if args.chart and not args.no_app_images:
        chart.provide_volumes(cluster)
        values = chart.values(built, mi_port=free_port(cluster.node_ip))
        chart.helm(cluster, "install", values, cluster.workdir / "values-install.json")
        print(f"[cluster] helm release {chart.RELEASE} ready in namespace {chart.NAMESPACE}")
    print(f"[cluster] export KUBECONFIG={cluster.kubeconfig}")
    print(json.dumps(built.__dict__, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
