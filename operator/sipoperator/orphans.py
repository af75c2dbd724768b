"""Rows whose SipSocket no longer exists (pure): the finalizer was removed by force, or the database was kept
while the cluster was rebuilt. Only rows of our namespace are ours to judge. Socket rows and tls_mgm rows
alike: each has an owner entry with uid, namespace and name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

from sipoperator.snapshot import Known


class Owned(Protocol):
    @property
    def owner_uid(self) -> str | None: ...
    @property
    def owner_namespace(self) -> str | None: ...
    @property
    def owner_name(self) -> str | None: ...


R = TypeVar("R", bound=Owned)


def sweep_due(now: float, started: float, last_sweep: float, resync: float) -> bool:
    """May rows of unknown owners be collected now? Only after a resync period of uptime, when the watch has
    listed every object, and then at most once per resync period."""
    return now - started >= resync and now - last_sweep >= resync


def orphaned(rows: Sequence[R], known: Mapping[str, Known], namespace: str, sweep: bool) -> list[R]:
    """Owned rows of `namespace` whose owner uid the watch does not know. Certain at once when the name now
    belongs to another object (deleted and recreated); otherwise only when `sweep`."""
    names = {(k.namespace, k.name) for k in known.values()}
    return [
        r
        for r in rows
        if r.owner_uid is not None
        and r.owner_namespace == namespace
        and r.owner_uid not in known
        and (sweep or (r.owner_namespace, r.owner_name) in names)
    ]
