"""`helm lint` and `helm template` over every mode and option set: what each renders, and that it is right."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.chart.rendering import (
    CHART,
    NAMESPACE,
    OPTION_SETS,
    RELEASE,
    Rendered,
    containers,
    env_of,
    pod_spec,
    rendered,
    run_helm,
    template_text,
)

PROXY_LABELS = {"app.kubernetes.io/name": "sipsockets", "app.kubernetes.io/component": "proxy"}


@pytest.mark.parametrize("option_set", sorted(OPTION_SETS))
def test_helm_lint_strict(option_set: str, tmp_path: Path) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps(OPTION_SETS[option_set]))
    result = run_helm("lint", "--strict", str(CHART), "--values", str(values), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("option_set", sorted(OPTION_SETS))
def test_every_option_set_renders_valid_objects(option_set: str) -> None:
    r = rendered(OPTION_SETS[option_set])
    names: set[tuple[str, str]] = set()
    for m in r.manifests:
        assert {"apiVersion", "kind", "metadata"} <= m.keys()
        key = (m["kind"], m["metadata"]["name"])
        assert key not in names, f"{key} rendered twice"
        names.add(key)
        assert len(m["metadata"]["name"]) <= 63
        labels = m["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", key
    # Every workload's selector matches its own pod template.
    for w in r.workloads():
        selector = w["spec"]["selector"]["matchLabels"]
        assert selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()


def test_defaults_install_the_whole_fleet() -> None:
    r = rendered()
    assert {
        "CustomResourceDefinition",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "StatefulSet",
        "Service",
        "Secret",
        "ConfigMap",
        "ValidatingWebhookConfiguration",
        "NetworkPolicy",
        "PodDisruptionBudget",
    } <= r.kinds()
    assert "DaemonSet" not in r.kinds()
    operator = r.one("Deployment", "-operator")
    assert operator["spec"]["replicas"] == 1
    proxy = r.one("Deployment", "-proxy")
    assert PROXY_LABELS.items() <= proxy["spec"]["template"]["metadata"]["labels"].items()
    postgres = r.one("StatefulSet", "-postgresql")
    claim = postgres["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"


def test_service_mode_is_a_load_balancer_keeping_source_addresses() -> None:
    r = rendered()
    svc = r.one("Service", "-proxy")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert {(p["port"], p["protocol"]) for p in svc["spec"]["ports"]} == {(5060, "UDP"), (5060, "TCP")}
    assert PROXY_LABELS.items() <= svc["spec"]["selector"].items()
    node_port = rendered(OPTION_SETS["nodePort"]).one("Service", "-proxy")
    assert node_port["spec"]["type"] == "NodePort"
    assert node_port["spec"]["ports"] == [
        {"name": "sip-udp", "port": 5060, "targetPort": 5060, "protocol": "UDP", "nodePort": 30060}
    ]


def test_host_network_mode_is_a_daemonset_on_the_chosen_nodes() -> None:
    r = rendered(OPTION_SETS["hostNetwork"])
    assert not [d for d in r.of_kind("Deployment") if d["metadata"]["name"].endswith("-proxy")]
    ds = r.one("DaemonSet", "-proxy")
    spec = pod_spec(ds)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["nodeSelector"] == {"sipsockets.io/sbc": "true"}
    assert spec["tolerations"] == [{"key": "sbc", "operator": "Exists", "effect": "NoSchedule"}]
    # The kubelet refuses a network-namespaced sysctl on a hostNetwork pod (it would set the node's).
    assert "sysctls" not in spec["securityContext"]
    # No LoadBalancer Service, and no PodDisruptionBudget (a DaemonSet has no scale subresource).
    assert not [s for s in r.of_kind("Service") if s["metadata"]["name"].endswith("-proxy")]
    assert [p["metadata"]["name"] for p in r.of_kind("PodDisruptionBudget")] == [f"{RELEASE}-operator"]


def test_host_network_rolling_updates_hand_the_sockets_over_unless_turned_off() -> None:
    r = rendered(OPTION_SETS["hostNetwork"])
    ds = r.one("DaemonSet", "-proxy")
    # The new pod starts beside the old one and takes its sockets; the old one goes once the new one is Ready.
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert proxy_config(r)["handover"] == {"name": f"{NAMESPACE}/{RELEASE}-proxy"}
    # Declared container ports would be hostPorts the scheduler places once per node: the surge pod would stay
    # Pending. The liveness probe and the MI Service use the numbers instead.
    proxy = next(c for c in pod_spec(ds)["containers"] if c["name"] == "proxy")
    assert "ports" not in proxy
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8889}
    # Readiness is per pod, though both pods of a node share the metrics port during a handover: the file the
    # proxy keeps while it serves every socket, in the pod's own /tmp.
    assert proxy_config(r)["ready_file"] == "/tmp/sipproxy-ready"
    assert {"name": "tmp", "mountPath": "/tmp"} in proxy["volumeMounts"]
    for probe in ("startupProbe", "readinessProbe"):
        assert proxy[probe]["exec"] == {"command": ["test", "-e", "/tmp/sipproxy-ready"]}, probe
    svc = r.one("Service", "-proxy-mi")
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8888, 8888), (8889, 8889)]
    # A pod stopped with SIGTERM has time to stop its workers (10 s each at most).
    assert pod_spec(ds)["terminationGracePeriodSeconds"] >= 15

    off = rendered(
        {
            **OPTION_SETS["hostNetwork"],
            "proxy": {**OPTION_SETS["hostNetwork"]["proxy"], "hostNetwork": {"handover": False}},
        }
    )
    ds = off.one("DaemonSet", "-proxy")
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    assert "handover" not in proxy_config(off) and "ready_file" not in proxy_config(off)
    proxy = next(c for c in pod_spec(ds)["containers"] if c["name"] == "proxy")
    assert {p["name"]: p["containerPort"] for p in proxy["ports"]} == {"mi": 8888, "metrics": 8889}
    # The other modes never hand over: two pods never share an address there.
    assert "handover" not in proxy_config(rendered())


def test_multus_mode_attaches_the_secondary_networks() -> None:
    r = rendered(OPTION_SETS["multus"])
    proxy = r.one("Deployment", "-proxy")
    annotation = proxy["spec"]["template"]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"]
    assert json.loads(annotation) == [{"name": "carrier-vlan", "interface": "net1", "ips": ["10.0.5.20/24"]}]
    assert "hostNetwork" not in pod_spec(proxy)
    assert proxy["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    assert not [s for s in r.of_kind("Service") if s["metadata"]["name"].endswith("-proxy")]


def test_multus_mode_without_networks_is_refused() -> None:
    result = rendered_error({"proxy": {"mode": "multus"}})
    assert "networks" in result


def rendered_error(values: dict[str, Any]) -> str:

    result = template_text(values, check=False)
    assert result.returncode != 0, f"helm template accepted {values}"
    return result.stderr


def proxy_config(r: Rendered) -> dict[str, Any]:
    cm = r.one("ConfigMap", "-proxy")
    config: dict[str, Any] = yaml.safe_load(cm["data"]["proxy.yaml"])
    return config


def test_proxy_config_is_generated_from_values() -> None:
    config = proxy_config(rendered(OPTION_SETS["routesAndTuning"]))
    assert config == {
        "sockets": [
            "udp:0.0.0.0:5060 as 203.0.113.10 tag public",
            "tcp:0.0.0.0:5060 as 203.0.113.10 tag public",
        ],
        "udp_workers": 2,
        "tcp_workers": 3,
        "sockets_mgm": {"db_url": "", "table_name": "carrier_sockets", "processes": 4, "max_sockets": 500},
        "mi": {
            "listen": "0.0.0.0:9000",
            "root": "admin",
            "tls": {
                "certificate": "/etc/sipsockets/mi-tls/tls.crt",
                "private_key": "/etc/sipsockets/mi-tls/tls.key",
                "client_ca": "/etc/sipsockets/mi-tls/ca.crt",
            },
        },
        "metrics": {"listen": "0.0.0.0:9001"},
        "routes": [
            {
                "match": {"tag": "public", "ruri": "^sip:\\+44"},
                "forward": "sip:127.0.0.1:5080",
                "socket": "core",
            },
            {"match": {}, "reply": 404},
        ],
        "log_level": "info",
        "tcp_idle_timeout": 120,
    }


def run_render_config(
    values: dict[str, Any], db_url: str, tmp_path: Path, pod_ip: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the chart's own render-config step (its mounts moved under tmp_path, its environment as the
    kubelet would give it) with the ConfigMap it renders and a db_url file."""
    r = rendered(values)
    proxy = next(w for w in r.workloads() if w["metadata"]["name"].endswith("-proxy"))
    step = next(c for c in containers(proxy) if c["name"] == "render-config")
    script = step["command"][-1]
    for mount in step["volumeMounts"]:
        local = tmp_path / mount["name"]
        local.mkdir(parents=True)
        script = script.replace(mount["mountPath"], str(local))
    (tmp_path / "config-template" / "proxy.yaml").write_text(
        r.one("ConfigMap", "-proxy")["data"]["proxy.yaml"]
    )
    (tmp_path / "db-url" / "db-url").write_text(db_url)
    env = {k: v for k, v in os.environ.items() if k != "POD_IP"}
    for item in step.get("env", []):
        assert item == {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
        assert pod_ip is not None
        env["POD_IP"] = pod_ip
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60, check=False
    )


@pytest.mark.parametrize("option_set", sorted(OPTION_SETS))
def test_render_config_step_gives_a_config_the_proxy_accepts(option_set: str, tmp_path: Path) -> None:
    from sipproxy.supervisor.config import parse_config

    url = "postgres://u:secret@db.voip.svc:5432/sipsockets"
    result = run_render_config(OPTION_SETS[option_set], url + "\n", tmp_path, pod_ip="10.244.1.7")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "run" / "proxy.yaml"
    assert out.stat().st_mode & 0o777 == 0o600
    config = parse_config(yaml.safe_load(out.read_text()))
    assert config.sockets_mgm is not None
    assert config.sockets_mgm.db_url == url
    # The MI and the metrics port listen on the pod's own address only.
    mi_values = OPTION_SETS[option_set].get("mi", {})
    assert (config.mi.listen_host, config.mi.listen_port) == ("10.244.1.7", mi_values.get("port", 8888))
    assert config.metrics is not None
    assert (config.metrics.listen_host, config.metrics.listen_port) == (
        "10.244.1.7",
        mi_values.get("metricsPort", 8889),
    )
    # Mutual TLS unless turned off, and then the token; never an open MI.
    assert (config.mi.tls is not None) == (option_set != "miTokenOnly")
    assert (config.mi.token_file is not None) == (option_set in ("miTokenOnly", "miTlsAndToken"))


def test_mi_listens_on_an_ipv6_pod_address_or_everywhere_when_asked(tmp_path: Path) -> None:
    result = run_render_config({}, "postgres://u:p@db/s", tmp_path / "v6", pod_ip="fd00:10:244::7")
    assert result.returncode == 0, result.stderr
    v6 = yaml.safe_load((tmp_path / "v6" / "run" / "proxy.yaml").read_text())
    assert (v6["mi"]["listen"], v6["metrics"]["listen"]) == ("[fd00:10:244::7]:8888", "[fd00:10:244::7]:8889")
    result = run_render_config({"mi": {"listenOn": "all"}}, "postgres://u:p@db/s", tmp_path / "all")
    assert result.returncode == 0, result.stderr
    everywhere = yaml.safe_load((tmp_path / "all" / "run" / "proxy.yaml").read_text())
    assert (everywhere["mi"]["listen"], everywhere["metrics"]["listen"]) == ("0.0.0.0:8888", "0.0.0.0:8889")


def test_render_config_step_refuses_a_config_the_proxy_would_refuse(tmp_path: Path) -> None:
    result = run_render_config({}, "redis://nowhere/0", tmp_path, pod_ip="10.244.1.7")
    assert result.returncode != 0
    assert "sockets_mgm.db_url" in result.stderr
    assert not (tmp_path / "run" / "proxy.yaml").exists()


def test_a_config_change_rolls_the_proxy_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        # Uncached helm runs: the same values must give the same checksum (secrets are generated anew each
        # time and must not roll the proxies).
        docs = yaml.safe_load_all(template_text(values).stdout)
        proxy = Rendered([d for d in docs if d]).one("Deployment", "-proxy")
        value: str = proxy["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    base = checksum({})
    assert checksum({}) == base
    assert checksum({"proxy": {"udpWorkers": 4}}) != base
    assert checksum({"proxy": {"sockets": ["udp:0.0.0.0:5070 as 203.0.113.10"]}}) != base


def test_database_url_comes_from_a_secret_never_a_configmap() -> None:
    r = rendered()
    assert "postgres://" not in yaml.safe_dump(r.of_kind("ConfigMap"))
    proxy = r.one("Deployment", "-proxy")
    volumes = {v["name"]: v for v in pod_spec(proxy)["volumes"]}
    assert volumes["db-url"]["secret"]["secretName"] == f"{RELEASE}-db-url"
    assert volumes["run"]["emptyDir"]["medium"] == "Memory"
    render_config = next(c for c in containers(proxy) if c["name"] == "render-config")
    assert "/etc/sipsockets/db/db-url" in render_config["command"][-1]
    main = next(c for c in pod_spec(proxy)["containers"] if c["name"] == "proxy")
    assert main["command"] == ["sipproxy", "--config", "/run/sipsockets/proxy.yaml"]


def test_bundled_database_url_points_at_the_bundled_postgresql() -> None:
    import base64

    r = rendered()
    secret = r.one("Secret", "-db-url")
    url = base64.b64decode(secret["data"]["db-url"]).decode()
    password = base64.b64decode(r.one("Secret", "-postgresql-auth")["data"]["password"]).decode()
    assert url == f"postgres://sipsockets:{password}@{RELEASE}-postgresql.voip.svc:5432/sipsockets"
    assert len(password) == 32


def test_external_database_replaces_the_bundled_one() -> None:
    r = rendered(OPTION_SETS["externalDatabase"])
    assert not r.of_kind("StatefulSet")
    assert not [s for s in r.of_kind("Secret") if "db-url" in s["metadata"]["name"]]
    for w in r.workloads():
        spec = pod_spec(w)
        refs = [v["secret"] for v in spec["volumes"] if v["name"] == "db-url"]
        assert refs == [{"secretName": "carrier-db", "items": [{"key": "url", "path": "db-url"}]}]
        init = next(c for c in spec["initContainers"] if c["name"] == "db-init")
        assert {"name": "db-url", "mountPath": "/etc/sipsockets/db", "readOnly": True} in init["volumeMounts"]


def test_schema_init_step_runs_sipproxy_db_init() -> None:
    r = rendered(OPTION_SETS["routesAndTuning"])
    for w in r.workloads():
        if w["metadata"]["name"].endswith("-postgresql"):
            continue
        spec = pod_spec(w)
        init = next(c for c in spec["initContainers"] if c["name"] == "db-init")
        # The URL from the pod's db-url Secret volume, as the operator and the proxy read it.
        assert init["command"] == [
            "sipproxy",
            "db",
            "init",
            "--db-url-file",
            "/etc/sipsockets/db/db-url",
            "--table-name",
            "carrier_sockets",
        ]
        mount = next(m for m in init["volumeMounts"] if m["mountPath"] == "/etc/sipsockets/db")
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["items"] == [{"key": "db-url", "path": "db-url"}]
        assert volume["secret"]["secretName"] == f"{RELEASE}-db-url"
    off = rendered(OPTION_SETS["everythingOff"])
    for w in off.workloads():
        assert "db-init" not in [c["name"] for c in pod_spec(w).get("initContainers", [])]


def test_operator_settings_follow_the_operator_contract() -> None:
    r = rendered(OPTION_SETS["routesAndTuning"])
    op = r.one("Deployment", "-operator")
    (container,) = pod_spec(op)["containers"]
    env = env_of(container)
    assert env["SIPSOCKETS_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["SIPSOCKETS_DB_URL_FILE"] == "/etc/sipsockets/db/db-url"
    assert env["SIPSOCKETS_TABLE_NAME"] == "carrier_sockets"
    assert env["SIPSOCKETS_MI_PORT"] == "9000"
    assert env["SIPSOCKETS_MI_ROOT"] == "admin"
    assert "SIPSOCKETS_MI_TOKEN_FILE" not in env  # mutual TLS, no token unless asked for
    assert env["SIPSOCKETS_MI_TLS_CA_FILE"] == "/etc/sipsockets/mi-tls/ca.crt"
    assert env["SIPSOCKETS_MI_TLS_CERT_FILE"] == "/etc/sipsockets/mi-tls/tls.crt"
    assert env["SIPSOCKETS_MI_TLS_KEY_FILE"] == "/etc/sipsockets/mi-tls/tls.key"
    assert env["SIPSOCKETS_MI_TLS_SERVER_NAME"] == f"{RELEASE}-proxy-mi.voip.svc"
    assert env["SIPSOCKETS_WEBHOOK_LISTEN"] == "0.0.0.0:9443"
    assert env["SIPSOCKETS_HEALTH_LISTEN"] == "0.0.0.0:8080"
    assert env["SIPSOCKETS_LOG_FORMAT"] == "text"
    assert env["SIPSOCKETS_LEASE_NAME"] == f"{RELEASE}-operator"
    # The selector finds exactly this release's proxy pods.
    selector = dict(kv.split("=") for kv in env["SIPSOCKETS_PROXY_SELECTOR"].split(","))
    proxy_labels = r.one("Deployment", "-proxy")["spec"]["template"]["metadata"]["labels"]
    assert PROXY_LABELS.items() <= selector.items() <= proxy_labels.items()
    probes = (container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"])
    assert all(p == {"path": "/healthz", "port": "health"} for p in probes)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "webhook": 9443}


def test_mi_token_secret_is_shared_by_operator_and_proxies_when_enabled() -> None:
    assert not [s for s in rendered().of_kind("Secret") if s["metadata"]["name"].endswith("-mi-token")]
    for option_set in ("miTokenOnly", "miTlsAndToken"):
        r = rendered(OPTION_SETS[option_set])
        secret = r.one("Secret", "-mi-token")
        assert len(secret["data"]["token"]) > 40
        for suffix in ("-operator", "-proxy"):
            spec = pod_spec(r.one("Deployment", suffix))
            vol = next(v for v in spec["volumes"] if v["name"] == "mi-token")
            assert vol["secret"]["secretName"] == secret["metadata"]["name"]
        env = env_of(pod_spec(r.one("Deployment", "-operator"))["containers"][0])
        assert env["SIPSOCKETS_MI_TOKEN_FILE"] == "/etc/sipsockets/mi/token"
        assert ("SIPSOCKETS_MI_TLS_CA_FILE" in env) == (option_set == "miTlsAndToken")
    mine = rendered({"mi": {"token": {"enabled": True, "existingSecret": "my-token", "secretKey": "t"}}})
    assert not [s for s in mine.of_kind("Secret") if s["metadata"]["name"].endswith("-mi-token")]
    vol = next(v for v in pod_spec(mine.one("Deployment", "-proxy"))["volumes"] if v["name"] == "mi-token")
    assert vol["secret"] == {"secretName": "my-token", "items": [{"key": "t", "path": "token"}]}


def test_probes_and_metrics_use_the_plain_http_metrics_port() -> None:
    r = rendered(OPTION_SETS["routesAndTuning"])
    proxy = next(c for c in pod_spec(r.one("Deployment", "-proxy"))["containers"] if c["name"] == "proxy")
    assert {p["name"]: p["containerPort"] for p in proxy["ports"]} == {"mi": 9000, "metrics": 9001}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert proxy[probe]["httpGet"]["port"] == "metrics", probe
    svc = r.one("Service", "-proxy-mi")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "mi": (9000, "mi"),
        "metrics": (9001, "metrics"),
    }


def test_network_policy_lets_only_the_operator_reach_the_mi_port() -> None:
    r = rendered(OPTION_SETS["monitoring"])
    policy = r.one("NetworkPolicy", "-proxy-mi")
    assert PROXY_LABELS.items() <= policy["spec"]["podSelector"]["matchLabels"].items()
    mi_rule, open_rule = policy["spec"]["ingress"]
    assert mi_rule["ports"] == [{"protocol": "TCP", "port": 8888}]
    peers = mi_rule["from"]
    assert peers[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert peers[1] == {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
    assert "from" not in open_rule
    for proto in ("UDP", "TCP", "SCTP"):
        ranges = [(p["port"], p["endPort"]) for p in open_rule["ports"] if p["protocol"] == proto]
        assert ranges == [(1, 8887), (8889, 65535)]  # the metrics port (8889) stays open
    assert not rendered(OPTION_SETS["everythingOff"]).of_kind("NetworkPolicy")


def test_network_policy_lets_only_the_operator_and_the_proxies_reach_the_bundled_database() -> None:
    policy = rendered().one("NetworkPolicy", "-postgresql")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "database"
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5432}]
    components = [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"]]
    assert components == ["operator", "proxy"]
    # In hostNetwork mode the proxies come from their nodes' addresses: the given CIDRs are admitted...
    host = rendered(OPTION_SETS["hostNetwork"]).one("NetworkPolicy", "-postgresql")
    (rule,) = host["spec"]["ingress"]
    assert [p["ipBlock"]["cidr"] for p in rule["from"] if "ipBlock" in p] == ["10.0.5.0/24", "fd00:5::/64"]
    # ...and without them the chart says what to set instead of shutting the proxies out.
    error = rendered_error({"proxy": {"mode": "hostNetwork"}})
    assert "networkPolicy.database.nodeCIDRs" in error
    off = rendered({"proxy": {"mode": "hostNetwork"}, "networkPolicy": {"database": {"enabled": False}}})
    assert not [p for p in off.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("-postgresql")]
    extra = {
        "networkPolicy": {"database": {"extraFrom": [{"podSelector": {"matchLabels": {"app": "backup"}}}]}}
    }
    (rule,) = rendered(extra).one("NetworkPolicy", "-postgresql")["spec"]["ingress"]
    assert rule["from"][-1] == {"podSelector": {"matchLabels": {"app": "backup"}}}
    # No bundled database, no policy for it.
    external = rendered(OPTION_SETS["externalDatabase"])
    assert not [p for p in external.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("-postgresql")]


def test_replicas_are_one_deployment_electing_a_leader_through_a_lease() -> None:
    """Any number of replicas: one Deployment, rolled one pod at a time (the old leader releases the Lease on
    SIGTERM, the new pod takes it); no kopf peering objects any more."""
    r = rendered(OPTION_SETS["replicas"])
    op = r.one("Deployment", "-operator")
    assert op["spec"]["replicas"] == 3
    assert op["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    env = env_of(pod_spec(op)["containers"][0])
    assert (env["SIPSOCKETS_LEASE_NAME"], env["SIPSOCKETS_LEASE_DURATION"]) == ("voip-sbc", "20")
    assert (env["SIPSOCKETS_RENEW_DEADLINE"], env["SIPSOCKETS_RETRY_PERIOD"]) == ("12.5", "2")
    assert all(not s["metadata"]["name"].endswith("-operator") for s in r.of_kind("StatefulSet"))
    assert not r.of_kind("KopfPeering")
    assert not [c for c in r.of_kind("CustomResourceDefinition") if c["spec"]["group"] == "kopf.dev"]
    single = env_of(pod_spec(rendered().one("Deployment", "-operator"))["containers"][0])
    assert single["SIPSOCKETS_LEASE_NAME"] == f"{RELEASE}-operator"


@pytest.mark.parametrize(
    ("election", "complaint"),
    [
        ({"leaseDuration": 10, "renewDeadline": 10}, "leaseDuration must be longer than renewDeadline"),
        ({"renewDeadline": 2, "retryPeriod": 2}, "renewDeadline must be longer than 1.2 times retryPeriod"),
    ],
)
def test_lease_timings_that_cannot_fence_are_refused(election: dict[str, float], complaint: str) -> None:
    error = rendered_error({"operator": {"leaderElection": election}})
    assert complaint in error


def test_pod_disruption_budgets() -> None:
    r = rendered()
    pdbs = {p["metadata"]["name"]: p["spec"] for p in r.of_kind("PodDisruptionBudget")}
    assert pdbs[f"{RELEASE}-operator"]["maxUnavailable"] == 1
    assert pdbs[f"{RELEASE}-proxy"]["maxUnavailable"] == 1
    assert pdbs[f"{RELEASE}-proxy"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "proxy"
    assert not rendered(OPTION_SETS["everythingOff"]).of_kind("PodDisruptionBudget")


def test_service_monitors_scrape_operator_and_proxies_on_their_metrics_ports() -> None:
    r = rendered(OPTION_SETS["monitoring"])
    monitors = {m["metadata"]["name"]: m for m in r.of_kind("ServiceMonitor")}
    assert set(monitors) == {f"{RELEASE}-operator", f"{RELEASE}-proxy"}
    proxy_ep = monitors[f"{RELEASE}-proxy"]["spec"]["endpoints"][0]
    assert proxy_ep["port"] == "metrics" and "authorization" not in proxy_ep
    mi_svc = r.one("Service", "-proxy-mi")
    assert mi_svc["spec"]["clusterIP"] == "None"
    assert (
        monitors[f"{RELEASE}-proxy"]["spec"]["selector"]["matchLabels"].items()
        <= mi_svc["metadata"]["labels"].items()
    )
    assert monitors[f"{RELEASE}-proxy"]["metadata"]["labels"]["release"] == "prom"
    assert not rendered().of_kind("ServiceMonitor")


def test_images_are_values() -> None:
    r = rendered(
        {
            "operator": {"image": {"repository": "reg.example/op", "tag": "1.2"}},
            "proxy": {"image": {"repository": "reg.example/px", "tag": "3.4", "pullPolicy": "Never"}},
        }
    )
    op = r.one("Deployment", "-operator")
    assert pod_spec(op)["containers"][0]["image"] == "reg.example/op:1.2"
    px = r.one("Deployment", "-proxy")
    assert {c["image"] for c in containers(px)} == {"reg.example/px:3.4"}
    assert {c["imagePullPolicy"] for c in containers(px)} == {"Never"}
    default = rendered().one("Deployment", "-proxy")
    assert pod_spec(default)["containers"][0]["image"] == "sipsockets/proxy:0.1.0"


def write_operator_tls(r: Rendered, directory: Path) -> None:
    """The operator's mi-tls Secret volume: from the Secret the chart generated, or (cert-manager issues it)
    from a CA of the test's own."""
    import base64

    from devenv.mitls import MiPki

    found = [s for s in r.of_kind("Secret") if s["metadata"]["name"].endswith("-mi-operator-tls")]
    if found:
        for key, value in found[0]["data"].items():
            (directory / key).write_bytes(base64.b64decode(value))
        return
    pki = MiPki.create(directory / "pki")
    for key in ("ca.crt", "tls.crt", "tls.key"):
        (directory / key).write_bytes((pki.operator_dir / key).read_bytes())


@pytest.mark.parametrize("option_set", sorted(OPTION_SETS))
def test_operator_settings_load_with_the_real_settings_parser(option_set: str, tmp_path: Path) -> None:
    """The chart's operator environment, with its mounted files stood in by local ones, is accepted by the
    operator's own settings loader, and means what the values say."""
    from sipoperator import settings as operator_settings
    from sipoperator.lease import Timing

    values = OPTION_SETS[option_set]
    r = rendered(values)
    op = next(w for w in r.workloads() if w["metadata"]["name"].endswith("-operator"))
    (container,) = pod_spec(op)["containers"]
    mounts = {m["mountPath"]: tmp_path / m["name"] for m in container["volumeMounts"]}
    for local in mounts.values():
        local.mkdir()
    (mounts["/etc/sipsockets/db"] / "db-url").write_text("postgres://u:p@db.voip.svc:5432/sipsockets\n")
    token = mounts.get("/etc/sipsockets/mi")
    if token is not None:
        (token / "token").write_text("t0ken\n")
    tls = mounts.get("/etc/sipsockets/mi-tls")
    if tls is not None:
        write_operator_tls(r, tls)
    fields = {"metadata.namespace": "voip", "metadata.labels['apps.kubernetes.io/pod-index']": "2"}
    environ: dict[str, str] = {}
    for item in container["env"]:
        if "valueFrom" in item:
            environ[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
            continue
        value = str(item.get("value", ""))
        for mount_path, local in mounts.items():
            value = value.replace(mount_path + "/", f"{local}/")
        environ[item["name"]] = value
    loaded = operator_settings.load([], environ)
    assert loaded.namespace == "voip"
    assert loaded.db_url == "postgres://u:p@db.voip.svc:5432/sipsockets"
    assert loaded.mi_token() == ("t0ken" if token else None)
    assert (loaded.mi_tls_cert_file is not None) == (tls is not None)
    assert loaded.mi_port == values.get("mi", {}).get("port", 8888)
    assert loaded.table_name == values.get("database", {}).get("tableName", "sockets")
    assert loaded.webhook_listen == ("" if option_set == "everythingOff" else "0.0.0.0:9443")
    election = values.get("operator", {}).get("leaderElection", {})
    assert loaded.lease_name == election.get("leaseName", f"{RELEASE}-operator")
    assert loaded.timing == Timing(
        election.get("leaseDuration", 15), election.get("renewDeadline", 10), election.get("retryPeriod", 2)
    )
