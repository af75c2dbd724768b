"""The worker's traffic counters, per socket while it exists, then kept by socket label."""

from __future__ import annotations

from sipproxy.shared.counters import SocketCounters


class WorkerCounters:
    """Reported by socket label, so that a socket removed and added again continues its series and the report
    does not grow with every socket ever added."""

    def __init__(self) -> None:
        # Never replaced, only changed: the sender binds it once and reads it per message.
        self.by_sid: dict[int, SocketCounters] = {}
        self.labels: dict[int, str] = {}
        self.retired: dict[str, SocketCounters] = {}

    def for_sid(self, sid: int) -> SocketCounters:
        c = self.by_sid.get(sid)
        if c is None:
            c = self.by_sid[sid] = SocketCounters()
        return c

    def name(self, sid: int, label: str) -> None:
        self.labels[sid] = label

    def retire(self, sid: int) -> None:
        """The socket is gone: its counts are kept under its label, and nothing more of it (every reload that
        adds a socket gives it a new sid)."""
        counters = self.by_sid.pop(sid, None)
        label = self.labels.pop(sid, f"socket#{sid}")
        if counters is not None:
            self.retired.setdefault(label, SocketCounters()).add(counters)

    def snapshot(self) -> dict[str, SocketCounters]:
        by_label: dict[str, SocketCounters] = {}
        for label, c in self.retired.items():
            by_label.setdefault(label, SocketCounters()).add(c)
        for sid, c in self.by_sid.items():
            by_label.setdefault(self.labels.get(sid, f"socket#{sid}"), SocketCounters()).add(c)
        return by_label
