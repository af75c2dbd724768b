"""`make demo` / `make demo-down`: the whole system on this machine, left running for you to use.

Where the machine can run a node (root, containerd, runc, CNI plugins, buildah, debootstrap: see
docs/local-cluster.md), the demo is a real single-node cluster with `helm install` of the chart: operator,
proxy DaemonSet (hostNetwork) and PostgreSQL as pods from images built here. Elsewhere it falls back to the
API-server-only environment: a real etcd and kube-apiserver, the CRD, the operator as a process, one proxy
process (a "pod" registered by the harness, see devenv/fakepods.py) with a SQLite database.
SIPSOCKETS_DEMO_PROVIDER=local|apiserver forces one. Either way it applies the SipSockets of examples/, waits
until they are Ready, and sends a SIP OPTIONS to one of them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from devenv import binaries
from devenv.cluster_client import ClusterClient
from devenv.controlplane import ControlPlane
from devenv.fakepods import ProxyPod
from devenv.localcluster import node_environment_problems
from devenv.processes import ProcessTable, alive, free_port
from devenv.sipclient import send_options

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / ".dev"
NAMESPACE = "voip"
PROXY_IP = "127.0.0.2"
CRD = REPO / "crds" / "sipsockets.io_sipsockets.yaml"
LOCAL = DEV / "localcluster"


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _example_sipsockets() -> list[Path]:
    found = []
    for path in sorted((REPO / "examples").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        if any(d.get("kind") == "SipSocket" for d in docs):
            found.append(path)
    return found


def _proxy_config(db_url: str, token_file: Path) -> dict[str, Any]:
    example = REPO / "examples" / "proxy.yaml"
    config: dict[str, Any] = yaml.safe_load(example.read_text()) if example.exists() else {}
    config.setdefault("sockets_mgm", {})["db_url"] = db_url
    config.setdefault("mi", {})["token_file"] = str(token_file)
    config["mi"]["listen"] = f"{PROXY_IP}:8888"
    return config


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0
    except OSError:
        return False


def up() -> int:
    down(quiet=True)
    DEV.mkdir(exist_ok=True)
    provider = os.environ.get("SIPSOCKETS_DEMO_PROVIDER", "auto")
    if provider not in ("auto", "local", "apiserver"):
        say(f"SIPSOCKETS_DEMO_PROVIDER={provider!r}: expected local or apiserver")
        return 2
    if provider != "apiserver":
        problems = node_environment_problems()
        if not problems:
            return up_local()
        say("this machine cannot run a local node: " + "; ".join(problems))
        if provider == "local":
            return 1
        say("falling back to the API-server-only demo (no kubelet: the proxy and operator run as processes)")
    return up_apiserver()


def up_local() -> int:
    from devenv import cluster as local

    say("starting a single-node cluster: images built here (minutes the first time), node, helm install")
    node = local.up(LOCAL, install_chart=True)
    shutil.copyfile(node.kubeconfig, DEV / "kubeconfig")
    (DEV / "kubeconfig").chmod(0o600)
    examples = _example_sipsockets()
    for path in examples:
        # The webhook's Service may have no endpoint for a moment right after the operator pod starts.
        for attempt in range(30):
            applied = node.kubectl("apply", "-n", NAMESPACE, "-f", str(path), check=False)
            if applied.returncode == 0:
                break
            if attempt == 29:
                raise RuntimeError(f"kubectl apply -f {path} failed: {applied.stderr.strip()}")
            time.sleep(2)
    say("applied " + ", ".join(str(p.relative_to(REPO)) for p in examples))
    ready = _wait_ready(node, timeout=180)
    print(node.kubectl("get", "sipsockets", "-n", NAMESPACE, "-o", "wide").stdout, flush=True)
    print(node.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide").stdout, flush=True)
    if ready:
        _show_options(node)
    _print_usage(node)
    return 0 if ready else 1


def up_apiserver() -> int:
    missing: list[str] = []
    cp = ControlPlane(DEV)
    say("starting etcd and kube-apiserver (binaries are built on first use; that takes minutes once)")
    cp.start()
    cp.ensure_namespace(NAMESPACE)
    say(f"control plane up at {cp.server}")

    if CRD.exists():
        cp.kubectl("apply", "-f", str(CRD))
        cp.kubectl("wait", "--for=condition=Established", "crd/sipsockets.sipsockets.io", "--timeout=60s")
        say("SipSocket CRD installed")
    else:
        missing.append(f"the SipSocket CRD ({CRD.relative_to(REPO)})")

    token_file = DEV / "mi-token"
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(32))
        token_file.chmod(0o600)
    db_path = DEV / "sipsockets.db"
    db_url = f"sqlite:///{db_path}"
    proxy_ok = _works([_bin("sipproxy"), "db", "init", "--db-url", db_url])
    if proxy_ok:
        pod = ProxyPod(cp, NAMESPACE, "sipproxy-0", PROXY_IP, _proxy_config(db_url, token_file), DEV / "pods")
        try:
            pod.start()
            say(f"proxy pod sipproxy-0 running on {PROXY_IP} (MI {pod.mi_url}), database {db_path}")
        except (RuntimeError, TimeoutError) as e:
            proxy_ok = False
            say(f"the proxy did not start: {e}")
    if not proxy_ok:
        missing.append("a working `sipproxy` (proxy issue)")

    operator_ok = _works([_bin("sipsockets-operator"), "--help"])
    if operator_ok:
        health = free_port()
        env = cp.env()
        env.update(
            SIPSOCKETS_NAMESPACE=NAMESPACE,
            SIPSOCKETS_DB_URL=db_url,
            SIPSOCKETS_MI_TOKEN_FILE=str(token_file),
            SIPSOCKETS_HEALTH_LISTEN=f"127.0.0.1:{health}",
            SIPSOCKETS_RESYNC_PERIOD="15",
        )
        proc = ProcessTable(DEV).start(
            "operator", [_bin("sipsockets-operator")], DEV / "operator.log", env=env
        )
        time.sleep(2)
        if not alive(proc.pid):
            operator_ok = False
            say(f"the operator exited at start-up; see {DEV / 'operator.log'}")
        else:
            say(f"operator running (log {DEV / 'operator.log'}, health http://127.0.0.1:{health}/healthz)")
    if not operator_ok:
        missing.append("a working `sipsockets-operator` (operator issue)")

    examples = _example_sipsockets()
    if CRD.exists() and examples:
        for path in examples:
            cp.kubectl("apply", "-n", NAMESPACE, "-f", str(path))
        say("applied " + ", ".join(str(p.relative_to(REPO)) for p in examples))
        if operator_ok and proxy_ok:
            ready = _wait_ready(cp)
            print(cp.kubectl("get", "sipsockets", "-n", NAMESPACE, "-o", "wide").stdout, flush=True)
            if ready:
                _show_options(cp)
            else:
                missing.append("SipSockets reaching Ready (see kubectl describe sipsockets -n voip)")
    elif not examples:
        missing.append("SipSocket examples in examples/")

    _print_usage(cp)
    if missing:
        say("the demo is incomplete; missing: " + "; ".join(missing))
        return 1
    return 0


def _wait_ready(cp: ClusterClient, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = json.loads(cp.kubectl("get", "sipsockets", "-n", NAMESPACE, "-o", "json").stdout)["items"]
        if items and all(_ready(i) for i in items):
            say(f"all {len(items)} SipSockets are Ready")
            return True
        time.sleep(1)
    say(f"SipSockets not all Ready after {timeout:.0f}s")
    return False


def _ready(item: dict[str, Any]) -> bool:
    conds = item.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def _show_options(cp: ClusterClient) -> None:
    items = json.loads(cp.kubectl("get", "sipsockets", "-n", NAMESPACE, "-o", "json").stdout)["items"]
    for item in items:
        spec = item["spec"]
        if spec.get("protocol") in ("udp", "tcp"):
            addr, port, proto = spec["address"], int(spec.get("port", 5060)), spec["protocol"]
            say(f"sending SIP OPTIONS to the new socket {proto}:{addr}:{port} ({item['metadata']['name']})")
            reply = send_options(addr, port, transport=proto)
            print("\n".join("    " + line for line in reply.splitlines()), flush=True)
            return


def _print_usage(cp: ClusterClient) -> None:
    kubeconfig = os.path.relpath(DEV / "kubeconfig", Path.cwd())
    kubectl_dir = binaries.binary("kubectl").parent
    path_hint = (
        ""
        if shutil.which("kubectl") == str(binaries.binary("kubectl"))
        else (f"    export PATH={kubectl_dir}:$PATH   # kubectl v{binaries.K8S_VERSION}, the API server's\n")
    )
    print(
        f"""
The demo keeps running. To use it:
    export KUBECONFIG={kubeconfig}
{path_hint}    kubectl get sipsockets -n {NAMESPACE}
    kubectl apply -n {NAMESPACE} -f examples/carrier-a.yaml     # or a SipSocket of your own
    kubectl describe sipsocket -n {NAMESPACE} <name>
Logs: `kubectl logs -n {NAMESPACE} ...` on the local node; else .dev/ (operator.log, pods/*/sipproxy.log).
Stop everything with: make demo-down
""",
        flush=True,
    )


def down(quiet: bool = False) -> int:
    stopped_node = (LOCAL / "processes.json").exists()
    if stopped_node:
        from devenv.localcluster import LocalCluster

        LocalCluster(LOCAL).stop()
        shutil.rmtree(LOCAL, ignore_errors=True)
        if not quiet:
            say("stopped the local node")
    procs = ProcessTable(DEV)
    names = list(procs.load())
    procs.stop_all(
        order=["operator", *[n for n in names if n.startswith("proxy-")], "kube-apiserver", "etcd"]
    )
    for sub in ("etcd", "controlplane.json"):
        path = DEV / sub
        if path.is_dir():
            subprocess.run(["rm", "-rf", str(path)], check=False)
        elif path.exists():
            path.unlink()
    if not quiet:
        if names:
            say(f"stopped {len(names)} processes")
        elif not stopped_node:
            say("nothing was running")
    return 0


def main(argv: list[str]) -> int:
    if argv == ["up"]:
        return up()
    if argv == ["down"]:
        return down()
    print("usage: python -m devenv.demo up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
