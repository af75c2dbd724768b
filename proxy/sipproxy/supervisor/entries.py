"""The sockets the supervisor knows of, listening or failed, and what a reload did to them."""

from __future__ import annotations

from dataclasses import dataclass
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
