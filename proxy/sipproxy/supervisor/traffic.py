"""Where traffic arrives: per socket, how many messages this proxy received and when the count last grew.

The workers count every message (shared/counters.py) but keep no clock on the hot path; the supervisor sees
their counts whenever it collects them (every `TRAFFIC_CHECK_SECONDS`, and for each `get_statistics` or
/metrics), so "when" is the first look that saw the count higher, at most that long after the message. For a
floating address served with free bind on several nodes, the pod whose count grows is the one the address is
on; the operator shows it in status.listeners.

`sockets_list` says, per bound socket, `received` (the count) and `receiving` (the count grew within the last
`RECEIVING_SECONDS`): a yes/no that stays put while traffic flows, so listings compare equal from one call to
the next, judged with this proxy's own clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

RECEIVING_SECONDS = 60.0


@dataclass(frozen=True)
class Seen:
    received: int  # messages received on the socket since the proxy started
    grew_at: float | None  # monotonic time of the first look that saw `received` higher; None: nothing yet


class Traffic:
    def __init__(self) -> None:
        self._seen: dict[str, Seen] = {}

    def observe(self, received: Mapping[str, int], now: float) -> None:
        """`received`: socket label (udp:10.0.0.1:5060) -> messages received, as the workers count them."""
        for label, count in received.items():
            prior = self._seen.get(label)
            if prior is None:
                self._seen[label] = Seen(count, now if count else None)
            elif count != prior.received:
                # A count that went down is a dead worker's share lost to a restart: still a change.
                self._seen[label] = Seen(count, now if count > prior.received else prior.grew_at)

    def of(self, label: str) -> Seen | None:
        return self._seen.get(label)


def receiving(seen: Seen, now: float) -> bool:
    """Did messages arrive within the last RECEIVING_SECONDS (as far as the looks can tell)?"""
    return seen.grew_at is not None and now - seen.grew_at <= RECEIVING_SECONDS
