"""Running the real `helm` binary over the chart and reading what it renders."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devenv import binaries

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "helm" / "sipsockets"
CRD_SOURCE = ROOT / "crds" / "sipsockets.io_sipsockets.yaml"
CRD_CHART_COPY = CHART / "files" / "crds" / "sipsockets.io_sipsockets.yaml"
RELEASE = "sipsockets"
NAMESPACE = "voip"
KUBE_VERSION = "1.35.0"

Manifest = dict[str, Any]

# Every mode and option set the chart supports; the server-side dry-run of the e2e tier uses these too.
OPTION_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "hostNetwork": {
        "proxy": {
            "mode": "hostNetwork",
            "sockets": ["udp:10.0.5.1:5060 tag core"],
            "hostNetwork": {
                "nodeSelector": {"sipsockets.io/sbc": "true"},
                "tolerations": [{"key": "sbc", "operator": "Exists", "effect": "NoSchedule"}],
            },
        },
        # The proxies reach the bundled PostgreSQL from their nodes' addresses.
        "networkPolicy": {"database": {"nodeCIDRs": ["10.0.5.0/24", "fd00:5::/64"]}},
    },
    "multus": {
        "proxy": {
            "mode": "multus",
            "multus": {"networks": [{"name": "carrier-vlan", "interface": "net1", "ips": ["10.0.5.20/24"]}]},
        }
    },
    "nodePort": {
        "proxy": {
            "service": {
                "type": "NodePort",
                "ports": [{"name": "sip-udp", "port": 5060, "protocol": "UDP", "nodePort": 30060}],
            }
        }
    },
    "externalDatabase": {
        "database": {"external": {"existingSecret": "carrier-db", "secretKey": "url"}},
    },
    "certManager": {"operator": {"webhook": {"certManager": {"enabled": True}}}},
    "certManagerIssuer": {
        "operator": {
            "webhook": {
                "certManager": {"enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}
            }
        }
    },
    "replicas": {
        "operator": {
            "replicas": 3,
            "leaderElection": {"leaseName": "voip-sbc", "leaseDuration": 20, "renewDeadline": 12.5},
        }
    },
    "miCertManager": {"mi": {"tls": {"certManager": {"enabled": True, "duration": "720h"}}}},
    "miTokenOnly": {"mi": {"tls": {"enabled": False}, "token": {"enabled": True}}},
    "miTlsAndToken": {"mi": {"token": {"enabled": True}}},
    "everythingOff": {
        "crds": {"install": False},
        "operator": {"webhook": {"enabled": False}, "podDisruptionBudget": {"enabled": False}},
        "proxy": {"podDisruptionBudget": {"enabled": False}, "unprivilegedPorts": False},
        "database": {"initSchema": False},
        "networkPolicy": {"enabled": False},
        "admissionPolicy": {"enabled": False},
        "tests": {"enabled": False},
    },
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "dashboards": {"enabled": True},
        "networkPolicy": {"miExtraFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
    },
    "routesAndTuning": {
        "proxy": {
            "sockets": [
                "udp:0.0.0.0:5060 as 203.0.113.10 tag public",
                "tcp:0.0.0.0:5060 as 203.0.113.10 tag public",
            ],
            "udpWorkers": 2,
            "tcpWorkers": 3,
            "socketsMgm": {"processes": 4, "maxSockets": 500},
            "routes": [
                {
                    "match": {"tag": "public", "ruri": "^sip:\\+44"},
                    "forward": "sip:127.0.0.1:5080",
                    "socket": "core",
                },
                {"match": {}, "reply": 404},
            ],
        },
        "database": {"tableName": "carrier_sockets"},
        "mi": {"port": 9000, "root": "admin", "metricsPort": 9001},
    },
}


def helm_binary() -> Path:
    return binaries.ensure(["helm"])["helm"]


def helm_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var, sub in (
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ):
        env[var] = str(home / sub)
    return env


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="helm-home-") as home:
        result = subprocess.run(
            [str(helm_binary()), *args],
            capture_output=True,
            text=True,
            env=helm_env(Path(home)),
            timeout=120,
            check=False,
        )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def values_args(values: Mapping[str, Any], workdir: Path) -> list[str]:
    path = workdir / "values.json"
    path.write_text(json.dumps(values))
    return ["--values", str(path)]


def template_text(
    values: Mapping[str, Any] | None = None, *extra: str, check: bool = True, namespace: str = NAMESPACE
) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="chart-values-") as tmp:
        return run_helm(
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
            *values_args(values or {}, Path(tmp)),
            *extra,
            check=check,
        )


@functools.lru_cache(maxsize=64)
def _template_stdout(values_json: str, extra: tuple[str, ...], namespace: str) -> str:
    # Rendering is deterministic but for generated secrets, and no test compares those across renders:
    # one helm run per distinct input keeps the unit tier quick on a busy machine.
    return template_text(json.loads(values_json), *extra, namespace=namespace).stdout


def render(
    values: Mapping[str, Any] | None = None, *extra: str, namespace: str = NAMESPACE
) -> list[Manifest]:
    """Fresh objects on every call (callers may change them), from a cached helm run."""
    out = _template_stdout(json.dumps(values or {}, sort_keys=True), extra, namespace)
    return [doc for doc in yaml.safe_load_all(out) if doc]


@dataclass(frozen=True)
class Rendered:
    manifests: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> Manifest:
        found = [m for m in self.of_kind(kind) if m["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, (
            f"expected one {kind} named *{name_suffix}, got {[m['metadata']['name'] for m in found]}"
        )
        return found[0]

    def kinds(self) -> set[str]:
        return {m["kind"] for m in self.manifests}

    def workloads(self) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] in {"Deployment", "DaemonSet", "StatefulSet"}]


def rendered(values: Mapping[str, Any] | None = None, *extra: str) -> Rendered:
    return Rendered(render(values, *extra))


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Manifest) -> Iterable[dict[str, Any]]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
