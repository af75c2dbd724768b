"""The UDP pool's event loop, in real processes on one shared socket: a datagram wakes one worker, the
pool's first worker serves alone while it keeps up, and standby workers join when it falls behind."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing import get_context
from multiprocessing.connection import Connection

from sipproxy.shared.udp_pool import PoolFds, create_pool_fds
from sipproxy.worker.udp_loop import PoolEventLoop, PoolSelector, PoolState


def voluntary_switches(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    total += int(line.split()[1])
    return total


def pool_member(fds: PoolFds, member: int, sock: socket.socket, work_s: float, report: Connection) -> None:
    """One worker: serve `sock` through the pool's selector until SIGTERM, then report what it read."""
    selector = PoolSelector(PoolState(fds), always_active=member == 0)
    read = [0]

    def read_one() -> None:
        try:
            sock.recvfrom(65535)
        except BlockingIOError:
            return
        read[0] += 1
        if work_s:
            time.sleep(work_s)

    selector.add_datagram_reader(sock.fileno(), read_one)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        report.send("ready")
        await stop.wait()

    with asyncio.Runner(loop_factory=lambda: PoolEventLoop(selector)) as runner:
        runner.run(main())
    report.send(read[0])


Sender = Callable[[socket.socket, tuple[str, int]], int]


def run_pool(workers: int, send: Sender, work_s: float = 0.0) -> tuple[list[int], list[int], int]:
    """Start the pool, let `send` send datagrams to its socket; (datagrams read per worker, wake-ups per
    worker while sending, datagrams sent)."""
    ctx = get_context("fork")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    fds = create_pool_fds("test")
    procs, pipes = [], []
    for member in range(workers):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=pool_member, args=(fds, member, sock, work_s, theirs))
        proc.start()
        procs.append(proc)
        pipes.append(ours)
    try:
        for pipe in pipes:
            assert pipe.poll(30), "a worker did not start"
            pipe.recv()
        time.sleep(0.3)  # every worker waiting
        before = [voluntary_switches(p.pid or 0) for p in procs]
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent = send(sender, sock.getsockname())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the socket is drained
            time.sleep(0.2)
            try:
                sock.recvfrom(65535, socket.MSG_PEEK)
            except BlockingIOError:
                break
        after = [voluntary_switches(p.pid or 0) for p in procs]
        for proc in procs:
            os.kill(proc.pid or 0, signal.SIGTERM)
        counts = []
        for pipe in pipes:
            assert pipe.poll(30), "a worker did not stop"
            counts.append(pipe.recv())
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        fds.close()
        sock.close()
    return counts, [a - b for a, b in zip(after, before, strict=True)], sent


def paced(count: int, gap: float) -> Sender:
    def send(sender: socket.socket, target: tuple[str, int]) -> int:
        for i in range(count):
            sender.sendto(b"OPTIONS %d" % i, target)
            time.sleep(gap)
        return count

    return send


def test_a_light_load_is_served_by_the_first_worker_alone_with_one_wakeup_per_datagram() -> None:
    counts, wakeups, sent = run_pool(4, paced(200, 0.004))
    assert sum(counts) == sent
    # Without EPOLLEXCLUSIVE and the standby, each datagram woke every idle worker (4 per datagram here).
    # Here a datagram wakes the one worker that reads it; the standby workers only look at the pool a few
    # times a second.
    assert sum(wakeups) < 1.5 * sent, (counts, wakeups)
    assert counts[0] >= 0.9 * sent, counts


def test_a_backlog_brings_standby_workers_in() -> None:
    def burst(sender: socket.socket, target: tuple[str, int]) -> int:
        for i in range(600):
            sender.sendto(b"INVITE %d" % i, target)
        return 600

    # Each datagram takes the worker 2 ms: the first worker falls behind at once.
    counts, _wakeups, sent = run_pool(4, burst, work_s=0.002)
    assert sum(counts) == sent
    assert sum(1 for c in counts if c > 0) >= 2, counts
    assert counts[0] < sent, counts
