"""Socket slots: `max_sockets` exist from start, handed out with OpenSIPS' FIFO rotation.

A new socket takes the next free slot after the one handed out last, going round in a circle, so a freed
slot is reused only after every other free one (a stale reference to a removed socket does not soon point
at a new one)."""

from __future__ import annotations


class Slots:
    def __init__(self, max_sockets: int) -> None:
        if max_sockets < 1:
            raise ValueError("max_sockets must be >= 1")
        self.size = max_sockets
        self._used: set[int] = set()
        self._last = -1

    @property
    def used(self) -> int:
        return len(self._used)

    @property
    def free(self) -> int:
        return self.size - len(self._used)

    def allocate(self) -> int | None:
        """The next free slot after the last handed out, or None when all are taken."""
        for step in range(1, self.size + 1):
            slot = (self._last + step) % self.size
            if slot not in self._used:
                self._used.add(slot)
                self._last = slot
                return slot
        return None

    def release(self, slot: int) -> None:
        self._used.discard(slot)
