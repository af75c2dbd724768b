"""Micro-benchmark of the SIP core hot path: `SipEngine.handle` on the messages of one call.

    python -m bench.sip_hotpath [--seconds 2] [--gap-us 800] [--responses]

Builds the messages SIPp's built-in uac/uas scenarios exchange through a stateless proxy (INVITE, 180,
200, ACK, BYE, 200; SIPp-like headers and SDP), then times `handle` on each kind in a loop and on whole
calls. Pure CPU in one process: no sockets, so it isolates parsing, routing and rewriting from I/O and
from the runtime. The figures are messages (or calls) per second of one core.

With `--gap-us N` each message is timed alone (thread CPU time) with a sleep of N microseconds before the
next, as a worker sees them at a moderate call rate (200 calls/s of this call flow is one message every
830 us). A process that sleeps between messages finds its caches cold and pays much more per message
than in a tight loop; this mode shows that cost, the one the end-to-end CPU benchmark sees.

With `--responses` it lists which path of the engine each of a set of responses takes (the call's, RFC
4475's, shapes the C scanner declines, random mutations of the call's) and times `handle` on each kind in a
loop and, with `--gap-us`, one at a time.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sipproxy.sip import scanned_path
from sipproxy.sip.engine import Listener, SipEngine
from sipproxy.sip.routing import parse_routes
from sipproxy.sip.scan import SCAN_RESPONSE

PROXY = Listener("udp", "127.0.0.1", 5060)
PROXY6 = Listener("udp", "::1", 5060)
# A socket behind NAT: what it advertises is not the address a next hop sees the request come from.
PROXY_NAT = Listener("udp", "127.0.0.3", 5060, advertised_host="sbc.example.net", advertised_port=5099)
RFC4475 = Path(__file__).resolve().parents[1] / "tests" / "data" / "rfc4475"
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


def via_per_line(response: bytes) -> bytes:
    """The response with each Via value on its own line (as most UAs other than SIPp write them)."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    out: list[bytes] = []
    for line in lines:
        if line.lower().startswith(b"via:"):
            out += [b"Via: " + value.strip() for value in line.split(b":", 1)[1].split(b",")]
        else:
            out.append(line)
    return b"\r\n".join(out) + b"\r\n\r\n" + body


def response_shapes(engine: SipEngine) -> list[tuple[str, bytes, tuple[str, int]]]:
    """Responses of the call flow and of shapes the C scanner does not read, each with its source."""
    shapes = [(name, data, src) for name, data, src in call_messages(engine) if data.startswith(b"SIP/")]
    ringing = shapes[0][1]
    shapes.append(("180, Vias on own lines", via_per_line(ringing), UAS))
    v6_invite = uac_request("INVITE", 1, "z9hG4bK-6-0", body=SDP).replace(b"127.0.0.1:5061", b"[::1]:5061")
    v6_forwarded = engine.handle(v6_invite, PROXY6, ("::1", 5061)).sends[0].data
    shapes.append(
        ("180 to an IPv6 UA", via_per_line(uas_response(v6_forwarded, "180 Ringing")), ("::1", 5062))
    )
    nat_forwarded = (
        engine.handle(uac_request("INVITE", 1, "z9hG4bK-n-0", body=SDP), PROXY_NAT, UAC).sends[0].data
    )
    nat = via_per_line(uas_response(nat_forwarded, "180 Ringing"))
    # The UAS saw the request come from 127.0.0.3, not from the sent-by of our Via (RFC 3261 18.2.1).
    nat = nat.replace(b";sk=", b";received=127.0.0.3;sk=", 1)
    shapes.append(("180, received on our Via", nat, UAS))
    quoted = via_per_line(ringing).replace(b"z9hG4bK-1-0", b'z9hG4bK-1-0;x="a b"', 1)
    shapes.append(("180, quoted param in 2nd Via", quoted, UAS))
    for path in sorted(RFC4475.glob("*.dat")):
        data = path.read_bytes()
        if data.startswith(b"SIP/"):
            shapes.append((f"RFC 4475 {path.stem}", data, UAS))
    return shapes


def response_path(engine: SipEngine, data: bytes) -> str:
    """Which path of `engine.process` answers this response."""
    scanned = SCAN_RESPONSE(data) if SCAN_RESPONSE is not None else None
    if scanned is not None and scanned_path.response(engine.state, scanned) is not None:
        return "scanned"
    return "general"


def mutated(data: bytes, rng: random.Random) -> bytes:
    """One to three bytes of `data` replaced, deleted or inserted, as the unit tests' fuzzing does."""
    out = bytearray(data)
    specials = b'\r\n \t:;,<>"=[]@?0zvVtT\x00\xff'
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(out))
        choice = rng.random()
        if choice < 0.6:
            out[at] = rng.choice(specials)
        elif choice < 0.8:
            del out[at]
        else:
            out.insert(at, rng.choice(specials))
    return bytes(out)


def responses_report(engine: SipEngine, args: argparse.Namespace) -> int:
    shapes = response_shapes(engine)
    print("Responses: the path of SipEngine.process that answers each, and handle's cost")
    header = f"{'response':<32} {'path':<8} {'loop us':>8}"
    print(header + (f" {'cold us':>8}" if args.gap_us > 0 else ""))
    cold: dict[str, float] = {}
    if args.gap_us > 0:
        cold = cold_costs(engine, shapes, min(args.gap_us, 100_000.0), max(args.seconds, 1.0) * 3)
    for name, data, src in shapes:
        per_s = rate(lambda d=data, s=src: engine.handle(d, PROXY, s), args.seconds)  # type: ignore[misc]
        line = f"{name:<32} {response_path(engine, data):<8} {1e6 / per_s:>8.1f}"
        print(line + (f" {cold[name]:>8.1f}" if cold else ""))
    rng = random.Random("sip_hotpath")
    counts: dict[str, int] = {}
    flow = [data for _, data, _ in shapes[:3]]
    flow += [via_per_line(data) for data in flow]
    for _ in range(3000):
        path = response_path(engine, mutated(rng.choice(flow), rng))
        counts[path] = counts.get(path, 0) + 1
    print(
        "3,000 random mutations of the call's responses (Vias on one line or not):",
        ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
    )
    return 0


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
    parser.add_argument(
        "--responses", action="store_true", help="the path each of a set of responses takes, and its cost"
    )
    args = parser.parse_args(argv)
    sockets = [PROXY, Listener("tcp", "127.0.0.1", 5060)]
    if args.responses:
        return responses_report(SipEngine(parse_routes([]), Sockets([*sockets, PROXY6, PROXY_NAT])), args)
    engine = SipEngine(parse_routes([]), Sockets(sockets))
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
