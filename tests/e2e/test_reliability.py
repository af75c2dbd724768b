"""Churn under faults, the short versions of `python -m bench reliability` (docs/reliability.md): SipSockets
created, changed and deleted while the database is down, the operator is killed, the API server restarts
and the proxy pod is replaced. Afterwards nothing is lost: the table holds exactly one owned row per live
SipSocket with its socket (none lost, duplicated or orphaned), every one is Ready, every deleted one is
gone, and the proxy lists exactly the table, all listening and answering (devenv/churn.py).

On the API-server tier's process fleet (the proxy and the operator as host processes); the `pods` fleet's
faults are tests/e2e/test_operator_faults.py's.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv import churn
from devenv.cluster_client import ClusterClient
from devenv.controlplane import ControlPlane
from devenv.databases import PostgresServer
from devenv.fakepods import ProxyPod
from devenv.kubeapi import ApiClient, Watch, crd_path
from tests.e2e.operator_support import (
    Addresses,
    Operator,
    crd,
    init_db,
    namespace_name,
    proxy_config,
    wait_for,
)

__all__ = ["crd"]  # fixtures


class World:
    """One namespace: a proxy pod, the operator, a watch of the SipSockets, the churn and the check."""

    def __init__(self, cp: ControlPlane, namespace: str, db_url: str, workdir: Path) -> None:
        self.cp, self.namespace, self.db_url, self.workdir = cp, namespace, db_url, workdir
        self.addresses = Addresses()
        self.pod = ProxyPod(cp, namespace, "sipproxy-0", self.addresses.next(), proxy_config(db_url), workdir)
        self.operator = Operator(cp, namespace, db_url, workdir / "op")
        self.api = ApiClient(cp.kubeconfig)
        self.watch = Watch(self.api, crd_path(churn.GROUP, churn.VERSION, churn.PLURAL, namespace))
        self.observer = churn.Observer(self.watch, db_url, {self.pod.name: self.pod.mi_url})
        self.churn = churn.Churn(self.api, namespace)

    def plan(self, count: int, seed: int) -> list[churn.Op]:
        return churn.plan(count, seed, addresses=iter(self.addresses.next, None))

    def converged(self, expected: dict[str, churn.Op], timeout: float = 180.0) -> None:
        self.observer.wait(expected, timeout)
        assert churn.unanswered(expected) == []

    def in_background(self, ops: list[churn.Op], rate: float) -> ChurnThread:
        thread = ChurnThread(self.churn, ops, rate)
        thread.start()
        return thread


class ChurnThread(threading.Thread):
    """The churn going on while the test injects a fault."""

    def __init__(self, runner: churn.Churn, ops: list[churn.Op], rate: float) -> None:
        super().__init__(daemon=True)
        self.runner, self.ops, self.rate = runner, ops, rate
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.runner.run(self.ops, self.rate)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.join(timeout=300)
        assert not self.is_alive(), "the churn did not finish"
        assert self.error is None, self.error


@pytest.fixture
def world(
    control_plane: ClusterClient, crd: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[World]:
    if not isinstance(control_plane, ControlPlane):
        pytest.skip("needs the loopback control plane (its kube-apiserver is restarted)")
    namespace = namespace_name(request.node.name)
    control_plane.ensure_namespace(namespace)
    db_url = f"sqlite:///{tmp_path / 'sockets.db'}"
    if "postgres" in request.fixturenames:
        db_url = request.getfixturevalue("postgres").create_database("reliability")
    init_db(db_url)
    w = World(control_plane, namespace, db_url, tmp_path)
    w.pod.start()
    w.operator.start()
    try:
        with w.watch:
            yield w
    finally:
        w.operator.stop()
        w.pod.stop()
        release = '{"metadata":{"finalizers":null}}'
        for ref in control_plane.kubectl(
            "get", "sipsockets", "-n", namespace, "-o", "name", check=False
        ).stdout.split():
            control_plane.kubectl("patch", ref, "-n", namespace, "--type=merge", "-p", release, check=False)
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    pg = PostgresServer(tmp_path / "pg")
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


def test_database_outage_during_churn_loses_nothing(postgres: PostgresServer, world: World) -> None:
    ops = world.plan(30, seed=1)
    before, during, after = ops[:10], ops[10:22], ops[22:]
    world.churn.run(before, rate=5)
    postgres.halt()
    try:
        world.churn.run(during, rate=5)
        live_before = churn.expected_after(before)
        touched = {o.name for o in during if o.kind != "delete"} & set(churn.expected_after(before + during))
        deleted = {o.name for o in during if o.kind == "delete"} & set(live_before)
        assert touched and deleted, "the plan changes and deletes objects during the outage"

        def reported() -> bool:
            objects = world.watch.snapshot()
            for name in touched:
                if name not in objects:
                    return False  # the watch has not delivered its latest create yet
                meta, status = objects[name]["metadata"], objects[name].get("status") or {}
                programmed = churn._condition(objects[name], "Programmed")
                if status.get("observedGeneration") != meta.get("generation"):
                    return False
                if (programmed.get("status"), programmed.get("reason")) != ("False", "DatabaseUnavailable"):
                    return False
            return True

        wait_for(reported, "DatabaseUnavailable on every object changed during the outage", timeout=90)
        # Deletion waits for the database: the finalizer stays, the object with it.
        objects = world.watch.snapshot()
        assert all(objects[name]["metadata"].get("deletionTimestamp") for name in deleted)
    finally:
        postgres.resume()
    world.churn.run(after, rate=5)
    world.converged(churn.expected_after(ops))


def test_operator_killed_at_random_moments_during_churn_loses_nothing(world: World) -> None:
    ops = world.plan(40, seed=2)
    rng = random.Random(2)
    thread = world.in_background(ops, rate=4)
    for _ in range(5):
        thread.join(timeout=rng.uniform(0.5, 2.5))
        world.operator.kill()
        world.operator.start()
    thread.finish()
    # A SIGKILLed operator cannot release its Lease: each new process waits out the old one's lease duration
    # (15 s) before it writes anything, so with kills a few seconds apart nothing converges until the last
    # restart has waited that long. converged()'s 180 s covers it with room for a loaded machine.
    world.converged(churn.expected_after(ops))


def test_api_server_restarted_and_proxy_pod_replaced_during_churn_lose_nothing(world: World) -> None:
    ops = world.plan(30, seed=3)
    thread = world.in_background(ops, rate=4)
    thread.join(timeout=2)
    world.cp.stop_apiserver(grace=0)
    world.cp.start_apiserver()
    thread.join(timeout=2)
    world.pod.stop()  # the Pod deleted
    world.pod.start()  # a new Pod, a new process, loading the table itself
    thread.finish()
    assert world.churn.retries > 0, "the churn met the API server down"
    world.converged(churn.expected_after(ops))
