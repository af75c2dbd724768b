"""The reload diff, as OpenSIPS does it: rows match on (proto, host, port, advertised, tag, tos, flags)."""

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


def diff_sockets(running: dict[K, SocketSpec], wanted: Iterable[SocketSpec]) -> Diff[K]:
    """`running` maps an id to its spec; `wanted` are the parsed rows. Duplicate rows collapse into one;
    a changed row shows as its old socket removed and the new one added."""
    by_key: dict[object, K] = {spec.key: ident for ident, spec in running.items()}
    result: Diff[K] = Diff()
    seen: set[object] = set()
    for spec in wanted:
        if spec.key in seen:
            continue
        seen.add(spec.key)
        ident = by_key.get(spec.key)
        if ident is None:
            result.added.append(spec)
        else:
            result.kept.append(ident)
    kept = set(result.kept)
    result.removed = [ident for ident in running if ident not in kept]
    return result
