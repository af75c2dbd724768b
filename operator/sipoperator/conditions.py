"""Conditions and listeners from what reconcile found (pure).

Accepted -> Programmed -> Ready form a chain: when one is False the next ones are False with the same reason,
so `kubectl get sipsockets` (whose Reason column shows Ready's reason) names the first thing to fix.

Ready counts the pods that serve the socket (all ready proxy pods, or those on the nodes `spec.nodeSelector`
selects). A pod whose node does not hold the address reports it `Absent`: not a failure, the address lives on
another node. Ready means listening on every serving pod whose node holds the address, and on at least one.

`ResolvedRefs` (SipSockets with `spec.tls` only) sits between Accepted and Programmed and is judged on its
own: it says whether the Secrets resolve, whatever Accepted says. It joins the chain only while there is no
certificate to serve: then Programmed and Ready are False with its reason (`InvalidCertificateRef`). A
Secret that goes bad after a certificate was programmed does not take the socket down: the proxies keep the
last good certificate, Programmed and Ready stay True, and ResolvedRefs says what to fix and which
certificate is still served.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sipoperator.certificates import INVALID_CERTIFICATE_REF

ACCEPTED, PROGRAMMED, READY = "Accepted", "Programmed", "Ready"
RESOLVED_REFS = "ResolvedRefs"
LISTENING, FAILED, PENDING = "Listening", "Failed", "Pending"
# Listening, but not with every worker of the pod that should serve it (one is being replaced).
PARTIAL = "Partial"
# The address is not on the pod's node (not bound; bound when it appears). Not a failure.
ABSENT = "Absent"
# The pod's node is not one spec.nodeSelector selects: it does not serve the socket.
NOT_SELECTED = "NotSelected"


@dataclass(frozen=True)
class PodResult:
    """One ready proxy pod after reload and listing."""

    pod: str
    reachable: bool
    state: str = PENDING  # LISTENING, PARTIAL, ABSENT, FAILED, PENDING or NOT_SELECTED
    error: str = ""
    selected: bool = True  # serves the socket (spec.nodeSelector); False: left out of Ready
    node: str = ""  # the pod's node, when known
    # Free-bind sockets only (None otherwise, or when the proxy does not say): the node holds the address;
    # messages arrived on the socket there lately.
    address_local: bool | None = None
    receiving: bool | None = None
    advertised: str | None = None  # the advertised address the pod uses (spec.advertised from a source)


@dataclass(frozen=True)
class Refs:
    """The references of spec.tls: resolved or not, and, when not, the last good certificate still served."""

    resolved: bool
    reason: str
    message: str
    serving: str = ""  # not resolved: the certificate the proxies keep serving ("" when none)

    def condition(self) -> Condition:
        if self.resolved:
            return Condition(RESOLVED_REFS, "True", self.reason, self.message)
        message = self.message
        if self.serving:
            message += f"; the proxies keep serving {self.serving} until it is fixed"
        else:
            message += "; nothing is served on this socket until it is fixed"
        return Condition(RESOLVED_REFS, "False", self.reason, message)


@dataclass(frozen=True)
class Outcome:
    """Everything reconcile learned, in decision order; later fields matter only if earlier ones passed."""

    accepted: bool
    accepted_reason: str = "Accepted"
    accepted_message: str = ""
    programmed: bool = False
    programmed_reason: str = "Programmed"
    programmed_message: str = ""
    pods: Sequence[PodResult] = field(default_factory=tuple)
    # spec.advertised from a Service or the nodes, not known (yet): why (the socket is programmed and may
    # listen, but Via would not name the address peers reach it on)
    advertised_pending: str = ""
    refs: Refs | None = None  # None: the SipSocket references no Secret


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str


def listeners(pods: Iterable[PodResult]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in sorted(pods, key=lambda p: p.pod):
        entry: dict[str, Any]
        if not p.reachable:
            entry = {"pod": p.pod, "state": FAILED, "message": f"proxy unreachable: {p.error}"}
        else:
            entry = {"pod": p.pod, "state": p.state, "message": p.error or _default_message(p.state)}
        if p.node:
            entry["node"] = p.node
        if p.reachable and p.address_local is not None:
            entry["addressOnNode"] = p.address_local
        if p.reachable and p.receiving is not None:
            entry["receiving"] = p.receiving
        if p.reachable and p.advertised is not None:
            entry["advertised"] = p.advertised
        out.append(entry)
    return out


def listening_count(pods: Sequence[PodResult]) -> str:
    """`n/m`: the ready proxy pods listening on the socket, of all ready proxy pods (the -o wide column)."""
    listening = sum(1 for p in pods if p.reachable and p.state == LISTENING)
    return f"{listening}/{len(pods)}"


def _default_message(state: str) -> str:
    return {
        LISTENING: "listening",
        PENDING: "not listed by the proxy yet",
        FAILED: "failed",
        PARTIAL: "listening, but not on every worker",
        ABSENT: "the address is not on this pod's node",
        NOT_SELECTED: "not on a node spec.nodeSelector selects",
    }[state]


def _sorted(pods: Iterable[PodResult]) -> list[PodResult]:
    return sorted(pods, key=lambda p: p.pod)


def _names(pods: Iterable[PodResult]) -> str:
    return ", ".join(sorted(p.pod for p in pods))


def _ready(all_pods: Sequence[PodResult]) -> Condition:
    if not all_pods:
        return Condition(READY, "False", "NoProxyPods", "no ready proxy pod matches the proxy selector")
    pods = [p for p in all_pods if p.selected]
    if not pods:
        return Condition(
            READY,
            "False",
            "NoSelectedNodes",
            f"none of the {len(all_pods)} ready proxy pods runs on a node spec.nodeSelector selects",
        )
    unreachable = [p for p in pods if not p.reachable]
    listening = [p for p in pods if p.reachable and p.state == LISTENING]
    absent = [p for p in pods if p.reachable and p.state == ABSENT]
    failed = [p for p in pods if p.reachable and p.state == FAILED]
    pending = [p for p in pods if p.reachable and p.state == PENDING]
    total = len(pods)
    if listening and len(listening) + len(absent) == total:
        message = f"listening on {len(listening)}/{total} proxy pods"
        if absent:
            message += f"; the address is not on the node of {_names(absent)}"
        if len(all_pods) > total:
            message += f"; {len(all_pods) - total} pods are on nodes spec.nodeSelector does not select"
        return Condition(READY, "True", "Listening", message)
    if unreachable:
        detail = "; ".join(f"{p.pod}: {p.error}" for p in sorted(unreachable, key=lambda p: p.pod))
        return Condition(
            READY,
            "False",
            "ProxyUnreachable",
            f"listening on {len(listening)}/{total} proxy pods; cannot reach the MI of {detail}",
        )
    partial = [p for p in pods if p.reachable and p.state == PARTIAL]
    if (failed and listening) or partial:
        parts = []
        if failed:
            parts.append("failed on " + "; ".join(f"{p.pod}: {p.error or 'failed'}" for p in _sorted(failed)))
        if partial:
            parts.append(
                "not on every worker of " + "; ".join(f"{p.pod}: {p.error}" for p in _sorted(partial))
            )
        return Condition(
            READY,
            "False",
            "PartiallyListening",
            f"listening on {len(listening)}/{total} proxy pods; " + "; ".join(parts),
        )
    if failed:
        detail = "; ".join(f"{p.pod}: {p.error or 'failed'}" for p in sorted(failed, key=lambda p: p.pod))
        return Condition(READY, "False", "BindFailed", f"no proxy pod could bind the socket: {detail}")
    if not pending:
        return Condition(
            READY,
            "False",
            "AddressAbsent",
            f"the address is on the node of none of the {total} proxy pods ({_names(absent)}); put it on a "
            "node, or set spec.freebind for a floating address",
        )
    return Condition(
        READY,
        "False",
        "Pending",
        f"listening on {len(listening)}/{total} proxy pods; waiting for {_names(pending)}",
    )


def conditions(outcome: Outcome) -> list[Condition]:
    """Accepted, ResolvedRefs (with spec.tls), Programmed, Ready."""
    refs = [outcome.refs.condition()] if outcome.refs is not None else []
    if not outcome.accepted:
        reason, message = outcome.accepted_reason, outcome.accepted_message
        return [
            Condition(ACCEPTED, "False", reason, message),
            *refs,
            Condition(PROGRAMMED, "False", reason, "not written to the database: " + message),
            Condition(READY, "False", reason, "not served: " + message),
        ]
    accepted = Condition(ACCEPTED, "True", "Accepted", outcome.accepted_message or "spec is valid")
    if not outcome.programmed:
        reason, message = outcome.programmed_reason, outcome.programmed_message
        if reason == INVALID_CERTIFICATE_REF:  # no certificate to serve: ResolvedRefs is the first to fix
            return [
                accepted,
                *refs,
                Condition(PROGRAMMED, "False", reason, "not written to the database: " + message),
                Condition(READY, "False", reason, "not served: " + message),
            ]
        return [
            accepted,
            *refs,
            Condition(PROGRAMMED, "False", reason, message),
            Condition(READY, "False", reason, "cannot confirm the socket: " + message),
        ]
    programmed = Condition(
        PROGRAMMED, "True", "Programmed", outcome.programmed_message or "row written to the sockets table"
    )
    ready = _ready(outcome.pods)
    if outcome.refs is not None and not outcome.refs.resolved and ready.status == "True":
        ready = Condition(
            READY,
            ready.status,
            ready.reason,
            f"{ready.message}, with the last good certificate (see {RESOLVED_REFS})",
        )
    if outcome.advertised_pending:
        ready = Condition(
            READY, "False", "AdvertisedAddressPending", f"{outcome.advertised_pending}; {ready.message}"
        )
    return [accepted, *refs, programmed, ready]


def refused(reason: str, message: str, refs: Refs | None = None) -> Outcome:
    return Outcome(False, reason, message, refs=refs)


def unresolved(accepted_message: str, refs: Refs) -> Outcome:
    """Accepted, but no certificate to serve: nothing is written for the socket."""
    return Outcome(
        True,
        accepted_message=accepted_message,
        programmed=False,
        programmed_reason=refs.reason,
        programmed_message=refs.message,
        refs=refs,
    )


# Refusals that stand while the database is down: what held the endpoint or the slots still does, and the
# object must not flap to Accepted because the table cannot be read for a while.
STANDING_REFUSALS = ("EndpointConflict", "CapacityExceeded")


def standing_refusal(previous_accepted: Mapping[str, Any] | None) -> Outcome | None:
    if (
        previous_accepted
        and previous_accepted.get("status") == "False"
        and previous_accepted.get("reason") in STANDING_REFUSALS
    ):
        return refused(str(previous_accepted["reason"]), str(previous_accepted.get("message", "")))
    return None


def database_down(
    error: str, pods: Sequence[PodResult], reason: str = "DatabaseUnavailable", refs: Refs | None = None
) -> Outcome:
    """The spec is fine but nothing could be checked or written: the proxies keep what they have. `reason`
    other than DatabaseUnavailable: the database answered but refused our write for that reason."""
    if reason == "DatabaseUnavailable":
        accepted = "spec is valid (endpoint conflicts unchecked: database unavailable)"
        message = f"the proxy database is unavailable ({error}); retrying"
    else:
        accepted, message = "spec is valid", error
    return Outcome(
        True,
        accepted_message=accepted,
        programmed=False,
        programmed_reason=reason,
        programmed_message=message,
        pods=pods,
        refs=refs,
    )


DATABASE_UNAVAILABLE = "DatabaseUnavailable"


def deletion_blocked(previous: Sequence[Mapping[str, Any]] | None, error: str) -> list[Condition]:
    """Deleted, but the row cannot be removed because the database is down: the finalizer stays, and
    Programmed (then Ready, as the chain goes) says why. Accepted stays as it was: the spec did not change."""
    kept = [
        Condition(ACCEPTED, str(c.get("status")), str(c.get("reason")), str(c.get("message") or ""))
        for c in previous or ()
        if isinstance(c, Mapping) and c.get("type") == ACCEPTED
    ][:1]
    message = (
        f"deleting: the row cannot be removed, the proxy database is unavailable ({error}); the finalizer "
        "stays until it is removed, and the proxies keep serving the socket meanwhile"
    )
    return [
        *kept,
        Condition(PROGRAMMED, "False", DATABASE_UNAVAILABLE, message),
        Condition(READY, "False", DATABASE_UNAVAILABLE, "cannot confirm the socket: " + message),
    ]


def merge(
    previous: Sequence[Mapping[str, Any]] | None,
    new: Sequence[Condition],
    generation: int,
    now: str,
) -> tuple[list[dict[str, Any]], list[Condition]]:
    """metav1.Condition dicts, keeping lastTransitionTime unless status changed; also the conditions whose
    status or reason changed (each worth an Event)."""
    old = {c.get("type"): c for c in previous or () if isinstance(c, Mapping)}
    out: list[dict[str, Any]] = []
    changed: list[Condition] = []
    for cond in new:
        prior = old.get(cond.type)
        same_status = prior is not None and prior.get("status") == cond.status
        if not same_status or prior is None or prior.get("reason") != cond.reason:
            changed.append(cond)
        out.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message[:32768],
                "observedGeneration": generation,
                "lastTransitionTime": (
                    str(prior.get("lastTransitionTime")) if same_status and prior is not None else now
                ),
            }
        )
    return out, changed
