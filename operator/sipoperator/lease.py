"""One writer among replicas (pure): the `coordination.k8s.io/v1` Lease record, who may take it, how long the
holder may still write. The loop that reads and writes the Lease is `election.py`.

The shape is client-go's leaderelection: the holder renews `renewTime` every retry period with the Lease's
`resourceVersion` (optimistic concurrency: of two replicas writing the same version, one gets 409 Conflict);
the others watch the record and take it only when it has not changed for a whole lease duration, as measured
on their own clock from the moment they saw it change.

Fencing by lease time. Let `L` be the lease duration, `D` the renew deadline (`D < L`) and `t` the moment
(on the leader's monotonic clock) at which the leader *sent* its last successful renew:
- the leader starts no write (row, status, finalizer, reload) after `t + D`, and abandons a write still
  running at `t + L` (`write_budget`);
- a candidate saw that renew land at some `o >= t` and takes the Lease no earlier than `o + L >= t + L`
  (`may_acquire`), and only if the record is still the one it saw (the resourceVersion).
So the old leader's last write starts at least `L - D` seconds before the new leader's first one can, and
ends before it. Clock rates, not clock values, matter: both durations are measured with monotonic clocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

API_VERSION = "coordination.k8s.io/v1"
JITTER = 1.2  # candidates retry after retry_period * [1, JITTER), as client-go does


class NotLeader(Exception):
    """This replica does not hold the Lease (or can no longer be sure it does): it must not write."""


class Fence(Protocol):
    def budget(self) -> float:
        """Seconds a write started now may take; raises NotLeader when no write may start."""
        ...


class Unfenced:
    """No election (a unit test driving the reconciler alone): every write may start and take its time."""

    def budget(self) -> float:
        return math.inf


UNFENCED = Unfenced()


@dataclass(frozen=True)
class Timing:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def timing_problem(timing: Timing) -> str | None:
    """client-go's rule: lease duration > renew deadline > JITTER * retry period."""
    if timing.lease_duration <= timing.renew_deadline:
        return (
            f"the lease duration ({timing.lease_duration:g}s) must be longer than the renew deadline "
            f"({timing.renew_deadline:g}s)"
        )
    if timing.renew_deadline <= JITTER * timing.retry_period:
        return (
            f"the renew deadline ({timing.renew_deadline:g}s) must be longer than {JITTER:g} times the retry "
            f"period ({timing.retry_period:g}s)"
        )
    return None


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec as read, and the resourceVersion to write it back with."""

    holder: str  # "" when nobody holds it (released)
    duration: float | None  # leaseDurationSeconds: what the holder promised to renew within
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> LeaseRecord:
        spec = body.get("spec") or {}
        raw_duration = spec.get("leaseDurationSeconds")
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=float(raw_duration) if isinstance(raw_duration, int | float) else None,
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str((body.get("metadata") or {}).get("resourceVersion") or ""),
        )

    def same(self, other: LeaseRecord | None) -> bool:
        """The same record (client-go compares the whole record, not only renewTime)."""
        return other is not None and (
            self.holder,
            self.duration,
            self.acquire_time,
            self.renew_time,
            self.transitions,
        ) == (other.holder, other.duration, other.acquire_time, other.renew_time, other.transitions)


@dataclass(frozen=True)
class Observed:
    """A record, and when (local monotonic time) this replica first saw it in this form."""

    record: LeaseRecord
    at: float


def observe(previous: Observed | None, record: LeaseRecord, now: float) -> Observed:
    """The lease duration of a record runs from when it was first seen changed, not from its renewTime: the
    holder's wall clock may differ from ours, our own monotonic clock cannot."""
    if previous is not None and previous.record.same(record):
        return Observed(record, previous.at)
    return Observed(record, now)


def expires_at(observed: Observed, lease_duration: float) -> float:
    """Local time after which the holder of `observed` can no longer be writing. The record's own duration
    counts (it is what the holder promised); ours when the record has none."""
    duration = observed.record.duration if observed.record.duration is not None else lease_duration
    return observed.at + duration


def may_acquire(observed: Observed, now: float, identity: str, lease_duration: float) -> bool:
    """May this replica write itself into the Lease now? Free (released) or ours at once; someone else's only
    after a full lease duration without change since we first saw it."""
    holder = observed.record.holder
    if not holder or holder == identity:
        return True
    return now >= expires_at(observed, lease_duration)


def still_leading(renewed_at: float | None, now: float, renew_deadline: float) -> bool:
    """`renewed_at`: when the last successful acquire or renew was sent (None: never, or lost)."""
    return renewed_at is not None and now < renewed_at + renew_deadline


def write_budget(renewed_at: float | None, now: float, timing: Timing) -> float | None:
    """Seconds a write started now may take before the Lease could pass to another replica; None when no
    write may start (past the renew deadline, or not leading)."""
    if not still_leading(renewed_at, now, timing.renew_deadline):
        return None
    assert renewed_at is not None
    return renewed_at + timing.lease_duration - now


def candidate_sleep(observed: Observed | None, now: float, timing: Timing, jitter: float) -> float:
    """How long a candidate waits before looking again: the retry period (times `jitter` in [1, JITTER)),
    but not past the moment the current record expires, so a dead leader is replaced within the lease
    duration plus one request, not plus another retry period."""
    wait = timing.retry_period * jitter
    if observed is not None and observed.record.holder:
        wait = min(wait, max(0.0, expires_at(observed, timing.lease_duration) - now))
    return wait


def micro_time(when: datetime) -> str:
    """A metav1.MicroTime."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def acquired_spec(
    record: LeaseRecord | None, identity: str, now: datetime, duration: float
) -> dict[str, Any]:
    """The spec with which `identity` takes the Lease: a transition is counted when it had another holder."""
    stamp = micro_time(now)
    transitions = 0 if record is None else record.transitions
    if record is not None and record.holder and record.holder != identity:
        transitions += 1
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": math.ceil(duration),
        "acquireTime": stamp,
        "renewTime": stamp,
        "leaseTransitions": transitions,
    }


def renewed_spec(record: LeaseRecord, identity: str, now: datetime, duration: float) -> dict[str, Any]:
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": math.ceil(duration),
        "acquireTime": record.acquire_time or micro_time(now),
        "renewTime": micro_time(now),
        "leaseTransitions": record.transitions,
    }


def released_spec(record: LeaseRecord, now: datetime) -> dict[str, Any]:
    """Given up on a clean stop (client-go's ReleaseOnCancel): no holder, the next replica need not wait."""
    stamp = micro_time(now)
    return {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": stamp,
        "renewTime": stamp,
        "leaseTransitions": record.transitions,
    }


def lease_body(
    namespace: str, name: str, spec: Mapping[str, Any], resource_version: str = ""
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {"apiVersion": API_VERSION, "kind": "Lease", "metadata": metadata, "spec": dict(spec)}


def lease_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{API_VERSION}/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base
