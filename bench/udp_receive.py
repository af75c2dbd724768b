"""The receive paths a UDP pool could use, measured on the same load before one was chosen.

N worker processes serve 10 UDP sockets; a sender sends datagrams in back-to-back pairs (as a UAS sends its
180 and 200) at a fixed rate from one source address (one carrier trunk); each worker forwards what it reads
to a sink, which counts pairs that arrive swapped. Per variant: CPU per datagram of the workers (schedstat),
wake-ups per datagram (voluntary context switches), swapped pairs and each worker's share.

- `uvloop`: every worker has a uvloop datagram endpoint on the shared sockets (the proxy before the pool
  loop): each datagram wakes every idle worker.
- `exclusive`: the pool loop (`sipproxy.worker.udp_loop`) with every worker active: EPOLLEXCLUSIVE, one
  wake-up per datagram, but the second datagram of a pair wakes a second worker.
- `pool`: the pool loop as the proxy runs it: member 0 active, the others on standby until it falls behind.
- `reuseport`: an SO_REUSEPORT group per address, each worker its own socket, a classic-BPF program choosing a
  random member per datagram (hashing would pin one source to one worker).

The per-datagram work is a stand-in (split the lines, send on), so the figures compare receive paths, not
the SIP engine."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any

from sipproxy.shared.udp_pool import PoolFds, create_pool_fds
from sipproxy.worker.udp_loop import PoolEventLoop, PoolSelector, PoolState

VARIANTS = ("uvloop", "exclusive", "pool", "reuseport")
HOST = "127.77.200.1"
SINK_HOST = "127.77.200.2"
SENDER_HOST = "127.77.200.3"
SOCKETS = 10
PAYLOAD = (
    b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n" + b"x" * 400
)


@dataclass(frozen=True)
class ReceiveRun:
    variant: str
    workers: int
    rate: int
    sent: int
    received: int
    swapped_pairs: int
    cpu_us_per_datagram: float
    wakeups_per_datagram: float
    shares: list[float]


def _work(data: bytes, out: socket.socket, sink: tuple[str, int]) -> None:
    vias = 0
    for line in data.split(b"\r\n"):
        if line[:3] == b"Via":
            vias += 1
    out.sendto(data, sink)


def _attach_random_selector(sock: socket.socket, members: int) -> None:
    """SO_ATTACH_REUSEPORT_CBPF: `ld rand; mod #members; ret a` (SKF_AD_RANDOM = 56 past SKF_AD_OFF)."""
    prog = [(0x20, 0, 0, (-0x1000 + 56) & 0xFFFFFFFF), (0x94, 0, 0, members), (0x16, 0, 0, 0)]
    code = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(code)
    sock.setsockopt(socket.SOL_SOCKET, 51, struct.pack("HL", len(prog), ctypes.addressof(buf)))


def _bind(port: int, reuseport: bool) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((HOST, port))
    s.setblocking(False)
    return s


def _worker(
    variant: str,
    member: int,
    socks: list[socket.socket],
    fds: PoolFds,
    sink: tuple[str, int],
    pipe: Connection,
) -> None:
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    read = [0]

    async def serve_until_stopped() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        pipe.send("ready")
        await stop.wait()

    if variant in ("uvloop", "reuseport"):
        import uvloop

        class Endpoint(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                read[0] += 1
                _work(data, out, sink)

        async def with_endpoints() -> None:
            loop = asyncio.get_running_loop()
            for s in socks:
                await loop.create_datagram_endpoint(Endpoint, sock=s)
            await serve_until_stopped()

        uvloop.run(with_endpoints())
    else:
        selector = PoolSelector(PoolState(fds), always_active=variant == "exclusive" or member == 0)

        def reader(s: socket.socket) -> Any:
            def read_one() -> None:
                try:
                    data, _ = s.recvfrom(65535)
                except BlockingIOError:
                    return
                read[0] += 1
                _work(data, out, sink)

            return read_one

        for s in socks:
            selector.add_datagram_reader(s.fileno(), reader(s))
        with asyncio.Runner(loop_factory=lambda: PoolEventLoop(selector)) as runner:
            runner.run(serve_until_stopped())
    pipe.send(read[0])


def _on_cpu(pid: int) -> tuple[float, int]:
    """(seconds on CPU, voluntary context switches) of every thread of `pid`."""
    ns = switches = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            ns += int(f.read().split()[0])
        with open(f"/proc/{pid}/task/{task}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    switches += int(line.split()[1])
    return ns / 1e9, switches


def measure(variant: str, workers: int, rate: int, seconds: float, base_port: int) -> ReceiveRun:
    ctx = get_context("fork")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sink.bind((SINK_HOST, 0))
    ports = [base_port + i for i in range(SOCKETS)]
    if variant == "reuseport":
        per_worker = [[_bind(p, True) for p in ports] for _ in range(workers)]
        for s in per_worker[0]:
            _attach_random_selector(s, workers)
    else:
        shared = [_bind(p, False) for p in ports]
        per_worker = [shared] * workers
    fds = create_pool_fds("bench")
    procs, pipes = [], []
    for member in range(workers):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(
            target=_worker, args=(variant, member, per_worker[member], fds, sink.getsockname(), theirs)
        )
        proc.start()
        procs.append(proc)
        pipes.append(ours)
    received = [0, 0]  # datagrams, swapped pairs
    done = threading.Event()

    def drain() -> None:
        sink.settimeout(0.2)
        first_seen: set[int] = set()
        while not done.is_set():
            try:
                data = sink.recv(65535)
            except TimeoutError:
                continue
            received[0] += 1
            pair, second = struct.unpack("!IB", data[:5])
            if pair not in first_seen:
                first_seen.add(pair)
                received[1] += second  # the pair's second datagram came first

    try:
        for pipe in pipes:
            pipe.recv()
        time.sleep(0.5)
        drainer = threading.Thread(target=drain)
        drainer.start()
        before = [_on_cpu(p.pid or 0) for p in procs]
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind((SENDER_HOST, 0))
        pairs = int(rate * seconds / 2)
        t0 = time.monotonic()
        for i in range(pairs):
            target = (HOST, ports[i % SOCKETS])
            sender.sendto(struct.pack("!IB", i, 0) + PAYLOAD, target)
            sender.sendto(struct.pack("!IB", i, 1) + PAYLOAD, target)
            delay = t0 + (i + 1) * 2.0 / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        time.sleep(0.5)
        after = [_on_cpu(p.pid or 0) for p in procs]
        done.set()
        drainer.join()
        for proc in procs:
            os.kill(proc.pid or 0, signal.SIGTERM)
        counts = [pipe.recv() for pipe in pipes]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        fds.close()
        sink.close()
        for group in per_worker if variant == "reuseport" else per_worker[:1]:
            for s in group:
                s.close()
    cpu = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    wakeups = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    total = max(sum(counts), 1)
    return ReceiveRun(
        variant=variant,
        workers=workers,
        rate=rate,
        sent=pairs * 2,
        received=received[0],
        swapped_pairs=received[1],
        cpu_us_per_datagram=cpu / max(received[0], 1) * 1e6,
        wakeups_per_datagram=wakeups / max(received[0], 1),
        shares=[c / total for c in counts],
    )


def describe(run: ReceiveRun) -> str:
    shares = " ".join(f"{s * 100:.0f}" for s in run.shares)
    return (
        f"  {run.variant:9s} {run.workers} workers {run.rate}/s: {run.received}/{run.sent} received,"
        f" {run.swapped_pairs} pairs swapped, {run.cpu_us_per_datagram:.1f} us CPU and"
        f" {run.wakeups_per_datagram:.2f} wake-ups per datagram; shares % {shares}"
    )
