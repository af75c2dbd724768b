"""When a SipSocket is due for another full pass (pure): the resync period, backoff after failed passes, and
wake-ups when the proxy fleet, (for objects waiting for an endpoint or a slot) the table, or a Secret the
object references changed.

The keeper of each SipSocket (keepers.py) sleeps `seconds_until_due`, or until woken, then asks `due`; a
thousand idle SipSockets cost no polling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sipoperator.checks import INVALID_SPEC
from sipoperator.conditions import ACCEPTED, READY, Condition

MAX_BACKOFF = 30.0
MIN_SLEEP = 0.05


@dataclass
class Memo:
    """Per-object scheduling state."""

    last_run: float = 0.0  # 0.0: never reconciled by this process
    fleet_epoch: int = -1  # the fleet and table epochs the last pass started from
    table_epoch: int = -1
    healthy: bool = False  # the last pass ended Ready
    blocked: bool = False  # not accepted: waits for an endpoint or a slot to free up
    failures: int = 0  # passes in a row that ended not Ready
    last_conditions: dict[str, tuple[str, str]] = field(default_factory=dict)
    # The status this process last wrote: the watched body may not show our own latest patch yet.
    written_status: dict[str, Any] | None = None
    # spec.advertised from a Service or the nodes: what the last pass resolved (advertised.Resolved), and
    # whether the source changed since that pass began (a Service event, a node's new address).
    advertised_seen: Any = None
    sources_changed: bool = False
    # Secrets (spec.tls): the resourceVersion of each as the last pass read it ("" missing), and whether one
    # changed since that pass began.
    secret_versions: dict[str, str] = field(default_factory=dict)
    refs_changed: bool = False
    # Proxy pod ("name/uid") -> digest of this object's tls_mgm row that the pod's last tls_reload applied.
    tls_applied: dict[str, str] = field(default_factory=dict)


def backoff(failures: int) -> float:
    """Seconds between passes of an object that is not Ready: 2, 4, 8, 16, 30, 30, ..."""
    return min(2.0 ** min(failures, 5), MAX_BACKOFF)


def started(memo: Memo, now: float, fleet_epoch: int, table_epoch: int) -> None:
    """A pass begins: changes from here on are news to the next one."""
    memo.last_run = now
    memo.fleet_epoch, memo.table_epoch = fleet_epoch, table_epoch
    memo.sources_changed = False  # this pass reads the sources afresh
    memo.refs_changed = False  # this pass reads the Secrets afresh


def finished(memo: Memo, now: float, conditions: Sequence[Condition]) -> None:
    by_type = {c.type: c for c in conditions}
    ready, accepted = by_type[READY], by_type[ACCEPTED]
    memo.last_run = now
    memo.healthy = ready.status == "True"
    memo.blocked = accepted.status != "True" and accepted.reason != INVALID_SPEC
    memo.failures = 0 if memo.healthy else memo.failures + 1
    memo.last_conditions = {c.type: (c.status, c.reason) for c in conditions}


def seconds_until_due(memo: Memo, now: float, resync: float) -> float:
    """How long the keeper may sleep unless woken."""
    if memo.last_run == 0.0:
        return resync
    wait = resync if memo.healthy else min(backoff(memo.failures), resync)
    return max(MIN_SLEEP, memo.last_run + wait - now)


def due(memo: Memo, now: float, resync: float, fleet_epoch: int, table_epoch: int, running: bool) -> bool:
    """Should a full pass run now?"""
    if running:
        return False  # a pass is running right now
    if memo.last_run == 0.0:
        return False  # never reconciled by this leader: its keeper runs the first pass itself
    elapsed = now - memo.last_run
    changed = memo.sources_changed or memo.refs_changed
    if elapsed >= resync or memo.fleet_epoch != fleet_epoch or changed:
        return True
    if memo.blocked and memo.table_epoch != table_epoch:
        return True
    if not memo.healthy:
        return elapsed >= backoff(memo.failures)
    return False


def woken_by_table_change(memo: Memo) -> bool:
    """Only objects waiting for an endpoint or a slot care; waking all would cost a thousand wake-ups per
    write at start-up."""
    return memo.blocked
