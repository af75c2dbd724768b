"""`helm install` into the real API server: what it creates, what an upgrade keeps (generated MI
certificates, passwords, webhook CA), the webhook enforced with failurePolicy Fail, the CRD kept by
`helm uninstall`, and the MI's certificates from cert-manager when the API server serves it."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import yaml

from devenv.cluster_client import ClusterClient
from tests.e2e.chart_support import chart_crds, get_json, helm_install, helm_uninstall, secret_data

__all__ = ["chart_crds"]  # fixtures

RELEASE = "sipsockets"


def sipsocket(name: str, port: int) -> str:
    return json.dumps(
        {
            "apiVersion": "sipsockets.io/v1alpha1",
            "kind": "SipSocket",
            "metadata": {"name": name},
            "spec": {"protocol": "udp", "address": "127.0.0.1", "port": port},
        }
    )


def notes_sipsocket(helm_output: str) -> dict[str, Any]:
    """The manifest of the heredoc in the NOTES."""
    lines = helm_output.split("NOTES:", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith("apply -f -")) + 1
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == "YAML")
    doc: dict[str, Any] = yaml.safe_load(textwrap.dedent("\n".join(lines[start:end])))
    return doc


def test_install_upgrade_uninstall(
    control_plane: ClusterClient, chart_crds: None, namespace: str, tmp_path: Path
) -> None:
    cp = control_plane
    # The chart's own MI CA (this API server has cert-manager's CRDs as stand-ins, which `auto` would use).
    own_ca = {"mi": {"tls": {"certManager": {"enabled": False}}}}
    try:
        out = helm_install(cp, namespace, own_ca, tmp_path)
        # NOTES.txt: how to apply a first SipSocket and watch it.
        assert "kind: SipSocket" in out
        assert f"kubectl -n {namespace} get sipsockets -w" in out
        status = json.loads(cp.helm("status", RELEASE, "-n", namespace, "-o", "json").stdout)
        assert status["info"]["status"] == "deployed"

        names = cp.kubectl(
            "get",
            "deployments,statefulsets,services,secrets,configmaps,serviceaccounts,roles,"
            "rolebindings,networkpolicies,poddisruptionbudgets",
            "-n",
            namespace,
            "-o",
            "name",
        ).stdout.split()
        for expected in (
            f"deployment.apps/{RELEASE}-operator",
            f"deployment.apps/{RELEASE}-proxy",
            f"statefulset.apps/{RELEASE}-postgresql",
            f"service/{RELEASE}-proxy",
            f"service/{RELEASE}-webhook",
            f"secret/{RELEASE}-mi-proxy-tls",
            f"secret/{RELEASE}-mi-operator-tls",
            f"secret/{RELEASE}-db-url",
            f"secret/{RELEASE}-webhook-tls",
            f"configmap/{RELEASE}-proxy",
            f"serviceaccount/{RELEASE}-operator",
            f"role.rbac.authorization.k8s.io/{RELEASE}-operator",
            f"networkpolicy.networking.k8s.io/{RELEASE}-proxy-mi",
            f"networkpolicy.networking.k8s.io/{RELEASE}-postgresql",
            f"poddisruptionbudget.policy/{RELEASE}-proxy",
        ):
            assert expected in names
        vwc_name = f"{namespace}-{RELEASE}-webhook"
        vwc = get_json(cp, "validatingwebhookconfiguration", vwc_name)
        crd = get_json(cp, "crd", "sipsockets.sipsockets.io")
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-namespace"] == namespace

        assert f"secret/{RELEASE}-mi-token" not in names  # the token is off unless asked for
        mi_tls = {
            s: secret_data(cp, namespace, f"{RELEASE}-{s}") for s in ("mi-proxy-tls", "mi-operator-tls")
        }
        assert mi_tls["mi-proxy-tls"]["ca.crt"] == mi_tls["mi-operator-tls"]["ca.crt"]
        tls = secret_data(cp, namespace, f"{RELEASE}-webhook-tls")
        password = secret_data(cp, namespace, f"{RELEASE}-postgresql-auth")["password"]
        checksum = get_json(cp, "deployment", f"{RELEASE}-proxy", "-n", namespace)["spec"]["template"][
            "metadata"
        ]["annotations"]["checksum/config"]

        # The webhook is registered with failurePolicy Fail: with no operator serving it, SipSockets in this
        # namespace are refused, not let through unvalidated.
        refused = cp.kubectl("apply", "-n", namespace, "-f", "-", input=sipsocket("first", 5070), check=False)
        assert refused.returncode != 0
        assert "validate.sipsockets.io" in refused.stderr

        # An upgrade that changes the proxy config keeps every generated secret and rolls the proxies.
        helm_install(cp, namespace, {**own_ca, "proxy": {"udpWorkers": 2}}, tmp_path, RELEASE, "upgrade")
        for name, data in mi_tls.items():
            assert secret_data(cp, namespace, f"{RELEASE}-{name}") == data
        assert secret_data(cp, namespace, f"{RELEASE}-webhook-tls") == tls
        assert secret_data(cp, namespace, f"{RELEASE}-postgresql-auth")["password"] == password
        assert password in secret_data(cp, namespace, f"{RELEASE}-db-url")["db-url"]
        vwc_after = get_json(cp, "validatingwebhookconfiguration", vwc_name)
        ca_bundle = vwc_after["webhooks"][0]["clientConfig"]["caBundle"]
        assert ca_bundle == vwc["webhooks"][0]["clientConfig"]["caBundle"]
        proxy = get_json(cp, "deployment", f"{RELEASE}-proxy", "-n", namespace)
        assert proxy["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != checksum
        config = get_json(cp, "configmap", f"{RELEASE}-proxy", "-n", namespace)["data"]["proxy.yaml"]
        assert "udp_workers: 2" in config
    finally:
        helm_uninstall(cp, namespace)

    # Uninstalled: the webhook registration is gone, the CRD stays, and SipSockets can be created again.
    assert (
        cp.kubectl(
            "get", "validatingwebhookconfiguration", f"{namespace}-{RELEASE}-webhook", check=False
        ).returncode
        != 0
    )
    assert get_json(cp, "crd", "sipsockets.sipsockets.io")["metadata"]["name"] == "sipsockets.sipsockets.io"
    # The first SipSocket of the NOTES is one the API server (schema, CEL) accepts.
    first = notes_sipsocket(out)
    assert first["kind"] == "SipSocket"
    # The API server drops an uninstalled ValidatingAdmissionPolicy from its admission chain a moment after
    # the object is gone (its informer), so the first tries may still meet it.
    deadline = time.monotonic() + 30
    while True:
        applied = cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(first), check=False)
        if (
            applied.returncode == 0
            or time.monotonic() > deadline
            or "ValidatingAdmissionPolicy" not in applied.stderr
        ):
            break
        time.sleep(0.5)
    assert applied.returncode == 0, applied.stderr
    cp.kubectl("delete", "sipsocket", first["metadata"]["name"], "-n", namespace, "--wait=false")


def test_install_with_replicas_names_their_lease(
    control_plane: ClusterClient, chart_crds: None, namespace: str, tmp_path: Path
) -> None:
    cp = control_plane
    try:
        helm_install(
            cp,
            namespace,
            {"operator": {"replicas": 2}, "database": {"external": {"existingSecret": "db"}}},
            tmp_path,
        )
        deployment = get_json(cp, "deployment", f"{RELEASE}-operator", "-n", namespace)
        assert deployment["spec"]["replicas"] == 2
        role = get_json(cp, "role", f"{RELEASE}-operator", "-n", namespace)
        named = [r for r in role["rules"] if "leases" in r["resources"] and r.get("resourceNames")]
        assert [r["resourceNames"] for r in named] == [[f"{RELEASE}-operator"]]
        # No kopf peering any more: the Lease is created by the first replica, not by the chart.
        assert cp.kubectl("get", "crd", "kopfpeerings.kopf.dev", check=False).returncode != 0
        # No bundled database with an external one.
        assert (
            cp.kubectl("get", "statefulset", f"{RELEASE}-postgresql", "-n", namespace, check=False).returncode
            != 0
        )
        # The API server serves cert-manager.io/v1: `auto` asked cert-manager for the MI's CA and certificates
        # (no cert-manager runs here to fill the Secrets; the chart's objects are what is checked).
        certs = cp.kubectl(
            "get", "certificates.cert-manager.io", "-n", namespace, "-o", "name"
        ).stdout.split()
        assert sorted(c.rpartition("/")[2] for c in certs) == sorted(
            f"{RELEASE}-{n}" for n in ("mi-ca", "mi-proxy-tls", "mi-operator-tls")
        )
        secrets = cp.kubectl("get", "secrets", "-n", namespace, "-o", "name").stdout.split()
        assert f"secret/{RELEASE}-mi-proxy-tls" not in secrets
    finally:
        helm_uninstall(cp, namespace)
