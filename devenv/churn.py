"""SipSocket churn under faults, and the one check of "everything converged, nothing lost".

Used by tests/e2e/test_reliability.py (short runs, correctness only) and `python -m bench reliability` (the
figures of docs/reliability.md):

- `plan` (pure): a seeded sequence of creates, spec changes (another port) and deletes, each object on an
  address of its own so that no two ever conflict: every object applied is meant to be accepted.
- `Churn`: runs a plan against the API server as a user would, retrying a call the API could not take (an
  API server being restarted) until it is taken.
- `problems` (pure): what differs between the API's objects, the table and each proxy's `sockets_list`:
  the table must hold exactly one owned row per live SipSocket with that object's socket (none lost,
  duplicated or orphaned), every live object must be Ready for its current generation, every deleted one
  gone (its finalizer done), and every proxy must list exactly the table's sockets, all listening.
- `Observer`: gathers those three views and waits for `problems` to be empty.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from devenv.kubeapi import ApiClient, ApiError, Watch, crd_path
from devenv.sipclient import send_options
from sipproxy.shared.db_url import to_sqlalchemy_url

GROUP, VERSION, PLURAL = "sipsockets.io", "v1alpha1", "sipsockets"
OWNERS_TABLE = "sipsockets_owners"


@dataclass(frozen=True)
class Op:
    kind: str  # "create" | "update" | "delete"
    name: str
    address: str
    port: int

    @property
    def socket(self) -> str:
        return f"udp:{self.address}:{self.port}"


def plan(
    count: int,
    seed: int,
    addresses: Iterable[str],
    prefix: str = "c",
    ports: tuple[int, int] = (5070, 5071),
    live: Mapping[str, Op] | None = None,
) -> list[Op]:
    """`count` operations: about half creates, a fifth spec changes (the other port), the rest deletes of a
    live object; the first ones create. `addresses` gives each created object its own address; `live`
    continues a plan whose objects exist already."""
    rng = random.Random(seed)
    source = iter(addresses)
    current: dict[str, Op] = dict(live or {})
    ops: list[Op] = []
    made = 0
    for _ in range(count):
        roll = rng.random()
        if len(current) < 3 or roll < 0.5:
            name = f"{prefix}-{seed}-{made:04d}"
            made += 1
            op = Op("create", name, next(source), ports[0])
        elif roll < 0.7:
            old = current[rng.choice(sorted(current))]
            op = Op("update", old.name, old.address, ports[1] if old.port == ports[0] else ports[0])
        else:
            old = current[rng.choice(sorted(current))]
            op = Op("delete", old.name, old.address, old.port)
        if op.kind == "delete":
            del current[op.name]
        else:
            current[op.name] = op
        ops.append(op)
    return ops


def expected_after(ops: Sequence[Op], live: Mapping[str, Op] | None = None) -> dict[str, Op]:
    """The objects that exist once `ops` are applied, by name."""
    current = dict(live or {})
    for op in ops:
        if op.kind == "delete":
            current.pop(op.name, None)
        else:
            current[op.name] = op
    return current


def manifest(op: Op) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SipSocket",
        "metadata": {"name": op.name},
        "spec": {"protocol": "udp", "address": op.address, "port": op.port},
    }


def _retryable(exc: ApiError) -> bool:
    # Not reachable, being restarted (503), overloaded (429), or a timeout inside it (504).
    return exc.status in (0, 429, 500, 502, 503, 504)


@dataclass
class Churn:
    """Applies a plan through the API like a user who retries what the API could not take."""

    api: ApiClient
    namespace: str
    give_up_after: float = 300.0
    retries: int = 0  # API calls that had to be repeated
    done: int = 0  # operations applied so far

    def path(self, name: str = "") -> str:
        return crd_path(GROUP, VERSION, PLURAL, self.namespace, name)

    def apply(self, op: Op) -> None:
        deadline = time.monotonic() + self.give_up_after
        while True:
            try:
                self._once(op)
                return
            except ApiError as exc:
                if not _retryable(exc) or time.monotonic() > deadline:
                    raise
                self.retries += 1
                time.sleep(0.5)

    def _once(self, op: Op) -> None:
        try:
            if op.kind == "create":
                self.api.request("POST", self.path(), manifest(op))
            elif op.kind == "update":
                patch = {"spec": {"port": op.port}}
                self.api.request("PATCH", self.path(op.name), patch, "application/merge-patch+json")
            else:
                self.api.request("DELETE", self.path(op.name))
        except ApiError as exc:
            # A retried call the API had taken the first time: created already, deleted already.
            if (op.kind, exc.status) in (("create", 409), ("delete", 404)):
                return
            raise

    def run(self, ops: Sequence[Op], rate: float, stop: Callable[[], bool] = lambda: False) -> None:
        """Apply `ops` at about `rate` operations per second (each waits for the API's answer)."""
        t0 = time.monotonic()
        for i, op in enumerate(ops):
            if stop():
                return
            wait = t0 + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.apply(op)
            self.done += 1


# -- the check ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableView:
    rows: list[tuple[int, str, str | None]]  # (id, socket, owner uid or None)
    owners: list[tuple[str, int]]  # (uid, socket_id), dangling ones included


def _condition(body: Mapping[str, Any], ctype: str) -> Mapping[str, Any]:
    for c in (body.get("status") or {}).get("conditions") or ():
        if c.get("type") == ctype:
            return dict(c)
    return {}


def problems(
    objects: Mapping[str, Mapping[str, Any]],
    expected: Mapping[str, str],
    table: TableView | None,
    listings: Mapping[str, Mapping[str, str] | None],
    limit: int = 8,
) -> list[str]:
    """Everything that is not yet as it must end (empty: converged). `objects`: the API's SipSockets by
    name; `expected`: name -> socket text of the objects that must exist; `listings`: proxy pod -> its
    `sockets_list` (socket -> state), None when its MI did not answer."""
    out: list[str] = []
    for name in sorted(set(expected) - set(objects)):
        out.append(f"{name}: missing from the API")
    for name in sorted(set(objects) - set(expected)):
        out.append(f"{name}: still present (deleted? finalizer pending)")
    uid_of: dict[str, str] = {}
    for name in sorted(set(objects) & set(expected)):
        body = objects[name]
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        uid_of[str(meta.get("uid"))] = name
        ready = _condition(body, "Ready")
        if meta.get("deletionTimestamp"):
            out.append(f"{name}: being deleted")
        elif status.get("observedGeneration") != meta.get("generation"):
            out.append(f"{name}: generation {meta.get('generation')} not observed yet")
        elif ready.get("status") != "True":
            out.append(f"{name}: Ready={ready.get('status')} {ready.get('reason')}: {ready.get('message')}")
        elif status.get("socket") != expected[name]:
            out.append(f"{name}: status.socket {status.get('socket')} instead of {expected[name]}")
    if table is None:
        out.append("the table could not be read")
        return out[:limit]
    by_uid: dict[str, list[str]] = {}
    for row_id, socket, uid in table.rows:
        if uid is None:
            out.append(f"row {row_id} ({socket}) has no owner")
        elif uid not in uid_of:
            out.append(f"row {row_id} ({socket}) is owned by {uid}, no live SipSocket (orphan)")
        else:
            by_uid.setdefault(uid, []).append(socket)
    for uid, name in sorted(uid_of.items(), key=lambda kv: kv[1]):
        got = by_uid.get(uid, [])
        if len(got) > 1:
            out.append(f"{name}: {len(got)} rows ({', '.join(got)})")
        elif not got:
            out.append(f"{name}: no row")
        elif got[0] != expected[name]:
            out.append(f"{name}: row {got[0]} instead of {expected[name]}")
    row_ids = {row_id for row_id, _, _ in table.rows}
    for uid, socket_id in table.owners:
        if socket_id not in row_ids:
            out.append(f"owner entry of {uid} names row {socket_id}, which does not exist")
    sockets = sorted(socket for _, socket, _ in table.rows)
    if len(set(sockets)) != len(sockets):
        out.append("the table holds a socket twice")
    for pod, listing in sorted(listings.items()):
        if listing is None:
            out.append(f"proxy {pod}: MI not answering")
            continue
        if sorted(listing) != sockets:
            lost, extra = set(sockets) - set(listing), set(listing) - set(sockets)
            out.append(
                f"proxy {pod}: {len(lost)} table sockets not listed, {len(extra)} listed not in the table"
            )
        bad = sorted(s for s, state in listing.items() if state != "listening")
        if bad:
            out.append(f"proxy {pod}: {len(bad)} sockets not listening ({bad[0]}: {listing[bad[0]]})")
    return out[:limit]


async def _read_table(db_url: str, table: str) -> TableView:
    engine = create_async_engine(to_sqlalchemy_url(db_url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    f"SELECT s.id, s.socket, o.uid FROM {table} s"
                    f" LEFT JOIN {OWNERS_TABLE} o ON o.socket_id = s.id"
                )
            )
            owners = await conn.execute(text(f"SELECT uid, socket_id FROM {OWNERS_TABLE}"))
            return TableView(
                [(int(r[0]), str(r[1]).strip(), r[2]) for r in rows],
                [(str(r[0]), int(r[1])) for r in owners],
            )
    finally:
        await engine.dispose()


def read_table(db_url: str, table: str = "sockets") -> TableView | None:
    """The rows and their owners, read directly (not through the operator's code); None when the database
    does not answer."""
    try:
        return asyncio.run(asyncio.wait_for(_read_table(db_url, table), 10))
    except Exception:  # any database error means "not readable now"
        return None


def sockets_list(mi_url: str, timeout: float = 10.0) -> dict[str, str] | None:
    body = json.dumps({"jsonrpc": "2.0", "method": "sockets_list", "id": 1}).encode()
    req = urllib.request.Request(mi_url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            result = json.loads(resp.read()).get("result")
    except (OSError, urllib.error.URLError, ValueError):
        return None
    items = result.get("Sockets", result) if isinstance(result, dict) else result
    return {str(i["socket"]): str(i.get("state")) for i in items or () if isinstance(i, dict)}


@dataclass
class Observer:
    """The three views of one namespace: the API (a watch), the table, and each proxy's MI."""

    watch: Watch
    db_url: str
    mi_urls: Mapping[str, str]  # proxy pod name -> MI URL
    table: str = "sockets"
    last: list[str] = field(default_factory=list)
    # While waiting: (seconds, how many problems, the first) whenever the count changed.
    history: list[tuple[float, int, str]] = field(default_factory=list)

    def check(self, expected: Mapping[str, Op]) -> list[str]:
        listings = {pod: sockets_list(url) for pod, url in self.mi_urls.items()}
        sockets = {name: op.socket for name, op in expected.items()}
        table = read_table(self.db_url, self.table)
        self.last = problems(self.watch.snapshot(), sockets, table, listings, limit=10_000)
        return self.last

    def wait(self, expected: Mapping[str, Op], timeout: float, interval: float = 0.5) -> float:
        """Seconds until converged; raises TimeoutError naming what was still wrong."""
        t0 = time.monotonic()
        self.history = []
        while self.check(expected):
            elapsed = time.monotonic() - t0
            if not self.history or self.history[-1][1] != len(self.last):
                self.history.append((round(elapsed, 1), len(self.last), self.last[0]))
            if elapsed > timeout:
                raise TimeoutError(f"not converged after {timeout:.0f}s: {'; '.join(self.last[:8])}")
            time.sleep(interval)
        return time.monotonic() - t0


def unanswered(expected: Mapping[str, Op], timeout: float = 2.0) -> list[str]:
    """The expected sockets that do not answer an OPTIONS with 200 (each asked once, then once more)."""
    missing = []
    for op in expected.values():
        for _ in range(2):
            try:
                if send_options(op.address, op.port, timeout=timeout).startswith("SIP/2.0 200"):
                    break
            except (TimeoutError, OSError):
                continue
        else:
            missing.append(op.socket)
    return missing
