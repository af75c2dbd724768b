"""Faults and drift: proxies dying, hanging, failing to bind; rows edited behind the operator's back;
capacity; the operator itself killed in the middle of its work."""

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
    get,
    sipsocket,
    wait_condition,
    wait_for,
)

__all__ = ["crd", "env"]  # fixtures


def rows(db: Path) -> list[tuple[int, str, str | None]]:
    with sqlite3.connect(db) as conn:
        return [
            (int(r[0]), r[1], r[2]) for r in conn.execute("SELECT id, socket, tag FROM sockets ORDER BY id")
        ]


def test_proxy_killed_and_restarted_listeners_recover(env: Env) -> None:
    cp, ns = env.cp, env.namespace
    pod = env.pod("sipproxy-0")
    env.operator()
    addr = env.addresses.next()
    apply(cp, ns, sipsocket("s", "udp", addr, 5070))
    wait_condition(cp, ns, "s", "Ready", "True")

    pod.kill()  # the container crashes: process gone, Pod not Ready
    obj = wait_condition(cp, ns, "s", "Ready", "False", "NoProxyPods")
    assert obj["status"]["listeners"] == []
    assert not answers_ok(addr, 5070)

    pod.start()  # restarted by its kubelet
    obj = wait_condition(cp, ns, "s", "Ready", "True", "Listening")
    assert [entry["state"] for entry in obj["status"]["listeners"]] == ["Listening"]
    assert wait_for(lambda: answers_ok(addr, 5070), "OPTIONS answered after the restart")


def test_hung_proxy_is_reported_unreachable_then_recovers(env: Env) -> None:
    cp, ns = env.cp, env.namespace
    pod = env.pod("sipproxy-0")
    env.operator()
    addr = env.addresses.next()
    apply(cp, ns, sipsocket("s", "udp", addr, 5070))
    wait_condition(cp, ns, "s", "Ready", "True")
    pod.pause()  # still "Ready" for Kubernetes, but its MI answers nothing
    try:
        obj = wait_condition(cp, ns, "s", "Ready", "False", "ProxyUnreachable")
        assert "sipproxy-0" in condition(obj, "Ready")["message"]
        [listener] = obj["status"]["listeners"]
        assert listener["pod"] == "sipproxy-0"
        assert "unreachable" in listener["message"]
    finally:
        pod.resume()
    wait_condition(cp, ns, "s", "Ready", "True")


def test_two_pods_one_cannot_bind_is_partially_listening(env: Env) -> None:
    """Both proxies share this host's addresses (as processes, or as hostNetwork pods of one node): the
    second pod to bind the socket gets EADDRINUSE, a failure. (A pod on a node without that address gets
    EADDRNOTAVAIL, which is Absent, not a failure: test_operator_nodes.py.)"""
    cp, ns = env.cp, env.namespace
    env.pod("proxy-a")
    env.operator()
    addr = env.addresses.next()
    apply(cp, ns, sipsocket("s", "udp", addr, 5075))
    wait_condition(cp, ns, "s", "Ready", "True")

    env.pod("proxy-b")  # a pod added to the fleet: it loads the table itself and fails to bind
    obj = wait_condition(cp, ns, "s", "Ready", "False", "PartiallyListening")
    message = condition(obj, "Ready")["message"]
    assert "proxy-b" in message and "proxy-a" not in message, message
    states = {e["pod"]: e["state"] for e in obj["status"]["listeners"]}
    assert states == {"proxy-a": "Listening", "proxy-b": "Failed"}


def test_rows_edited_or_deleted_by_hand_are_repaired(env: Env) -> None:
    cp, ns = env.cp, env.namespace
    env.pod("sipproxy-0")
    env.operator()
    addr = env.addresses.next()
    db = env.db_path
    apply(cp, ns, sipsocket("s", "udp", addr, 5070, tag="mine"))
    wait_condition(cp, ns, "s", "Ready", "True")
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO sockets (socket, tag) VALUES ('udp:127.0.0.1:5999', 'not-ours')")
        conn.execute("UPDATE sockets SET tag = 'edited' WHERE tag = 'mine'")
    wait_for(lambda: (1, f"udp:{addr}:5070", "mine") in rows(db), "the edited row repaired", timeout=90)

    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM sockets WHERE tag = 'mine'")
    wait_for(lambda: any(r[1:] == (f"udp:{addr}:5070", "mine") for r in rows(db)), "the row re-created")
    wait_condition(cp, ns, "s", "Ready", "True")
    assert wait_for(lambda: answers_ok(addr, 5070), "still answering")
    # The row it does not own was never touched.
    assert any(r[1:] == ("udp:127.0.0.1:5999", "not-ours") for r in rows(db))

    cp.kubectl("delete", "sipsocket", "s", "-n", ns, "--timeout=60s")
    assert [r[1:] for r in rows(db)] == [("udp:127.0.0.1:5999", "not-ours")]


def test_capacity_exceeded_until_a_slot_frees_up(env: Env) -> None:
    cp, ns = env.cp, env.namespace
    env.pod("sipproxy-0", max_sockets=1)
    env.operator()
    addr = env.addresses.next()
    apply(cp, ns, sipsocket("one", "udp", addr, 5070))
    wait_condition(cp, ns, "one", "Ready", "True")
    apply(cp, ns, sipsocket("two", "udp", addr, 5071))
    obj = wait_condition(cp, ns, "two", "Accepted", "False", "CapacityExceeded")
    assert "max_sockets=1" in condition(obj, "Accepted")["message"]
    assert [r[1] for r in rows(env.db_path)] == [f"udp:{addr}:5070"]

    cp.kubectl("delete", "sipsocket", "one", "-n", ns, "--timeout=60s")
    wait_condition(cp, ns, "two", "Ready", "True")
    assert wait_for(lambda: answers_ok(addr, 5071), "the second socket answering")


def test_operator_killed_mid_reconcile_leaves_a_consistent_table(env: Env) -> None:
    cp, ns = env.cp, env.namespace
    env.pod("sipproxy-0")
    op = env.operator()
    addr = env.addresses.next()
    db = env.db_path
    names = [f"s{i:02d}" for i in range(15)]
    apply(cp, ns, *(sipsocket(n, "udp", addr, 6000 + i) for i, n in enumerate(names)))
    wait_for(lambda: len(rows(db)) >= 1, "the operator writing its first rows", interval=0.05)
    op.kill()
    op.start()
    for n in names:
        wait_condition(cp, ns, n, "Ready", "True", timeout=120)

    with sqlite3.connect(db) as conn:
        sockets = conn.execute("SELECT id, socket FROM sockets").fetchall()
        owners = conn.execute("SELECT socket_id, uid, name FROM sipsockets_owners").fetchall()
    assert sorted(s for _, s in sockets) == sorted(f"udp:{addr}:{6000 + i}" for i in range(15))
    uids = {n: get(cp, ns, n)["metadata"]["uid"] for n in names}  # type: ignore[index]
    assert sorted((uid, name) for _, uid, name in owners) == sorted((u, n) for n, u in uids.items())
    assert {sid for sid, _, _ in owners} == {sid for sid, _ in sockets}
    # The killed operator may have written every status before it died; the new one reports them only once it
    # holds the lease (the dead one's runs out first) and has reconciled them itself.
    ready = 'sipsockets_sockets{condition="Ready",status="True",reason="Listening"} 15'

    def counted() -> str | None:
        metrics = op.metrics()
        return metrics if ready in metrics else None

    metrics = wait_for(counted, "the new operator counting 15 Ready")
    assert "sipsockets_proxy_reload_duration_seconds_count" in metrics

    # And all of them go cleanly.
    cp.kubectl("delete", "sipsockets", "--all", "-n", ns, "--timeout=120s")
    assert rows(db) == []


def test_rows_of_objects_gone_behind_its_back_are_collected(env: Env) -> None:
    """A SipSocket deleted while the operator was down and its finalizer removed by force, then recreated
    under the same name: its old row is an orphan, removed, and the new object takes the endpoint."""
    cp, ns = env.cp, env.namespace
    env.pod("sipproxy-0")
    op = env.operator()
    addr = env.addresses.next()
    db = env.db_path
    apply(cp, ns, sipsocket("s", "udp", addr, 5070))
    old_uid = wait_condition(cp, ns, "s", "Ready", "True")["metadata"]["uid"]
    op.stop()
    cp.kubectl("delete", "sipsocket", "s", "-n", ns, "--wait=false")
    cp.kubectl("patch", "sipsocket", "s", "-n", ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    wait_for(lambda: get(cp, ns, "s") is None, "the object gone")
    apply(cp, ns, sipsocket("s", "udp", addr, 5070))
    op.start()
    obj = wait_condition(cp, ns, "s", "Ready", "True")
    assert obj["metadata"]["uid"] != old_uid
    with sqlite3.connect(db) as conn:
        owners = conn.execute("SELECT uid FROM sipsockets_owners").fetchall()
    assert owners == [(obj["metadata"]["uid"],)]
    assert [r[1] for r in rows(db)] == [f"udp:{addr}:5070"]
