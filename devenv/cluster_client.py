"""What every cluster provider offers the tests and the demo: kubectl, helm and kubeconfigs against it.

The providers (the loopback control plane of devenv/controlplane.py, a kind cluster where Docker runs) differ
only in how the cluster starts and stops.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from devenv import binaries


def write_kubeconfig(path: Path, server: str, ca_data: str, user: dict[str, str]) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "sipsockets-dev", "cluster": {"server": server, "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "sipsockets-dev", "context": {"cluster": "sipsockets-dev", "user": "user"}}],
        "current-context": "sipsockets-dev",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1))
    path.chmod(0o600)
    return path


class ClusterClient:
    def __init__(self, workdir: Path, kubeconfig: Path) -> None:
        self.workdir = workdir
        self.kubeconfig = kubeconfig

    def _current_cluster(self) -> dict[str, Any]:
        config = yaml.safe_load(self.kubeconfig.read_text())
        context = next(c for c in config["contexts"] if c["name"] == config["current-context"])["context"]
        cluster: dict[str, Any] = next(c for c in config["clusters"] if c["name"] == context["cluster"])[
            "cluster"
        ]
        return cluster

    def kubeconfig_for_token(self, token: str, path: Path) -> Path:
        """A kubeconfig for the same cluster that authenticates with a bearer token (a ServiceAccount's)."""
        cluster = self._current_cluster()
        return write_kubeconfig(
            path, cluster["server"], cluster["certificate-authority-data"], {"token": token}
        )

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(binaries.binary("kubectl")), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def helm(
        self, *args: str, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        env = self.env()
        # Helm keeps caches and repository config under HOME; keep them in the work dir, not the user's.
        for var, sub in (
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ):
            env[var] = str(self.workdir / "helm" / sub)
        cmd = [str(binaries.binary("helm")), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def ensure_namespace(self, name: str) -> None:
        """A namespace with its `default` ServiceAccount: no controller-manager runs here to create it, and
        the ServiceAccount admission plugin refuses pods without it."""
        manifest = {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": name},
                },
            ],
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))
