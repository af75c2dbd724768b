"""The UDP worker's event loop: a datagram wakes one worker, and only as many workers wait as the load needs.

Every worker of a UDP pool (the `use_workers` of a static socket, or the `sockets_mgm` pool serving every
dynamic UDP socket) holds the same bound sockets. uvloop registers them in its epoll without EPOLLEXCLUSIVE,
so each datagram woke every idle worker of the pool; a worker here runs the standard asyncio loop on this
selector instead, which registers the pool's sockets with EPOLLEXCLUSIVE (the kernel wakes one waiting
worker) and reads their datagrams itself, inside `select`, without the loop's per-callback dispatch (which
cost about 7 us per datagram, measured by bench/udp_receive.py).

Waking one worker per datagram is not enough: a 180 and the 200 right behind it would still wake two
workers (the first is busy with the 180), doubling the wake-ups and racing the two messages. So a pool keeps
only the workers the load needs in the wait:

- The pool's first worker is always *active*: its epoll holds the pool's sockets, and it waits on them.
- The others start on *standby*: they wait on a second epoll holding everything but the pool's sockets,
  plus the pool's recruit eventfd. A datagram never wakes them.
- An active worker that finds its sockets still readable after every message for a while (it falls behind)
  writes the recruit eventfd: one standby worker wakes and becomes active (EPOLLEXCLUSIVE again, so one).
- An extra active worker that has not fallen behind for `RETIRE_AFTER` goes back to standby.
- Two standby workers (members 1 and 2) also look every `STANDBY_CHECK` for datagrams waiting while no
  active worker has read any for `STALL_AFTER` (the pool's heartbeat, a shared page every active worker
  stamps): one takes over from an active worker that is stuck or stopped. The other standby workers sleep
  until called, so an idle pool of 8 costs 8 wake-ups a second, not 28.

The other descriptors of the worker (its control channel, relay socket, TCP connections it opened) are in
both epolls and go through asyncio as usual.
"""

from __future__ import annotations

import asyncio
import contextvars
import mmap
import os
import select
import selectors
import time
from collections.abc import Callable, Mapping
from typing import Any

from sipproxy.shared.udp_pool import HEARTBEAT, PoolFds
from sipproxy.worker.pool_active import ActiveWait

STANDBY_CHECK = 0.25
STALL_AFTER = 0.1

_READ_EVENTS = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR


class PoolState:
    """This worker's view of its pool's shared descriptors (`sipproxy.shared.udp_pool`)."""

    def __init__(self, fds: PoolFds) -> None:
        self.recruit_fd = fds.recruit
        self.heartbeat = mmap.mmap(fds.heartbeat, HEARTBEAT.size)

    def last_beat(self) -> float:
        return float(HEARTBEAT.unpack_from(self.heartbeat, 0)[0])


class PoolSelector(selectors.BaseSelector):
    def __init__(self, pool: PoolState, always_active: bool, watches: bool = True) -> None:
        """`watches`: this standby worker looks for a stuck pool (two of a pool do: every check is a wake-up
        of an idle process, and two watchers are enough that one stuck worker cannot hide another)."""
        self.pool = pool
        self.watches = watches
        self.activations = 0  # how often it left standby
        self._map: dict[int, selectors.SelectorKey] = {}
        # The active side: the pool's sockets (and asyncio's descriptors) and the loop every datagram goes
        # through, compiled (pool_active.py).
        self.waiting = ActiveWait(pool.recruit_fd, pool.heartbeat, always_active)
        self._active_ep = self.waiting.ep
        self._standby_ep = select.epoll()
        self._standby_ep.register(pool.recruit_fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)

    @property
    def active(self) -> bool:
        return self.waiting.active

    @property
    def recruits(self) -> int:
        return self.waiting.recruits

    # --- the pool's sockets ----------------------------------------------------------------------------

    def add_datagram_reader(self, fd: int, on_readable: Callable[[], None]) -> None:
        """Serve `fd`: `on_readable` reads one datagram (or nothing) each time it is called."""
        self.waiting.add_reader(fd, on_readable)

    def remove_datagram_reader(self, fd: int) -> None:
        self.waiting.remove_reader(fd)

    # --- selectors.BaseSelector, for everything asyncio watches -----------------------------------------

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else int(fileobj.fileno())
        if fd in self._map:
            raise KeyError(f"{fileobj!r} (fd {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        mask = (select.EPOLLIN if events & selectors.EVENT_READ else 0) | (
            select.EPOLLOUT if events & selectors.EVENT_WRITE else 0
        )
        self._active_ep.register(fd, mask)
        self._standby_ep.register(fd, mask)
        self._map[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else int(fileobj.fileno())
        key = self._map.pop(fd)
        for ep in (self._active_ep, self._standby_ep):
            try:
                ep.unregister(fd)
            except OSError:
                pass  # closed before it was unregistered: the kernel dropped it already
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        self.unregister(fileobj)
        return self.register(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map

    def close(self) -> None:
        self._active_ep.close()
        self._standby_ep.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Wait for asyncio's descriptors; datagrams of the pool's sockets are read meanwhile."""
        deadline = -1.0 if timeout is None or timeout < 0 else time.monotonic() + timeout
        waiting = self.waiting
        while True:
            if waiting.active:
                ready = waiting.serve(deadline)
                if ready:
                    return self._keys(ready)
                if waiting.active or waiting.loop_has_work:
                    return []
                # retired to standby: wait on there
            else:
                waiting.loop_has_work = False
                now = time.monotonic()
                events = self._select_standby(-1.0 if deadline < 0 else max(0.0, deadline - now))
                if events is not None:
                    return events
                if waiting.loop_has_work:
                    return []
            if deadline >= 0 and time.monotonic() >= deadline:
                return []

    def _keys(self, ready: list[tuple[int, int]]) -> list[tuple[selectors.SelectorKey, int]]:
        events: list[tuple[selectors.SelectorKey, int]] = []
        for fd, ev in ready:
            key = self._map.get(fd)
            if key is not None:
                events.append((key, _selector_events(ev)))
        return events

    def _select_standby(self, remaining: float) -> list[tuple[selectors.SelectorKey, int]] | None:
        check = STANDBY_CHECK if self.watches else -1.0
        wait = check if remaining < 0 else (remaining if check < 0 else min(remaining, check))
        ready = self._standby_ep.poll(wait)
        events: list[tuple[selectors.SelectorKey, int]] = []
        called = False
        for fd, ev in ready:
            if fd == self.pool.recruit_fd:
                try:
                    os.eventfd_read(fd)
                    called = True
                except BlockingIOError:
                    pass  # another standby worker answered this call
            else:
                key = self._map.get(fd)
                if key is not None:
                    events.append((key, _selector_events(ev)))
        if not called and not ready and self.watches and self._active_ep.poll(0):
            called = time.monotonic() - self.pool.last_beat() > STALL_AFTER
        if called:
            self.waiting.active = True
            self.activations += 1
            self.waiting.behind_at = time.monotonic()
        return events if events else None


def _selector_events(ev: int) -> int:
    return (selectors.EVENT_READ if ev & _READ_EVENTS else 0) | (
        selectors.EVENT_WRITE if ev & select.EPOLLOUT else 0
    )


class PoolEventLoop(asyncio.SelectorEventLoop):
    """asyncio's loop on a `PoolSelector`. A datagram handled inside `select` may schedule work (a task to
    connect a TCP next hop, a DNS lookup, a timer) that the loop must run or wait for: scheduling tells the
    selector to hand control back instead of waiting on."""

    def __init__(self, selector: PoolSelector) -> None:
        super().__init__(selector)
        self._pool_selector = selector

    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        self._pool_selector.waiting.loop_has_work = True
        return super().call_soon(callback, *args, context=context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        self._pool_selector.waiting.loop_has_work = True
        return super().call_at(when, callback, *args, context=context)
