"""No input, however broken or large, makes the SIP core raise (issue 3, "Bad input").

`SipEngine.process` is `handle` without its catch-all, so an exception here is a real bug, not one the
safety net would hide.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sipproxy.sip.engine import Listener, Outcome, SipEngine
from sipproxy.sip.framing import FramingError, StreamFramer, error_reply_for_stream
from tests.unit.sip.support import TCP4, UAC, UDP4, StaticListeners, answer, engine, one, request

DATA = Path(__file__).resolve().parents[2] / "data" / "rfc4475"
SEEDS = ("wsinv", "longreq", "mpart01", "badinv01", "escruri", "transports", "bcast")


def _samples() -> list[tuple[str, bytes]]:
    eng = engine()
    forwarded = one(eng.handle(request(body=b"v=0\r\n"), UDP4, UAC)).data
    samples = [(name, (DATA / f"{name}.dat").read_bytes()) for name in SEEDS]
    samples += [("invite", request(body=b"v=0\r\n")), ("response", answer(forwarded, body=b"x"))]
    return samples


def _check(outcome: Outcome) -> None:
    assert isinstance(outcome, Outcome)
    for send in outcome.sends:
        assert isinstance(send.data, bytes) and send.data
        assert 0 < send.port <= 65535


@pytest.mark.parametrize(("name", "data"), _samples(), ids=[n for n, _ in _samples()])
def test_truncated_at_every_offset(name: str, data: bytes) -> None:
    eng = engine(routes=[{"match": {}, "forward": "sip:127.0.0.1:5070"}])
    for cut in range(len(data) + 1):
        _check(eng.process(data[:cut], UDP4, UAC))
        _check(eng.process(data[:cut], TCP4, UAC, connection=object()))


@pytest.mark.parametrize(("name", "data"), _samples(), ids=[n for n, _ in _samples()])
def test_random_byte_flips(name: str, data: bytes) -> None:
    rng = random.Random(f"sipsockets-{name}")
    eng = engine()
    specials = b'\r\n :;,<>"@[]/=\x00\xff'
    for _ in range(400):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(mutated))
            mutated[pos] = rng.choice(specials) if rng.random() < 0.6 else rng.randrange(256)
        _check(eng.process(bytes(mutated), UDP4, ("127.0.0.10", rng.randint(1, 65535))))


def test_responses_built_from_our_own_forwarding_survive_mutation() -> None:
    """Mutations of responses whose top Via IS ours reach the deepest response code paths."""
    eng = engine()
    forwarded = one(
        eng.handle(
            request(via="SIP/2.0/TCP 127.0.0.10:5061;rport;branch=z9hG4bK-f"), TCP4, UAC, connection=object()
        )
    ).data
    response = answer(forwarded, body=b"body")
    rng = random.Random("responses")
    for _ in range(1500):
        mutated = bytearray(response)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.choice(b'\r\n :;,<>"=[]0z')
        _check(eng.process(bytes(mutated), UDP4, ("127.0.0.1", 5080)))


def test_huge_headers_and_many_values() -> None:
    eng = engine()
    _check(eng.process(request(extra=["X-Big: " + "a" * 60000]), UDP4, UAC))
    many_vias = [f"Via: SIP/2.0/UDP 127.0.0.{i % 250}:5060;branch=z9hG4bK{i}" for i in range(2000)]
    _check(eng.process(request(extra=many_vias), UDP4, UAC))
    one_line = "Via: " + ", ".join(f"SIP/2.0/UDP h{i};branch=z9hG4bK{i}" for i in range(3000))
    _check(eng.process(request(extra=[one_line]), UDP4, UAC))
    routes = "Route: " + ", ".join(f"<sip:127.0.0.1:5060;lr;n={i}>" for i in range(3000))
    _check(eng.process(request(extra=[routes]), UDP4, UAC))
    _check(eng.process(b"INVITE " + b"sip:" + b"a" * 70000 + b"@h SIP/2.0\r\n\r\n", UDP4, UAC))
    _check(eng.process(b"\r\n" * 40000, UDP4, UAC))
    _check(eng.process(b"SIP/2.0 200 OK\r\n" + b"v: x\r\n" * 5000 + b"\r\n", UDP4, UAC))


def test_stream_framer_never_raises_anything_but_framing_error() -> None:
    rng = random.Random("framer")
    for name, data in _samples():
        for _ in range(60):
            framer = StreamFramer(max_headers=4096, max_message=8192)
            stream = bytearray(data * 3)
            for _ in range(rng.randint(0, 6)):
                stream[rng.randrange(len(stream))] = rng.randrange(256)
            pos = 0
            try:
                while pos < len(stream):
                    step = rng.randint(1, 300)
                    framer.feed(bytes(stream[pos : pos + step]))
                    pos += step
            except FramingError as exc:
                assert exc.reason in {
                    "missing_content_length",
                    "bad_content_length",
                    "headers_too_large",
                    "message_too_large",
                }, name
                reply = error_reply_for_stream(framer.pending, exc.reason)
                assert reply is None or reply.startswith(b"SIP/2.0 400 ")


def test_an_internal_error_is_a_drop_not_an_exception(caplog: pytest.LogCaptureFixture) -> None:
    """The safety net of `handle`: a listener view that fails (a runtime bug) costs one message, logged."""

    class BrokenView:
        def all(self) -> list[Listener]:
            raise RuntimeError("listener view broke")

        def by_tag(self, tag: str) -> Listener | None:
            return None

    eng = SipEngine([], StaticListeners([UDP4]))
    eng.state.listeners = BrokenView()
    eng.state._index_time -= 10  # let the engine try a refresh for the unknown socket
    stranger = Listener("udp", "127.0.0.77", 5060)
    with caplog.at_level("ERROR"):
        out = eng.handle(request(), stranger, UAC)
    assert out == Outcome([], "internal_error")
    assert "SIP engine failed" in caplog.text


def test_numbers_anywhere_replaced_by_extreme_values() -> None:
    """Ports, rport, CSeq, Max-Forwards, Content-Length and status codes at and beyond their limits."""
    import re

    eng = engine()
    forwarded = one(eng.handle(request(via="SIP/2.0/UDP 127.0.0.10:5061;rport;branch=z9hG4bK-n"), UDP4, UAC))
    samples = [request(body=b"v=0\r\n"), forwarded.data, answer(forwarded.data, body=b"x")]
    extremes = [
        b"0",
        b"00",
        b"65535",
        b"65536",
        b"99999",
        b"4294967295",
        b"4294967296",
        b"9" * 30,
        b"-1",
        b"",
    ]
    rng = random.Random("numbers")
    for sample in samples:
        spans = [m.span() for m in re.finditer(rb"\d+", sample)]
        for _ in range(300):
            start, end = rng.choice(spans)
            mutated = sample[:start] + rng.choice(extremes) + sample[end:]
            _check(eng.process(mutated, UDP4, UAC))
            _check(eng.process(mutated, UDP4, ("127.0.0.1", 5080)))
