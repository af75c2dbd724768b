"""A SipSocket's life against a real API server, real sipproxy processes and a real SQLite database:
apply -> Ready and answering SIP; columns; port change; delete."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from devenv.sipclient import answers_ok
from tests.e2e.operator_support import (
    Env,
    apply,
    condition,
    crd,
    env,
    events,
    get,
    sipsocket,
    wait_condition,
    wait_for,
)

__all__ = ["crd", "env"]  # fixtures


def table(db: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(db) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT socket, tag FROM sockets ORDER BY id")]


def test_apply_ready_answers_options_then_port_change_then_delete(env: Env) -> None:
    cp, ns = env.cp, env.namespace
    pod = env.pod("sipproxy-0")
    env.operator()
    addr = env.addresses.next()

    apply(cp, ns, sipsocket("carrier-a", "udp", addr, 5070, tag="carrier-a"))
    obj = wait_condition(cp, ns, "carrier-a", "Ready", "True", "Listening")
    assert obj["status"]["socket"] == f"udp:{addr}:5070"
    # Each listener names its pod's node when the pod has one (real pods; the process fleet's have none).
    node = cp.kubectl("get", "pod", pod.name, "-n", ns, "-o", "jsonpath={.spec.nodeName}").stdout.strip()
    listener = {
        "pod": pod.name,
        "state": "Listening",
        "message": "listening",
        **({"node": node} if node else {}),
    }
    assert obj["status"]["listeners"] == [listener]
    assert condition(obj, "Accepted")["status"] == "True"
    assert condition(obj, "Programmed")["status"] == "True"
    assert wait_for(lambda: answers_ok(addr, 5070), f"OPTIONS answered on udp {addr}:5070")
    assert table(env.db_path) == [(f"udp:{addr}:5070", "carrier-a")]
    reasons = {e["reason"] for e in events(cp, ns, "carrier-a")}
    assert {"Accepted", "Programmed", "Listening"} <= reasons

    # kubectl get: the printer columns.
    out = cp.kubectl("get", "sipsock", "-n", ns).stdout.splitlines()
    assert out[0].split() == ["NAME", "PROTOCOL", "ADDRESS", "PORT", "READY", "REASON", "AGE"]
    assert out[1].split()[:6] == ["carrier-a", "udp", addr, "5070", "True", "Listening"]

    # A port left out is the protocol's default, and the Port column says which.
    apply(cp, ns, sipsocket("carrier-d", "tcp", addr, None))
    defaulted = wait_condition(cp, ns, "carrier-d", "Ready", "True", "Listening")
    assert defaulted["status"]["socket"] == f"tcp:{addr}:5060"
    row = cp.kubectl("get", "sipsock", "carrier-d", "-n", ns, "--no-headers").stdout.split()
    assert row[:4] == ["carrier-d", "tcp", addr, "5060"]
    cp.kubectl("delete", "sipsock", "carrier-d", "-n", ns)

    # Port change: the row is replaced, the old endpoint stops answering, the new one answers.
    apply(cp, ns, sipsocket("carrier-a", "udp", addr, 5072, tag="carrier-a"))
    obj = wait_condition(cp, ns, "carrier-a", "Ready", "True")
    assert obj["status"]["socket"] == f"udp:{addr}:5072"
    assert wait_for(lambda: answers_ok(addr, 5072), "OPTIONS answered on the new port")
    assert wait_for(lambda: not answers_ok(addr, 5070), "the old port silent")
    assert table(env.db_path) == [(f"udp:{addr}:5072", "carrier-a")]

    # Delete: the finalizer removes the row and reloads the proxy before the object goes.
    cp.kubectl("delete", "sipsocket", "carrier-a", "-n", ns, "--wait=true", "--timeout=60s")
    assert get(cp, ns, "carrier-a") is None
    assert table(env.db_path) == []
    assert not answers_ok(addr, 5072)


def test_tcp_socket_with_defaults(env: Env) -> None:
    cp, ns = env.cp, env.namespace
    env.pod("sipproxy-0")
    env.operator()
    addr = env.addresses.next()
    apply(cp, ns, sipsocket("carrier-b", "tcp", addr, advertised={"address": "sbc.example.com"}))
    obj = wait_condition(cp, ns, "carrier-b", "Ready", "True")
    assert obj["status"]["socket"] == f"tcp:{addr}:5060"
    assert wait_for(lambda: answers_ok(addr, 5060, "tcp"), f"OPTIONS answered on tcp {addr}:5060")
    # kubectl get -o wide adds the advertised address and the pods listening.
    out = cp.kubectl("get", "sipsock", "carrier-b", "-n", ns, "-o", "wide").stdout.splitlines()
    assert out[0].split()[-2:] == ["ADVERTISED", "LISTENING"]
    assert out[1].split()[-2:] == ["sbc.example.com:5060", "1/1"]
