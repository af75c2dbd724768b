"""Helpers of the chart's e2e tests: the CRDs the chart's optional objects need, helm install into the
loopback control plane, and reading what the chart created."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devenv import binaries
from devenv.cluster_client import ClusterClient
from tests.unit.chart.rendering import CHART, CRD_SOURCE

# Stand-ins for CRDs of other projects that optional chart objects use (cert-manager, Prometheus Operator):
# the server-side dry-run then checks those objects' kind, group, version and metadata.
FOREIGN_CRDS = [
    ("cert-manager.io", "v1", "Issuer", "issuers"),
    ("cert-manager.io", "v1", "Certificate", "certificates"),
    ("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors"),
]


def foreign_crd(group: str, version: str, kind: str, plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                            },
                        }
                    },
                }
            ],
        },
    }


def apply_objects(cp: ClusterClient, objs: list[dict[str, Any]]) -> None:
    cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))


@pytest.fixture(scope="session")
def chart_crds(control_plane: ClusterClient) -> None:
    """The SipSocket CRD (from crds/, as a user applying it by hand would) and the foreign stand-ins."""
    binaries.ensure(["helm"])
    control_plane.kubectl("apply", "-f", str(CRD_SOURCE))
    apply_objects(control_plane, [foreign_crd(*c) for c in FOREIGN_CRDS])
    names = ["sipsockets.sipsockets.io", *(f"{c[3]}.{c[0]}" for c in FOREIGN_CRDS)]
    control_plane.kubectl(
        "wait", "--for=condition=Established", *(f"crd/{n}" for n in names), "--timeout=60s"
    )


def helm_install(
    cp: ClusterClient,
    namespace: str,
    values: dict[str, Any],
    workdir: Path,
    release: str = "sipsockets",
    command: str = "install",
    *extra: str,
) -> str:
    """`helm install` (or upgrade) of the chart into the control plane. `--take-ownership` lets the release
    adopt the SipSocket CRD that another test (or a user) applied by hand; it is cluster-wide and kept."""
    path = workdir / f"values-{release}-{command}.json"
    path.write_text(json.dumps(values))
    out = cp.helm(
        command,
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--values",
        str(path),
        "--take-ownership",
        *extra,
    )
    return out.stdout


def helm_uninstall(cp: ClusterClient, namespace: str, release: str = "sipsockets") -> None:
    cp.helm("uninstall", release, "--namespace", namespace, "--wait=false", check=False)


def get_json(cp: ClusterClient, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cp.kubectl("get", *args, "-o", "json").stdout)
    return out


def secret_data(cp: ClusterClient, namespace: str, name: str) -> dict[str, str]:
    data = get_json(cp, "secret", name, "-n", namespace)["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def mi_refuses_strangers(listen: str) -> bool:
    """Neither plain HTTP nor TLS without a client certificate gets any HTTP answer from the MI."""
    body = b'{"jsonrpc":"2.0","method":"version","id":1}'
    anyone = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anyone.check_hostname, anyone.verify_mode = False, ssl.CERT_NONE
    for url, context in ((f"http://{listen}/mi", None), (f"https://{listen}/mi", anyone)):
        try:
            urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10, context=context)
        except urllib.error.HTTPError:
            return False  # an HTTP answer, even an error, is too much
        except OSError:
            continue
        return False
    return True
