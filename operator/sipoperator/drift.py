"""Does a proxy pod need a `sockets_reload` (pure)? Its listing is compared with what the table says: for one
SipSocket in its pass (`needs_reload`), and for the whole pod in the leader's fleet check (`pod_out_of_sync`,
run by `fleetsync.py` every resync, not tied to any SipSocket). And a `tls_reload`: has it applied this
object's tls_mgm row as it is now?"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sipoperator.conditions import ABSENT, LISTENING, NOT_SELECTED, PENDING
from sipoperator.proxies import Listed
from sipoperator.spec import DesiredSocket, row_key


def table_sockets(sockets: Iterable[str | None]) -> frozenset[str]:
    """The socket texts of the table a proxy would load (rows that do not parse are skipped by it too)."""
    return frozenset(s for s in sockets if s is not None and row_key(s) is not None)


def needs_reload(
    listed: Listed,
    desired: DesiredSocket,
    table: frozenset[str] | None,
    reloaded: bool,
    selected: bool = True,
) -> bool:
    """`table`: the table's socket texts, None when unknown. `reloaded`: this pass reloaded the pod already;
    then only a socket still not listed is worth another reload (one that raced with a concurrent write).
    `selected`: the pod's node is one the socket is placed on (spec.nodeSelector)."""
    if table is None:
        return False  # the database is down: a reload could not read the table either
    state = listed.state_of(desired.socket, desired.key)[0]
    if reloaded:
        return state == PENDING
    # Absent is settled: the address is not on the pod's node, and the proxy binds it by itself when it comes.
    # A pod that should (not) serve the socket but says otherwise read an older placement. OpenSIPS serves
    # every row on every node, so there only presence counts.
    settled = (LISTENING, ABSENT) if selected or listed.opensips else (NOT_SELECTED,)
    if state not in settled:
        return True
    # The pod serves something the table no longer has (a missed reload after a delete), or lacks a row.
    return pod_out_of_sync(listed, table)


# Seconds between fleet checks while a pod could not be asked (or the table could not be read).
FLEET_RETRY = 5.0


def pod_out_of_sync(listed: Listed, table: frozenset[str]) -> bool:
    """Does the pod list other dynamic sockets than the table has? Judged per pod: a pod that missed the
    reload after the last SipSocket was deleted serves a socket that no SipSocket's pass looks at any more."""
    return listed.sockets != table


def next_fleet_check(resync: float, retry_soon: bool) -> float:
    """Seconds until the next fleet check: the resync period, or sooner (FLEET_RETRY) while a pod did not
    answer or the table could not be read, so that a pod that comes back (a hung process resumed, which
    Kubernetes may never have seen as not Ready) is repaired within seconds, not a resync later."""
    return min(resync, FLEET_RETRY) if retry_soon else resync


def needs_tls_reload(applied: str | None, domain: str | None) -> bool:
    """`applied`: the digest of our domain row that the pod's last tls_reload (by this process) saw; `domain`:
    the row's digest now (None: we have none). A pod never asked by this process is asked once: it may have
    missed a reload before the operator restarted."""
    return domain is not None and applied != domain


def tls_failure(result: Any, domain: str) -> str | None:
    """Why a pod's `tls_reload` left our domain out, from its answer (ours: `{"generation", "loaded",
    "failed": [{"domain", "kind", "source", "error"}]}`); None when it did not say (OpenSIPS answers "OK")."""
    failed = result.get("failed") if isinstance(result, Mapping) else None
    for item in failed if isinstance(failed, list) else ():
        if (
            isinstance(item, Mapping)
            and item.get("domain") == domain
            and item.get("kind", "server") == "server"
        ):
            return str(item.get("error") or "failed")
    return None
