"""Several operator replicas: one leader through a coordination.k8s.io/v1 Lease, the others watching and
writing nothing; the leader killed with SIGKILL in the middle of a churn of applies, the other taking over no
earlier than a lease duration after the last renew it saw, and no row ever written twice."""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.e2e.operator_support import (
    Env,
    FleetOperator,
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

LEASE = "sipsockets-operator"  # the operator's default, and the chart's name for release "sipsockets"
LEASE_DURATION, RETRY_PERIOD = 15.0, 2.0  # the defaults (client-go's)


def identity(op: FleetOperator) -> str:
    found = re.search(r"leader election: Lease \S+, identity (\S+)", op.tail(1_000_000))
    assert found, op.tail()
    return found.group(1)


def leads(op: FleetOperator) -> bool:
    found = re.search(r"^sipsockets_leader (\d)", op.metrics(), flags=re.M)
    return bool(found and found.group(1) == "1")


def wrote_nothing(op: FleetOperator) -> list[str]:
    """The series that only writing moves: passes, reloads, repairs. Empty for a replica that never led."""
    written = ("sipsockets_reconciles_total{", "sipsockets_proxy_reloads_total{", "sipsockets_fleet_drift_")
    return [
        line for line in op.metrics().splitlines() if line.startswith(written) and not line.startswith("#")
    ]


def lease(env: Env) -> dict[str, Any]:
    out = env.cp.kubectl("get", "lease", LEASE, "-n", env.namespace, "-o", "json")
    spec: dict[str, Any] = json.loads(out.stdout)["spec"]
    return spec


def micro_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


class TableWatch:
    """Reads the sockets table and the owner table every few milliseconds for the whole test and keeps every
    moment a socket, an owner or a SipSocket had more than one row."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.violations: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TableWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with sqlite3.connect(self.db, timeout=5) as conn:
                    sockets = conn.execute("SELECT id, socket FROM sockets").fetchall()
                    owners = conn.execute("SELECT socket_id, uid, name FROM sipsockets_owners").fetchall()
            except sqlite3.OperationalError:
                continue  # locked by a writer for longer than the timeout: the next sample
            self.samples += 1
            for what, counts in (
                ("socket", Counter(s for _, s in sockets)),
                ("owner uid", Counter(uid for _, uid, _ in owners)),
                ("SipSocket", Counter(name for _, _, name in owners)),
            ):
                self.violations += [f"{what} {k} has {n} rows" for k, n in counts.items() if n > 1]
            unowned = {sid for sid, _ in sockets} - {sid for sid, _, _ in owners}
            self.violations += [f"row {sid} without an owner" for sid in unowned]
            time.sleep(0.02)


class Churn:
    """Applies while the leadership changes hands: new SipSockets, some on an endpoint another one already
    wants (only one may get a row), and port changes of earlier ones."""

    def __init__(self, env: Env, addr: str) -> None:
        self.env, self.addr = env, addr
        self.names: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        for i in itertools.count():
            if self._stop.is_set() or i >= 60:
                return
            objs = [sipsocket(f"churn-{i}", "udp", self.addr, 6000 + i)]
            if i % 3 == 0:
                objs.append(sipsocket(f"clash-{i}", "udp", self.addr, 6000 + i))
            if i % 2 == 1 and i >= 3:
                objs.append(sipsocket(f"churn-{i - 3}", "udp", self.addr, 6500 + i))  # a port change
            out = apply(self.env.cp, self.env.namespace, *objs, check=False)
            if out.returncode != 0:
                self.errors.append(out.stderr)
            self.names += [o["metadata"]["name"] for o in objs if o["metadata"]["name"] not in self.names]
            time.sleep(0.4)


def settled(env: Env, name: str) -> bool:
    """Ready, or refused for its endpoint, for the spec it has now."""
    obj = get(env.cp, env.namespace, name)
    if obj is None or obj.get("status", {}).get("observedGeneration") != obj["metadata"]["generation"]:
        return False
    ready, accepted = condition(obj, "Ready"), condition(obj, "Accepted")
    return ready.get("status") == "True" or accepted.get("reason") == "EndpointConflict"


def test_one_leader_then_a_takeover_after_sigkill_with_no_row_written_twice(env: Env) -> None:
    cp, ns = env.cp, env.namespace
    env.pod("sipproxy-0")
    addr = env.addresses.next()
    with TableWatch(env.db_path) as watch:
        ops = env.replicas(2)  # the same instant: both race to create the Lease
        leader = wait_for(lambda: next((op for op in ops if leads(op)), None), "a leader", timeout=60)
        standby = next(op for op in ops if op is not leader)
        for _ in range(10):  # exactly one, and it stays so
            assert leads(leader) and not leads(standby)
            time.sleep(0.3)
        spec = lease(env)
        assert spec["holderIdentity"] == identity(leader)
        assert (spec["leaseTransitions"], spec["leaseDurationSeconds"]) == (0, int(LEASE_DURATION))
        out = cp.kubectl("get", "lease", LEASE, "-n", ns).stdout.split()
        assert out[:3] == ["NAME", "HOLDER", "AGE"] and out[3:5] == [LEASE, identity(leader)]

        apply(cp, ns, *(sipsocket(f"s{i}", "udp", addr, 5070 + i) for i in range(5)))
        for i in range(5):
            wait_condition(cp, ns, f"s{i}", "Ready", "True")
        assert "s0: Accepted=True" in leader.tail(1_000_000)
        # The standby watches (its webhook could answer) but never wrote a row, a status or a reload.
        assert wrote_nothing(standby) == []
        assert "Accepted=True" not in standby.tail(1_000_000)

        with Churn(env, addr) as churn:
            time.sleep(3)
            leader.kill()  # SIGKILL: no release, the Lease must run out
            last_renew = micro_time(lease(env)["renewTime"])
            wait_for(
                lambda: leads(standby),
                "the standby leading",
                timeout=LEASE_DURATION + RETRY_PERIOD + 60,  # generous: the machine is shared
            )
            time.sleep(5)
        assert churn.errors == []
        taken = lease(env)
        assert taken["holderIdentity"] == identity(standby)
        assert taken["leaseTransitions"] == 1
        waited = (micro_time(taken["acquireTime"]) - last_renew).total_seconds()
        # Fencing: the new leader took the Lease no earlier than a lease duration after the old one's last
        # renew (so after the old one's renew deadline: it had stopped writing).
        assert waited >= LEASE_DURATION - 0.05, waited
        print(f"takeover {waited:.2f}s after the killed leader's last renew")

        for name in [f"s{i}" for i in range(5)] + churn.names:
            wait_for(lambda n=name: settled(env, n), f"{name} settled", timeout=120)  # type: ignore[misc]
    assert watch.samples > 100
    assert watch.violations == []

    with sqlite3.connect(env.db_path) as conn:
        rows = dict(conn.execute("SELECT id, socket FROM sockets").fetchall())
        owners = conn.execute("SELECT socket_id, name FROM sipsockets_owners").fetchall()
    by_name = {name: rows[sid] for sid, name in owners}
    ready: dict[str, str] = {}
    for name in [f"s{i}" for i in range(5)] + churn.names:
        obj = get(cp, ns, name)
        assert obj is not None
        if condition(obj, "Ready").get("status") == "True":
            ready[name] = obj["status"]["socket"]
    assert by_name == ready  # every Ready SipSocket has its one row, and nothing else has one
    assert len(set(by_name.values())) == len(by_name)  # never two on one endpoint
    # The churn did contend: SipSockets that lost their endpoint to another one (whose port never moved).
    refused = [
        n for n in churn.names if condition(get(cp, ns, n), "Accepted").get("reason") == "EndpointConflict"
    ]
    assert refused, churn.names
    assert wrote_nothing(standby) != []  # the new leader did the work


def test_a_stopped_leader_releases_the_lease_for_the_next(env: Env) -> None:
    """A rolling update: the old pod gets SIGTERM, stops writing, gives the Lease up; the other takes it
    without waiting for it to run out (a released Lease names no holder, and is no transition)."""
    cp, ns = env.cp, env.namespace
    env.pod("sipproxy-0")
    ops = env.replicas(2)
    leader = wait_for(lambda: next((op for op in ops if leads(op)), None), "a leader", timeout=60)
    standby = next(op for op in ops if op is not leader)
    addr = env.addresses.next()
    apply(cp, ns, sipsocket("first", "udp", addr, 5070))
    wait_condition(cp, ns, "first", "Ready", "True")

    leader.stop()
    assert "released Lease" in leader.tail()
    wait_for(lambda: leads(standby), "the standby leading", timeout=60)
    spec = lease(env)
    assert spec["holderIdentity"] == identity(standby)
    assert spec["leaseTransitions"] == 0
    apply(cp, ns, sipsocket("second", "udp", addr, 5071))
    wait_condition(cp, ns, "second", "Ready", "True")
    assert "second: Accepted=True" in standby.tail(1_000_000)
