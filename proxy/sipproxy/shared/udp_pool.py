"""What the workers of one UDP pool share, made by the supervisor and handed to each of them at start.

A UDP pool is the `use_workers` of one static UDP socket, or the `sockets_mgm.processes` workers serving every
dynamic UDP socket. Its workers coordinate through two descriptors (see `sipproxy.worker.udp_loop`):

- the *recruit* eventfd (a semaphore): an active worker that falls behind writes 1, and exactly one standby
  worker takes it and starts serving;
- the *heartbeat* memfd, one page mapped by every worker of the pool: an active worker stamps the monotonic
  time of the last datagram it read, so a standby worker can tell a pool that serves from one that is stuck.

The supervisor keeps both for the life of the pool, so a replaced worker joins the same pool."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

HEARTBEAT = struct.Struct("d")  # CLOCK_MONOTONIC seconds, the same clock in every process of the machine


@dataclass(frozen=True)
class PoolFds:
    recruit: int
    heartbeat: int

    def to_arg(self) -> str:
        return f"{self.recruit},{self.heartbeat}"

    @staticmethod
    def from_arg(text: str) -> PoolFds:
        recruit, _, heartbeat = text.partition(",")
        if not recruit.isdigit() or not heartbeat.isdigit():
            raise ValueError(f"--udp-pool wants RECRUIT_FD,HEARTBEAT_FD, not {text!r}")
        return PoolFds(int(recruit), int(heartbeat))

    def close(self) -> None:
        os.close(self.recruit)
        os.close(self.heartbeat)


def create_pool_fds(name: str) -> PoolFds:
    recruit = os.eventfd(0, os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    heartbeat = os.memfd_create(f"sipproxy-{name}-heartbeat", os.MFD_CLOEXEC)
    os.ftruncate(heartbeat, HEARTBEAT.size)
    return PoolFds(recruit, heartbeat)
