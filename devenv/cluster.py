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


def up(workdir: Path, *, app_images: bool = True, install_chart: bool = False) -> LocalCluster:
    """Build or reuse the images, start the node, import the images; optionally install the chart. For
    `make demo` and the like (check `node_environment_problems()` first)."""
    started = time.monotonic()
    built = images.build_all(with_app=app_images)
    cluster = LocalCluster(workdir)
    cluster.start(images_to_import=[r for r in built.all() if r != built.pause])
    print(
        f"[cluster] node {cluster.node_name} Ready at {cluster.node_ip} in {int(time.monotonic() - started)}s"
    )
    if install_chart and app_images:
        chart.provide_volumes(cluster)
        values = chart.values(built, mi_port=free_port(cluster.node_ip))
        chart.helm(cluster, "install", values, cluster.workdir / "values-install.json")
        print(f"[cluster] helm release {chart.RELEASE} ready in namespace {chart.NAMESPACE}")
    print(json.dumps(built.__dict__, indent=1))
    return cluster


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv.cluster")
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--no-app-images", action="store_true", help="only the pause image")
    parser.add_argument("--chart", action="store_true", help="helm install helm/sipsockets too")
    args = parser.parse_args(argv)
    if args.command == "down":
        LocalCluster(args.workdir).stop()
        print(f"[cluster] stopped; {args.workdir} cleaned")
        return 0
    if problems := node_environment_problems():
        print("[cluster] this machine cannot run the local node: " + "; ".join(problems), file=sys.stderr)
        return 1
    cluster = up(args.workdir, app_images=not args.no_app_images, install_chart=args.chart)
    print(f"[cluster] export KUBECONFIG={cluster.kubeconfig}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
