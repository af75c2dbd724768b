"""The kind provider, for machines where Docker runs (the CI machines have no Docker engine).

`SIPSOCKETS_E2E_PROVIDER=kind make test-e2e` runs the e2e tier against a kind cluster instead of the loopback
control plane: the cluster is created, the two images are built with Docker and loaded with `kind load
docker-image`, and the tests use it through the same ClusterClient surface as the local provider.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from devenv import binaries
from devenv.cluster_client import ClusterClient

REPO = Path(__file__).resolve().parents[1]
# Image tag -> the Dockerfile target it is built from.
IMAGES = {"sipsockets/proxy:dev": "proxy", "sipsockets/operator:dev": "operator"}


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"the kind provider needs `{tool}` on PATH")
    return path


class KindCluster(ClusterClient):
    def __init__(self, workdir: Path, name: str = "sipsockets-e2e") -> None:
        super().__init__(workdir.resolve(), workdir.resolve() / "kubeconfig")
        self.name = name
        self.server = ""

    def start(self) -> None:
        kind, docker = _need("kind"), _need("docker")
        binaries.ensure(["kubectl", "helm"])
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                kind,
                "create",
                "cluster",
                "--name",
                self.name,
                "--kubeconfig",
                str(self.kubeconfig),
                "--wait",
                "120s",
            ],
            check=True,
        )
        self.server = str(self._current_cluster()["server"])
        for tag, target in IMAGES.items():
            subprocess.run([docker, "build", "--target", target, "-t", tag, str(REPO)], check=True)
            subprocess.run([kind, "load", "docker-image", tag, "--name", self.name], check=True)

    def stop(self) -> None:
        subprocess.run([_need("kind"), "delete", "cluster", "--name", self.name], check=False)

    def running(self) -> bool:
        return self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0
