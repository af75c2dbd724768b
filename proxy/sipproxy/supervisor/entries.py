"""The sockets the supervisor knows of, listening or failed, and what a reload did to them."""

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
    state: str = "listening"
    error: str | None = None
    sock: Any = None  # the supervisor's copy of the bound socket
    # Workers that should serve it but did not apply it in time, with the reason, until their replacement
    # has it: the socket listens, but not with every worker ("partial").
    lagging: dict[str, str] = field(default_factory=dict)

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
