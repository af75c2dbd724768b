"""The sockets the supervisor knows of, and what a reload did to them.

A dynamic socket is bound (`state` "listening") or not: "failed" (with the reason), "absent" (its address is
not on this host: retried when addresses change, see supervisor.py) or "unselected" (placed on other nodes,
shared/placement.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sipproxy.shared.socketspec import SocketSpec
from sipproxy.supervisor.db_reader import Row


@dataclass
class Entry:
    """A socket the proxy knows of: listening, or failed with a reason."""

    sid: int
    kind: str  # "static" | "dynamic"
    spec: SocketSpec | None
    row: Row | None = None
    slot: int | None = None
    state: str = "listening"  # "listening" | "failed" | "absent" | "unselected"
    error: str | None = None
    sock: Any = None  # the supervisor's copy of the bound socket
    # Workers that should serve it but did not apply it in time, with the reason, until their replacement
    # has it: the socket listens, but not with every worker ("partial").
    lagging: dict[str, str] = field(default_factory=dict)
    # Is the address on this host (as of the last look)? None: not looked at. A bound socket whose address
    # left the host stays bound (it serves again when the address returns) but is reported absent.
    address_local: bool | None = None
    note: str | None = None  # a warning for the listing (e.g. placed on nodes while the node is unknown)

    @property
    def reported_state(self) -> str:
        """The state `sockets_list` shows: a bound socket without free bind whose address has left the host
        is absent there."""
        spec = self.spec
        if (
            self.state == "listening"
            and self.kind == "dynamic"
            and self.address_local is False
            and spec is not None
            and not spec.freebind
        ):
            return "absent"
        return self.state

    @property
    def label(self) -> str:
        if self.spec is not None:
            return self.spec.socket_str
        return (self.row.socket if self.row and self.row.socket else "") or "?"


@dataclass
class ReloadResult:
    added: list[Entry]
    removed: list[Entry]
    kept: list[Entry]
    failed: list[Entry]
    updated: list[Entry] = field(default_factory=list)  # same socket, new advertised address, tag or ToS
    absent: list[Entry] = field(default_factory=list)  # address not on this host: bound when it appears
    unselected: list[Entry] = field(default_factory=list)  # placed on other nodes
