"""A removal reaches every proxy pod: a pod that could not be reloaded when the last SipSocket was deleted is
reloaded by the leader's fleet check when it answers again, and stops serving the socket."""

from __future__ import annotations

import re
import sqlite3

from devenv.sipclient import answers_ok
from tests.e2e.operator_support import Env, apply, crd, env, get, sipsocket, wait_condition, wait_for

__all__ = ["crd", "env"]  # fixtures


def test_a_pod_unreachable_during_the_last_deletion_stops_serving_when_it_comes_back(env: Env) -> None:
    """Both pods serve the socket (`reuse_port`: the fleets' pods share one host's addresses). With one pod
    hung, deleting the only SipSocket removes the finalizer (the reload of the hung pod fails); no SipSocket
    is left whose pass could notice that pod again, so only a check of the fleet itself can."""
    cp, ns = env.cp, env.namespace
    env.pod("proxy-a")
    hung = env.pod("proxy-b")
    op = env.operator()
    addr = env.addresses.next()
    apply(cp, ns, sipsocket("only", "udp", addr, 5070, flags=["reuse_port"]))
    obj = wait_condition(cp, ns, "only", "Ready", "True")
    assert obj["status"]["listening"] == "2/2"

    hung.pause()
    try:
        cp.kubectl("delete", "sipsocket", "only", "-n", ns, "--wait=true", "--timeout=90s")
        assert get(cp, ns, "only") is None
        with sqlite3.connect(env.db_path) as conn:
            assert conn.execute("SELECT socket FROM sockets").fetchall() == []
        assert "proxy pod proxy-b missed the reload after deleting" in op.tail(1_000_000)
    finally:
        hung.resume()

    # Within a resync (10 s here) of the pod answering again, and well before: it is asked every few seconds.
    assert wait_for(lambda: not answers_ok(addr, 5070), "the resumed pod no longer answering", timeout=60)
    assert "proxy pod proxy-b differs from the table (serves udp:" in op.tail(1_000_000)
    repairs = re.search(r"^sipsockets_fleet_drift_repairs_total (\d+)", op.metrics(), flags=re.M)
    assert repairs is not None and int(repairs.group(1)) >= 1
