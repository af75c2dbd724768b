"""The response fast path (`SipEngine._response_fast`) is an optimisation only: whenever it answers, the
general path (`_response` on the parsed message) gives exactly the same outcome, and the usual responses
do take it."""

from __future__ import annotations

import random

import pytest

from sipproxy.sip.engine import Outcome, SipEngine
from sipproxy.sip.message import parse_message
from tests.unit.sip.support import TCP4, UAC, UDP4, answer, engine, one, request

UAS = ("127.0.0.1", 5080)


def _general(eng: SipEngine, data: bytes) -> Outcome:
    return eng._response(parse_message(data))


def _responses(eng: SipEngine) -> list[bytes]:
    udp = one(eng.handle(request(body=b"v=0\r\n"), UDP4, UAC)).data
    tcp = one(
        eng.handle(
            request(via="SIP/2.0/TCP 127.0.0.10:5061;rport;branch=z9hG4bK-f"), TCP4, UAC, connection=object()
        )
    ).data
    rport = one(eng.handle(request(via="SIP/2.0/UDP uac.example.com:5061;rport;branch=z9hG4bK-r"), UDP4, UAC))
    return [
        answer(udp, 180, "Ringing"),
        answer(udp, 200, "OK", body=b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"),
        answer(tcp, 486, "Busy Here"),
        answer(rport.data, 200, "OK"),
    ]


def test_usual_responses_take_the_fast_path_with_the_general_paths_outcome() -> None:
    eng = engine()
    for data in _responses(eng):
        fast = eng._response_fast(data)
        assert fast is not None, data
        assert fast == _general(eng, data)
        assert fast.sends and fast.drop_reason is None


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"\r\nVia: ", b"\r\nv: "),  # compact name: fine, still fast
        (b"\r\nVia: ", b"\r\nVIA: "),
        (b"\r\nVia: ", b"\r\nVia : "),  # space before the colon: general path
        (b"Content-Length: 0", b"Content-Length: 0\r\nl: 0"),  # two lengths
        (b"Content-Length: 0", b"Content-Length: 5"),  # longer than the body
        (b"Content-Length: 0", b"Content-Length: x"),
        (b"Content-Length: 0\r\n", b""),  # none at all
        (b"CSeq: 1 INVITE", b"CSeq: 99999999999 INVITE"),
        (b"CSeq: 1 INVITE", b"CSeq: INVITE"),
        (b"\r\nCall-ID", b"\r\n Call-ID"),  # folded line
        (b"\r\nCall-ID", b"\r\nbroken line\r\nCall-ID"),
        (b";branch=z9hG4bKsps", b";branch=z9hG4bKother"),  # not our branch
        (b";branch=z9hG4bKsps", b";rport;branch=z9hG4bKsps"),  # ours, written differently
        (b"SIP/2.0 180", b"SIP/2.0 099"),
        (b"SIP/2.0 180", b"SIP/3.0 180"),
    ],
)
def test_edits_either_agree_or_leave_the_message_to_the_general_path(old: bytes, new: bytes) -> None:
    eng = engine()
    data = _responses(eng)[0]
    assert old in data
    edited = data.replace(old, new, 1)
    fast = eng._response_fast(edited)
    general = eng.process(edited, UDP4, UAS)
    assert fast is None or fast == general


def test_random_mutations_never_disagree() -> None:
    eng = engine()
    rng = random.Random("fast-path")
    specials = b'\r\n :;,<>"=[]0zvV'
    taken = 0
    for data in _responses(eng):
        for _ in range(1500):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                mutated[rng.randrange(len(mutated))] = rng.choice(specials)
            sample = bytes(mutated)
            fast = eng._response_fast(sample)
            if fast is None:
                continue
            taken += 1
            assert fast == _general(eng, sample), sample
    assert taken > 1000  # most single-byte edits of a response keep it on the fast path
