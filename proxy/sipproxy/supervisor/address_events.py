"""Being told when the host's addresses change: an rtnetlink socket subscribed to the IPv4 and IPv6 address
groups, the kernel's own notification (what `ip monitor address` prints). keepalived, a MetalLB-style L2
announcer or an operator's `ip addr add` all end in such a message, so an absent socket is bound within
moments of its address arriving instead of at the next periodic look.

The messages are not parsed: any of them only means "look again", and the look asks the kernel whether each
address can be bound (binding.address_present), which also covers addresses no interface lists (a local
route). A process may subscribe without privileges; where it cannot (no netlink), the periodic look alone
remains."""

from __future__ import annotations

import asyncio
import logging
import socket

log = logging.getLogger("sipproxy.supervisor")

# linux/rtnetlink.h: RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR
_GROUPS = 0x10 | 0x100


class AddressEvents:
    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> bool:
        """Subscribe; False (logged) when the kernel refused."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except (OSError, AttributeError) as exc:
            log.warning("no address change notifications (%s); absent sockets are retried periodically", exc)
            return False
        try:
            sock.setblocking(False)
            sock.bind((0, _GROUPS))
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(sock.fileno(), self._readable)
        except OSError as exc:
            sock.close()
            log.warning("no address change notifications (%s); absent sockets are retried periodically", exc)
            return False
        self._sock = sock
        return True

    def _readable(self) -> None:
        assert self._sock is not None
        for _ in range(1000):  # drain what is queued; more will wake us again
            try:
                if not self._sock.recv(65536):
                    break
            except BlockingIOError:
                break
            except OSError:
                # ENOBUFS: notifications were lost. Whatever they said, looking again covers it.
                continue
        self.changed.set()

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
