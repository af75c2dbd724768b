"""Traffic counters of one socket: kept per socket in each worker, sent to the supervisor, summed there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SocketCounters:
    rx_packets: int = 0
    rx_bytes: int = 0
    fwd_packets: int = 0
    fwd_bytes: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    # INVITE requests sent out of the socket (new calls, and their retransmissions: a stateless proxy cannot
    # tell them apart): what "calls per second" is made of.
    fwd_invites: int = 0

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def to_wire(self) -> list[Any]:
        """What the control protocol carries:
        [rx_packets, rx_bytes, fwd_packets, fwd_bytes, drops, fwd_invites]."""
        return [
            self.rx_packets,
            self.rx_bytes,
            self.fwd_packets,
            self.fwd_bytes,
            self.drops,
            self.fwd_invites,
        ]

    @classmethod
    def from_wire(cls, data: object) -> SocketCounters:
        """The inverse of `to_wire`; raises ValueError naming what is wrong."""
        if not isinstance(data, list) or len(data) != 6:
            raise ValueError("counters must be a list of 6 items")
        numbers = [*data[:4], data[5]]
        drops = data[4]
        if not all(_count(n) for n in numbers):
            raise ValueError("counters: packets and bytes must be integers >= 0")
        if not isinstance(drops, dict) or not all(isinstance(k, str) and _count(v) for k, v in drops.items()):
            raise ValueError("counters: drops must map reasons to integers >= 0")
        return cls(numbers[0], numbers[1], numbers[2], numbers[3], dict(drops), numbers[4])

    def add(self, other: SocketCounters) -> None:
        self.rx_packets += other.rx_packets
        self.rx_bytes += other.rx_bytes
        self.fwd_packets += other.fwd_packets
        self.fwd_bytes += other.fwd_bytes
        self.fwd_invites += other.fwd_invites
        for reason, n in other.drops.items():
            self.drops[reason] = self.drops.get(reason, 0) + n


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
