"""Fuzz harness 1: the SIP engine, scanned path against general path, with the C scanner sanitized.

Each input is one received message (the raw bytes of a datagram or of one framed stream message). It goes
through two engines with the same routes and listeners, one with the scanner (`SipEngine(...)`) and one
without (`scan=False`), and the harness fails when

- `SipEngine.process` raises on either: `handle` would have needed its safety net, which is a bug;
- the two outcomes differ: whenever the scanned path answers, the general path must give exactly the same
  outcome (docs/architecture.md); when the scan declines, the scanned engine falls back to the general path
  and the outcomes are trivially equal, so one comparison covers both cases;
- the sanitized scanner reads or writes out of bounds or hits undefined behaviour: ASan/UBSan abort the
  process, libFuzzer saves the input.

Setup (fuzz/run.py does all of it; run harnesses through it, not directly):

- the SIP core is imported from its `.py` sources (fuzz/purecore.py), not the mypyc-compiled modules, and
  instrumented by atheris, so coverage counts the engine's Python branches (and, with comparisons traced,
  libFuzzer learns the header names and values the code compares against);
- `sipproxy.sip._scan` is the scanner built with clang and `-fsanitize=address,undefined,fuzzer-no-link`
  into build/fuzz/ext (fuzz/sanitized.py), so coverage also counts the scanner's C branches;
- the process runs with atheris' `asan_with_fuzzer.so` in LD_PRELOAD and `PYTHONMALLOC=malloc`;
- `SIPSOCKETS_FUZZ_PYTHON_COVERAGE` (`--python-coverage`) chooses how the core runs: instrumented sources
  (`full`, `branches`), plain sources (`off`), or the mypyc-compiled modules with only the scanner replaced
  (`compiled`: the code the proxy runs, the fastest; a long run's later phase).

The configuration an input runs under is chosen from its length, so the inputs stay plain SIP messages
(seeds are captures, reproducers are readable) while mutations still reach every configuration: the low
bit picks the route set (catch-all rules to loopback, or none: the Request-URI decides), the next values
the listener it arrived on (UDP, TCP with a connection, an advertised socket with a tag). Everything the
engine may send goes to loopback or to a name it never resolves (the engine does no I/O).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import atheris

from fuzz.purecore import check_pure_core, use_pure_core
from fuzz.sanitized import scanner_path

SCANNER = scanner_path()
# fuzz/run.py --python-coverage: "full" (branches and comparisons), "branches", "off" (sources, not
# instrumented) or "compiled" (the mypyc-compiled core, as the proxy runs it: the mode of a long run's later
# phase). With the last two the fuzzer is guided by the scanner's C branches alone, many times faster.
PYTHON_COVERAGE = os.environ.get("SIPSOCKETS_FUZZ_PYTHON_COVERAGE", "full")
SOURCES = PYTHON_COVERAGE != "compiled"
if PYTHON_COVERAGE in ("off", "compiled"):
    use_pure_core(SCANNER, sources=SOURCES)
else:
    dataflow = PYTHON_COVERAGE == "full"
    use_pure_core(SCANNER, lambda code: atheris.patch_code(code, dataflow))

from sipproxy.sip import scanned_path  # noqa: E402
from sipproxy.sip.engine import Listener, Outcome, SipEngine  # noqa: E402
from sipproxy.sip.routing import parse_routes  # noqa: E402
from sipproxy.sip.scan import SCAN_REQUEST, SCAN_RESPONSE  # noqa: E402

check_pure_core(SCANNER, SOURCES)

UDP4 = Listener("udp", "127.0.0.1", 5060)
TCP4 = Listener("tcp", "127.0.0.1", 5060)
UDP6 = Listener("udp", "::1", 5060)
TCP6 = Listener("tcp", "::1", 5062)
CORE = Listener("udp", "127.0.0.2", 5070, tag="core")
PUBLIC = Listener(
    "udp", "127.0.0.3", 5060, advertised_host="sbc.example.net", advertised_port=5099, tag="pub"
)
LISTENERS = (UDP4, TCP4, UDP6, TCP6, CORE, PUBLIC)
ARRIVALS = (UDP4, TCP4, PUBLIC, UDP4, UDP6, CORE)
UAC = ("127.0.0.10", 5061)
UAS = ("127.0.0.1", 5080)
ROUTES: list[object] = [
    {"match": {"ruri": "^sip:\\+44"}, "forward": "sip:127.0.0.1:5090;transport=tcp"},
    {"match": {"tag": "pub"}, "forward": "sip:127.0.0.2:5071", "socket": "core"},
    {"match": {"ruri": "reply"}, "reply": 404},
    {"match": {}, "forward": "sip:127.0.0.1:5070"},
]


class StaticListeners:
    """The runtime's ListenerView over a fixed set."""

    def __init__(self) -> None:
        self.listeners = list(LISTENERS)

    def all(self) -> list[Listener]:
        return list(self.listeners)

    def by_tag(self, tag: str) -> Listener | None:
        return next((lst for lst in self.listeners if lst.tag == tag), None)


class Stream:
    """A stream connection as the engine sees one: any object, identified by the engine's weak map."""


def engines(routes: object) -> tuple[SipEngine, SipEngine]:
    rules = parse_routes(routes)
    view = StaticListeners()
    # One flow key for both: the tokens they write in a stream request's Via must be the same.
    key = bytes(range(32))
    return SipEngine(rules, view, flow_key=key), SipEngine(rules, view, scan=False, flow_key=key)


PAIRS = (engines(ROUTES), engines(None))
CONNECTION = Stream()


class Disagreement(AssertionError):
    pass


def check(data: bytes) -> Outcome:
    scanned, general = PAIRS[len(data) & 1]
    listener = ARRIVALS[(len(data) >> 1) % len(ARRIVALS)]
    src = UAS if data[:4] == b"SIP/" else UAC
    conn = CONNECTION if listener.proto == "tcp" else None
    fast = scanned.process(data, listener, src, conn)
    slow = general.process(data, listener, src, conn)
    if fast != slow:
        raise Disagreement(f"scanned path: {fast!r}\ngeneral path: {slow!r}")
    return fast


def test_one_input(data: bytes) -> None:
    check(data)


def scanned_path_answers(data: bytes) -> bool:
    """Whether the scanned path (not the general path behind it) answered `data` in `check`."""
    scanned, _ = PAIRS[len(data) & 1]
    listener = ARRIVALS[(len(data) >> 1) % len(ARRIVALS)]
    body = data.lstrip(b"\r\n")
    if body[:4] == b"SIP/":
        found = SCAN_RESPONSE(body) if SCAN_RESPONSE is not None else None
        return found is not None and scanned_path.response(scanned.state, found) is not None
    found_request = SCAN_REQUEST(body, UAC[0], UAC[1]) if SCAN_REQUEST is not None else None
    if found_request is None:
        return False
    conn = CONNECTION if listener.proto == "tcp" else None
    return scanned_path.request(scanned.state, body, found_request, listener, UAC, conn) is not None


def corpus_stats(folder: Path) -> None:
    """What a corpus holds: how many inputs the scanned path answered, the rest by the general path's
    outcome. Every input is checked as while fuzzing."""
    counts: Counter[str] = Counter()
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        outcome = check(data)
        counts["inputs"] += 1
        counts["responses" if data.lstrip(b"\r\n")[:4] == b"SIP/" else "requests"] += 1
        if scanned_path_answers(data):
            counts["scanned path"] += 1
        else:
            counts[f"general path: {outcome.drop_reason or 'forwarded'}"] += 1
    for name, count in sorted(counts.items(), key=lambda item: -item[1]):
        print(f"{count:8d}  {name}")


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--stats":
        corpus_stats(Path(argv[2]))
        return
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
