"""An active pool worker's wait on its UDP sockets: the loop each datagram goes through (see `udp_loop.py`).

Compiled with mypyc, like the SIP core (setup.py): this loop runs once per datagram, and interpreted it cost
a few microseconds a datagram more than uvloop's, which a pool of one worker runs (docs/benchmarks.md). The
same source runs interpreted when the proxy is installed without a compiler."""

from __future__ import annotations

import mmap
import os
import select
import time
from collections.abc import Callable

from sipproxy.shared.udp_pool import HEARTBEAT

# Falling behind: the sockets were readable again right after each of this many messages in a row...
RECRUIT_STREAK = 16
# ...over at least this long (a burst that one worker clears at once recruits nobody).
RECRUIT_AFTER = 0.002
RETIRE_AFTER = 1.0
# A standby worker calls the pool stuck after STALL_AFTER (udp_loop.py) without a beat: stamping at most
# this often is plenty, and spares a write per datagram.
BEAT_EVERY = 0.005


class ActiveWait:
    """The pool's sockets in an EPOLLEXCLUSIVE epoll, and what an active worker knows about keeping up."""

    def __init__(self, recruit_fd: int, heartbeat: mmap.mmap, always_active: bool) -> None:
        self.ep = select.epoll()
        self.readers: dict[int, Callable[[], None]] = {}
        self.recruit_fd = recruit_fd
        self.heartbeat = heartbeat
        self.always_active = always_active
        self.active = always_active
        # Set (by the event loop) when a datagram's handling scheduled work on the loop: `serve` then
        # returns to the loop instead of waiting on.
        self.loop_has_work = False
        self.recruits = 0  # how often this worker called for help
        self._streak = 0
        self._busy_since = 0.0
        self._last_beat = 0.0
        self.behind_at = time.monotonic()

    def add_reader(self, fd: int, on_readable: Callable[[], None]) -> None:
        self.readers[fd] = on_readable
        self.ep.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)

    def remove_reader(self, fd: int) -> None:
        if self.readers.pop(fd, None) is not None:
            self.ep.unregister(fd)

    def serve(self, deadline: float) -> list[tuple[int, int]]:
        """Read datagrams until the event loop has something to do; `deadline` is a monotonic time, or
        negative for none. Returns the (fd, events) that are not the pool's sockets (other descriptors of
        the worker share this epoll), or [] at the deadline, when work was scheduled on the loop, or when
        this worker is no longer needed (`active` is then False)."""
        self.loop_has_work = False
        ep = self.ep
        readers = self.readers
        while True:
            now = time.monotonic()
            ready = ep.poll(0)
            if ready:
                # Readable again right away: a message arrived while the last one was handled.
                self._streak += 1
                if self._streak == 1:
                    self._busy_since = now
                elif self._streak >= RECRUIT_STREAK and now - self._busy_since >= RECRUIT_AFTER:
                    self._streak = 0
                    self.behind_at = now
                    self.recruits += 1
                    os.eventfd_write(self.recruit_fd, 1)
            else:
                self._streak = 0
                wait = -1.0 if deadline < 0 else max(0.0, deadline - now)
                if not self.always_active:
                    wait = RETIRE_AFTER if wait < 0 else min(wait, RETIRE_AFTER)
                ready = ep.poll(wait)
                now = time.monotonic()
            others: list[tuple[int, int]] = []
            served = False
            for fd, ev in ready:
                reader = readers.get(fd)
                if reader is not None:
                    reader()
                    served = True
                else:
                    others.append((fd, ev))
            if served and now - self._last_beat >= BEAT_EVERY:
                self._last_beat = now
                HEARTBEAT.pack_into(self.heartbeat, 0, now)
            if not self.always_active and now - self.behind_at > RETIRE_AFTER:
                self.active = False  # not needed: back to standby
                return others
            if others or self.loop_has_work:
                return others
            if deadline >= 0 and now >= deadline:
                return others
