"""Every RFC 4475 section 3 torture message: forwarded, answered with the right error, or dropped.

The expectations follow tests/data/rfc4475/INDEX.tsv; where the RFC leaves a choice ("may", "liberal
element"), the comment says which one the proxy makes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sipproxy.sip.framing import FramingError, StreamFramer
from sipproxy.sip.message import parse_message
from tests.unit.sip.support import TCP4, UDP4, engine

DATA = Path(__file__).resolve().parents[2] / "data" / "rfc4475"
NEXT_HOP = ("127.0.0.1", 5070)
SRC = ("127.0.0.9", 5062)
FORWARD = "forward"

EXPECTED: dict[str, tuple[str, object]] = {
    "wsinv": (FORWARD, ("services.example.com", 5060)),  # in dialog (To tag) with a Route: loose routed
    "intmeth": (FORWARD, NEXT_HOP),
    "esc01": (FORWARD, NEXT_HOP),
    "escnull": (FORWARD, NEXT_HOP),
    "esc02": (FORWARD, NEXT_HOP),
    "lwsdisp": (FORWARD, NEXT_HOP),
    "longreq": (FORWARD, NEXT_HOP),
    "dblreq": (FORWARD, NEXT_HOP),
    "semiuri": (FORWARD, NEXT_HOP),
    "transports": (FORWARD, NEXT_HOP),
    "mpart01": (FORWARD, NEXT_HOP),
    "unreason": ("drop", "response_not_ours"),
    "noreason": ("drop", "response_not_ours"),
    "badinv01": ("reply", 400),
    "clerr": ("reply", 400),
    "ncl": ("reply", 400),
    "scalar02": ("reply", 400),
    "scalarlg": ("drop", "response_not_ours"),
    "quotbal": ("reply", 400),
    "ltgtruri": ("reply", 400),
    "lwsruri": ("reply", 400),
    "lwsstart": ("reply", 400),
    "trws": ("reply", 400),
    "escruri": ("reply", 400),
    "baddate": (FORWARD, NEXT_HOP),  # "should not" reject unless Date matters: it does not to a proxy
    "regbadct": (FORWARD, NEXT_HOP),  # a proxy does not read Contact (liberal choice allowed by the RFC)
    "badaspec": (FORWARD, NEXT_HOP),  # liberal: the To header is never rewritten, so nothing propagates
    "baddn": ("reply", 400),  # unquoted display name with a comma and an unterminated header block
    "badvers": ("reply", 505),
    "mismatch01": ("reply", 400),
    "mismatch02": ("reply", 501),
    "bigcode": ("drop", "parse_error"),
    "badbranch": (FORWARD, NEXT_HOP),  # RFC 2543-style branch derivation for a bare cookie
    "insuf": ("reply", 400),
    "unkscm": ("reply", 416),
    "novelsc": ("reply", 416),
    "unksm2": (FORWARD, NEXT_HOP),
    "bext01": ("reply", 420),
    "invut": (FORWARD, NEXT_HOP),
    "regaut01": (FORWARD, NEXT_HOP),
    "multi01": ("reply", 400),
    "mcl01": ("reply", 400),
    "bcast": ("drop", "response_not_ours"),
    "zeromf": ("reply", 483),
    "cparam01": (FORWARD, NEXT_HOP),
    "cparam02": (FORWARD, NEXT_HOP),
    "regescrt": (FORWARD, NEXT_HOP),
    "sdp01": (FORWARD, NEXT_HOP),
    "inv2543": (FORWARD, NEXT_HOP),
}


def _index() -> list[dict[str, str]]:
    with (DATA / "INDEX.tsv").open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_all_49_vectors_are_covered() -> None:
    names = [row["name"] for row in _index()]
    assert len(names) == 49 == len(set(names))
    assert set(names) == set(EXPECTED)
    assert {p.stem for p in DATA.glob("*.dat")} == set(names)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_vector_over_udp(name: str) -> None:
    data = (DATA / f"{name}.dat").read_bytes()
    eng = engine(routes=[{"match": {}, "forward": "sip:127.0.0.1:5070"}])
    outcome = eng.process(data, UDP4, SRC)  # process: no safety net, an exception fails the test
    kind, detail = EXPECTED[name]
    if kind == "drop":
        assert outcome.sends == [] and outcome.drop_reason == detail
        return
    assert len(outcome.sends) == 1, outcome
    send = outcome.sends[0]
    msg = parse_message(send.data)
    if kind == "reply":
        assert not msg.is_request and msg.status == detail
        assert outcome.drop_reason is not None
        assert send.host == SRC[0]
        return
    assert outcome.drop_reason is None
    assert msg.is_request and (send.host, send.port) == detail
    original = parse_message(data)
    assert msg.method == original.method
    cl = original.first(b"content-length")
    assert msg.body == (original.body[: int(cl)] if cl is not None else original.body)


def test_specific_vector_details() -> None:
    eng = engine(routes=[{"match": {}, "forward": "sip:127.0.0.1:5070"}])

    def run(name: str) -> bytes:
        return eng.process((DATA / f"{name}.dat").read_bytes(), UDP4, SRC).sends[0].data

    # Max-Forwards 0068 decremented; unknown headers and folding kept byte for byte
    wsinv = run("wsinv")
    assert b"MaX-fOrWaRdS: 67\r\n" in wsinv
    assert b"NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n" in wsinv
    assert b"UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n" in wsinv
    # trailing noise after Content-Length 0 is not forwarded
    assert run("dblreq").endswith(b"\r\n\r\n") and b"INVITE sip:joe" not in run("dblreq")
    # the binary multipart body goes out byte-exact (over TCP: the message is over 1300 bytes)
    mpart = (DATA / "mpart01.dat").read_bytes()
    assert run("mpart01").endswith(mpart[mpart.index(b"\r\n\r\n") + 4 :])
    # 420 lists the Proxy-Require options
    assert b"Unsupported: noProxiesSupportThis, norDoAnyProxiesSupportThis\r\n" in run("bext01")
    # the 3515-byte request leaves over TCP
    longreq = eng.process((DATA / "longreq.dat").read_bytes(), UDP4, SRC).sends[0]
    assert longreq.proto == "tcp" and longreq.listener == TCP4


def test_vectors_through_the_stream_framer() -> None:
    """Over TCP the Content-Length rules decide: complete, waiting for more, or connection closed."""
    outcomes: dict[str, object] = {}
    for row in _index():
        framer = StreamFramer()
        try:
            outcomes[row["name"]] = len(framer.feed((DATA / f"{row['name']}.dat").read_bytes()))
        except FramingError as exc:
            outcomes[row["name"]] = (exc.reason, len(exc.messages))
    assert outcomes["ncl"] == ("bad_content_length", 0)
    assert outcomes["mcl01"] == ("bad_content_length", 0)
    assert outcomes["inv2543"] == ("missing_content_length", 0)
    assert outcomes["clerr"] == 0  # body shorter than Content-Length: waits for more data
    assert outcomes["baddn"] == 0  # header block never terminated
    assert outcomes["wsinv"] == 1 and outcomes["longreq"] == 1 and outcomes["mpart01"] == 1
    # Over a stream the "noise" after the REGISTER is a second message, and the 5 octets its body has
    # beyond its Content-Length start a third one without Content-Length: the connection is closed.
    assert outcomes["dblreq"] == ("missing_content_length", 2)
