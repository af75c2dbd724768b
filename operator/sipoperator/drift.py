"""Does a proxy pod need a `sockets_reload` (pure)? Its listing is compared with what the table says."""

from __future__ import annotations

from collections.abc import Iterable

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
    return table_sockets(listed.entries) != table
