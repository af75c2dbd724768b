"""The reload diff: rows match on (proto, host, port, advertised, tag, tos, flags), as in OpenSIPS (and free
bind, ours), except that a row whose socket (proto, host, port, flags, free bind) is running with other
advertised address, tag or ToS is an *update* of that socket, not a removal and an addition: it keeps its open
socket (OpenSIPS closes and rebinds it, losing what arrives meanwhile)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sipproxy.shared.socketspec import SocketSpec

K = TypeVar("K", bound=Hashable)


@dataclass
class Diff(Generic[K]):
    kept: list[K] = field(default_factory=list)  # running sockets left untouched
    removed: list[K] = field(default_factory=list)  # running sockets whose row is gone (or changed)
    added: list[SocketSpec] = field(default_factory=list)  # rows with no identical running socket
    updated: list[tuple[K, SocketSpec]] = field(default_factory=list)  # running socket, its new spec


def diff_sockets(running: dict[K, SocketSpec], wanted: Iterable[SocketSpec]) -> Diff[K]:
    """`running` maps an id to its spec; `wanted` are the parsed rows. Duplicate rows collapse into one; a
    row changed in advertised address, tag or ToS updates its running socket; any other change shows as the
    old socket removed and the new one added."""
    by_key: dict[str, K] = {spec.key: ident for ident, spec in running.items()}
    result: Diff[K] = Diff()
    kept, added = result.kept, result.added
    seen: set[str] = set()
    for spec in wanted:
        key = spec.key
        size = len(seen)
        seen.add(key)
        if len(seen) == size:
            continue  # a duplicate
        ident = by_key.get(key)
        if ident is None:
            added.append(spec)
        else:
            kept.append(ident)
    if len(kept) == len(running):
        return result  # every running socket kept: nothing to remove, no addition is an update
    kept_ids = set(kept)
    gone = {socket_of(running[ident]): ident for ident in running if ident not in kept_ids}
    result.added = []
    for spec in added:
        ident = gone.pop(socket_of(spec), None)
        if ident is None:
            result.added.append(spec)
        else:
            result.updated.append((ident, spec))
    updated = {ident for ident, _ in result.updated}
    result.removed = [ident for ident in running if ident not in kept_ids and ident not in updated]
    return result


def socket_of(spec: SocketSpec) -> tuple[str, str, int, frozenset[str], bool]:
    """What the open socket is: what it is bound to and with which options."""
    return (spec.proto, spec.host, spec.port, spec.flags, spec.freebind)
