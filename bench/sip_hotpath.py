"""Micro-benchmark of the SIP core hot path: `SipEngine.handle` on the messages of one call.

    python -m bench.sip_hotpath [--seconds 2] [--gap-us 800]

Builds the messages SIPp's built-in uac/uas scenarios exchange through a stateless proxy (INVITE, 180,
200, ACK, BYE, 200; SIPp-like headers and SDP), then times `handle` on each kind in a loop and on whole
calls. Pure CPU in one process: no sockets, so it isolates parsing, routing and rewriting from I/O and
from the runtime. The figures are messages (or calls) per second of one core.

With `--gap-us N` each message is timed alone (thread CPU time) with a sleep of N microseconds before the
next, as a worker sees them at a moderate call rate (200 calls/s of this call flow is one message every
830 us). A process that sleeps between messages finds its caches cold and pays much more per message
than in a tight loop; this mode shows that cost, the one the end-to-end CPU benchmark sees.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable

from sipproxy.sip.engine import Listener, SipEngine
from sipproxy.sip.routing import parse_routes

PROXY = Listener("udp", "127.0.0.1", 5060)
UAC = ("127.0.0.1", 5061)
UAS = ("127.0.0.1", 5062)
SDP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


class Sockets:
    def __init__(self, listeners: Iterable[Listener]) -> None:
        self._listeners = list(listeners)

    def all(self) -> Iterable[Listener]:
        return self._listeners

    def by_tag(self, tag: str) -> Listener | None:
        return next((lst for lst in self._listeners if lst.tag == tag), None)


def uac_request(method: str, cseq: int, branch: str, to_tag: str = "", body: bytes = b"") -> bytes:
    lines = [
        f"{method} sip:service@127.0.0.1:5062 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch={branch}",
        "From: sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag001",
        f"To: service <sip:service@127.0.0.1:5062>{to_tag}",
        "Call-ID: 1-12345@127.0.0.1",
        f"CSeq: {cseq} {method}",
        "Contact: sip:sipp@127.0.0.1:5061",
        "Max-Forwards: 70",
        "Subject: Performance Test",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def uas_response(forwarded: bytes, status: str, body: bytes = b"") -> bytes:
    """SIPp's uas answer: every Via value on one line (as SIPp writes `[last_Via:]`), To tag added,
    Record-Route copied."""
    head, _, _ = forwarded.partition(b"\r\n\r\n")
    keep = (b"from:", b"to:", b"call-id:", b"cseq:", b"record-route:")
    lines = [b"SIP/2.0 " + status.encode()]
    received = head.split(b"\r\n")[1:]
    vias = [line.split(b":", 1)[1].strip() for line in received if line.lower().startswith(b"via:")]
    lines.append(b"Via: " + b", ".join(vias))
    for line in received:
        if line.lower().startswith(keep):
            lines.append(line + b";tag=2SIPpTag012" if line.lower().startswith(b"to:") else line)
    lines.append(b"Contact: <sip:127.0.0.1:5062;transport=UDP>")
    if body:
        lines.append(b"Content-Type: application/sdp")
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def call_messages(engine: SipEngine) -> list[tuple[str, bytes, tuple[str, int]]]:
    invite = uac_request("INVITE", 1, "z9hG4bK-1-0", body=SDP)
    fwd_invite = engine.handle(invite, PROXY, UAC).sends[0].data
    to_tag = ";tag=2SIPpTag012"
    ack = uac_request("ACK", 1, "z9hG4bK-1-5", to_tag)
    bye = uac_request("BYE", 2, "z9hG4bK-1-7", to_tag)
    fwd_bye = engine.handle(bye, PROXY, UAC).sends[0].data
    return [
        ("INVITE", invite, UAC),
        ("180", uas_response(fwd_invite, "180 Ringing"), UAS),
        ("200 INVITE", uas_response(fwd_invite, "200 OK", SDP), UAS),
        ("ACK", ack, UAC),
        ("BYE", bye, UAC),
        ("200 BYE", uas_response(fwd_bye, "200 OK"), UAS),
    ]


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls of `fn` per CPU-second of this process, best of three runs of `seconds / 3` each.

    CPU time rather than wall time: on a shared machine a descheduled process would otherwise look slow.
    """
    best = 0.0
    batch = 500
    for _ in range(3):
        done = 0
        start = time.process_time()
        while True:
            for _ in range(batch):
                fn()
            done += batch
            elapsed = time.process_time() - start
            if elapsed >= seconds / 3:
                break
        best = max(best, done / elapsed)
    return best


def cold_costs(
    engine: SipEngine, messages: list[tuple[str, bytes, tuple[str, int]]], gap_us: float, seconds: float
) -> dict[str, float]:
    """Median thread-CPU microseconds of `handle` per kind of message, with a sleep before each."""
    samples: dict[str, list[int]] = {name: [] for name, _, _ in messages}
    clock = time.thread_time_ns
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, data, src in messages:
            time.sleep(gap_us / 1e6)
            start = clock()
            engine.handle(data, PROXY, src)
            samples[name].append(clock() - start)
    return {name: statistics.median(values) / 1000 for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default 2)")
    parser.add_argument(
        "--gap-us", type=float, default=0.0, help="sleep before each message, in us (default 0: a loop)"
    )
    args = parser.parse_args(argv)
    engine = SipEngine(parse_routes([]), Sockets([PROXY, Listener("tcp", "127.0.0.1", 5060)]))
    messages = call_messages(engine)
    for name, data, src in messages:
        out = engine.handle(data, PROXY, src)
        if out.drop_reason is not None or len(out.sends) != 1:
            print(f"setup error: {name} -> {out}", file=sys.stderr)
            return 1
    version = platform.python_version()
    if args.gap_us > 0:
        gap = min(args.gap_us, 100_000.0)
        costs = cold_costs(engine, messages, gap, max(args.seconds, 1.0) * 3)
        print(f"SIP core, one message at a time with {gap:.0f} us of sleep before each (median thread CPU)")
        print(f"{'message':<12} {'us/msg':>8}")
        for name, us in costs.items():
            print(f"{name:<12} {us:>8.1f}")
        print(f"{'whole call':<12} {sum(costs.values()):>8.1f} us")
        return 0
    print(f"SIP core hot path: SipEngine.handle, messages per CPU-second of one core, Python {version}")
    print(f"{'message':<12} {'bytes':>6} {'msg/s':>10} {'us/msg':>8}")
    for name, data, src in messages:
        per_s = rate(lambda d=data, s=src: engine.handle(d, PROXY, s), args.seconds)  # type: ignore[misc]
        print(f"{name:<12} {len(data):>6} {per_s:>10,.0f} {1e6 / per_s:>8.1f}")

    def one_call() -> None:
        for _, data, src in messages:
            engine.handle(data, PROXY, src)

    calls = rate(one_call, args.seconds)
    print(f"{'whole call':<12} {'':>6} {calls:>10,.0f} calls/s ({calls * len(messages):,.0f} msg/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
