"""The handover mechanisms compared at the socket level, before one was chosen for the proxy.

An old process serves a bound socket; a new one takes over; the old one closes its socket. What is lost in the
moment of the close, by mechanism:

- `reuseport`: the new process binds its own socket with SO_REUSEPORT (the old one has it too); the old one
  closes its socket without reading what is queued in it.
- `reuseport-drain`: the same, but the old process reads (UDP) or accepts (TCP) until its queue is empty,
  then closes: what arrives between the last empty read and the close is still lost.
- `shared`: the new process gets the old one's socket itself (the same open file description, as SCM_RIGHTS
  passes it; here inherited through fork); the old one closes its descriptor, the socket and its queue live
  on in the new process.

UDP: a sender spreads numbered datagrams over 16 source ports (SO_REUSEPORT hashes the 4-tuple) at a fixed
rate; lost = sent - read by either process. TCP: clients connect in a loop; each accepted connection gets one
byte; lost = connections that were reset or closed without their byte.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import socket
import struct
import time
from dataclasses import asdict, dataclass
from typing import Any

HOST = "127.0.0.1"
MECHANISMS = ("reuseport", "reuseport-drain", "shared")
SOURCES = 16
_ID = struct.Struct("!Q")
_ctx = multiprocessing.get_context("fork")
_Conn = multiprocessing.connection.Connection


@dataclass(frozen=True)
class Trial:
    transport: str
    mechanism: str
    sent: int
    lost: int
    old_served: int
    new_served: int


def _bound(transport: str, reuseport: bool, port: int = 0) -> socket.socket:
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    s = socket.socket(socket.AF_INET, kind)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if transport == "udp":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    else:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((HOST, port))
    if transport == "tcp":
        s.listen(1024)
    return s


def _serve_one(transport: str, sock: socket.socket, got: set[int], work: float) -> bool:
    """Read one datagram or accept one connection (then spend `work` seconds on it, as a proxy spends CPU on
    each message); False when nothing was waiting."""
    try:
        if transport == "udp":
            data = sock.recv(64)
            got.add(_ID.unpack_from(data)[0])
        else:
            conn, _ = sock.accept()
            with conn:
                conn.setblocking(True)
                conn.sendall(b"1")
            got.add(len(got))
    except (BlockingIOError, InterruptedError):
        return False
    end = time.perf_counter() + work
    while time.perf_counter() < end:
        pass
    return True


def _server(
    inherited: socket.socket | None,
    transport: str,
    sock: socket.socket | None,
    port: int,
    reuseport: bool,
    stop: multiprocessing.connection.Connection,
    drain: bool,
    work: float,
    report: multiprocessing.connection.Connection,
) -> None:
    if inherited is not None and inherited is not sock:
        inherited.close()  # fork gave every child the old socket: only its servers may hold it
    if sock is None:
        sock = _bound(transport, reuseport, port)
        report.send("bound")
    sock.settimeout(0.01)
    got: set[int] = set()
    while not stop.poll():
        with contextlib.suppress(TimeoutError):
            _serve_one(transport, sock, got, work)
    if drain:
        sock.setblocking(False)
        while _serve_one(transport, sock, got, work):
            pass
    sock.close()
    report.send(len(got) if transport == "tcp" else sorted(got))


def _udp_sender(
    inherited: socket.socket,
    port: int,
    rate: int,
    seconds: float,
    report: multiprocessing.connection.Connection,
) -> None:
    inherited.close()
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(SOURCES)]
    total = int(rate * seconds)
    t0 = time.monotonic()
    for i in range(total):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        senders[i % SOURCES].sendto(_ID.pack(i) + b"x" * 400, (HOST, port))
    report.send(total)


def _tcp_clients(
    inherited: socket.socket,
    port: int,
    rate: int,
    seconds: float,
    report: multiprocessing.connection.Connection,
) -> None:
    inherited.close()
    total = int(rate * seconds)
    failed = 0
    pending: list[socket.socket] = []
    t0 = time.monotonic()
    for i in range(total):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(5)
        try:
            c.connect((HOST, port))
            pending.append(c)
        except OSError:
            failed += 1
            c.close()
        # Judge the older connections as they are answered, keeping few open.
        while len(pending) > 64:
            failed += _judge(pending.pop(0))
    for c in pending:
        failed += _judge(c)
    report.send((total, failed))


def _judge(c: socket.socket) -> int:
    try:
        ok = c.recv(1) == b"1"
    except OSError:
        ok = False
    c.close()
    return 0 if ok else 1


def trial(transport: str, mechanism: str, rate: int, seconds: float, work: float) -> Trial:
    reuseport = mechanism != "shared"
    old = _bound(transport, reuseport)
    port = int(old.getsockname()[1])
    stop_old_r, stop_old_w = _ctx.Pipe(duplex=False)
    stop_new_r, stop_new_w = _ctx.Pipe(duplex=False)
    old_rep_r, old_rep_w = _ctx.Pipe(duplex=False)
    new_rep_r, new_rep_w = _ctx.Pipe(duplex=False)
    load_r, load_w = _ctx.Pipe(duplex=False)
    drain = mechanism == "reuseport-drain"
    p_old = _ctx.Process(
        target=_server, args=(None, transport, old, port, True, stop_old_r, drain, work, old_rep_w)
    )
    p_old.start()
    load_fn = _udp_sender if transport == "udp" else _tcp_clients
    p_load = _ctx.Process(target=load_fn, args=(old, port, rate, seconds, load_w))
    p_load.start()
    time.sleep(seconds / 3)
    # The new process: its own socket in the group, or the old socket itself.
    p_new = _ctx.Process(
        target=_server,
        args=(old, transport, None if reuseport else old, port, True, stop_new_r, True, work, new_rep_w),
    )
    p_new.start()
    old.close()  # only the servers hold it now
    if reuseport:
        new_rep_r.recv()
    time.sleep(seconds / 6)  # both serve
    stop_old_w.send(True)
    old_result = old_rep_r.recv()
    sent_info = load_r.recv()
    time.sleep(0.5)
    stop_new_w.send(True)
    new_result = new_rep_r.recv()
    for p in (p_old, p_new, p_load):
        p.join(10)
    if transport == "udp":
        sent = int(sent_info)
        received = set(old_result) | set(new_result)
        return Trial(transport, mechanism, sent, sent - len(received), len(old_result), len(new_result))
    total, failed = sent_info
    return Trial(transport, mechanism, int(total), int(failed), int(old_result), int(new_result))


def run_all(rounds: int, udp_rate: int, tcp_rate: int, seconds: float, work: float) -> dict[str, Any]:
    trials: list[Trial] = []
    for _ in range(rounds):
        for transport, rate in (("udp", udp_rate), ("tcp", tcp_rate)):
            for mechanism in MECHANISMS:
                t = trial(transport, mechanism, rate, seconds, work)
                print(
                    f"  sockets {t.transport} {t.mechanism:16s} sent {t.sent:6d} lost {t.lost:4d} "
                    f"(old served {t.old_served}, new {t.new_served})",
                    flush=True,
                )
                trials.append(t)
    summary = []
    for transport in ("udp", "tcp"):
        for mechanism in MECHANISMS:
            mine = [t for t in trials if t.transport == transport and t.mechanism == mechanism]
            summary.append(
                {
                    "transport": transport,
                    "mechanism": mechanism,
                    "handovers": len(mine),
                    "with_loss": sum(1 for t in mine if t.lost),
                    "lost_total": sum(t.lost for t in mine),
                    "lost_max": max((t.lost for t in mine), default=0),
                    "sent_total": sum(t.sent for t in mine),
                }
            )
    return {"trials": [asdict(t) for t in trials], "summary": summary}
