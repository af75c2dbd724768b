"""The C scanner (`_scan.c`, sipproxy.sip.scan) is an optimisation only: with it the engine gives, for
every message, exactly the outcome it gives without it, the usual messages do take the scanned paths, and
no input makes the scanner fail."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from sipproxy.sip import scanned_path
from sipproxy.sip.engine import Listener, Outcome, SipEngine
from sipproxy.sip.routing import parse_routes
from sipproxy.sip.scan import SCAN_REQUEST, SCAN_RESPONSE
from tests.unit.sip.support import (
    CORE,
    PUBLIC,
    TCP4,
    TCP6,
    UAC,
    UDP4,
    UDP6,
    StaticListeners,
    answer,
    one,
    request,
)

pytestmark = pytest.mark.skipif(
    os.environ.get("SIPSOCKETS_PURE_PYTHON") == "1", reason="installed without the C scanner on purpose"
)

DATA = Path(__file__).resolve().parents[2] / "data" / "rfc4475"
LISTENERS = (UDP4, TCP4, UDP6, TCP6, CORE, PUBLIC)
UAS = ("127.0.0.1", 5080)
ROUTE_SETS: list[object] = [
    None,
    [{"match": {}, "forward": "sip:127.0.0.1:5070"}],
    [
        {"match": {"ruri": "^sip:\\+44"}, "forward": "sip:127.0.0.1:5090;transport=tcp"},
        {"match": {"tag": "pub"}, "forward": "sip:127.0.0.2:5071", "socket": "core"},
        {"match": {"ruri": "reply"}, "reply": 404},
    ],
]


FLOW_KEY = bytes(range(32))


def pair(routes: object = None, record_route: bool = True) -> tuple[SipEngine, SipEngine]:
    """The same engine with and without the scanner (one flow key, as the workers of one proxy share)."""
    listeners = StaticListeners(LISTENERS)
    rules = parse_routes(routes)
    return (
        SipEngine(rules, listeners, record_route=record_route, flow_key=FLOW_KEY),
        SipEngine(rules, listeners, record_route=record_route, scan=False, flow_key=FLOW_KEY),
    )


def agree(
    scanned: SipEngine,
    general: SipEngine,
    data: bytes,
    listener: Listener,
    src: tuple[str, int],
    conn: object | None = None,
) -> Outcome:
    if conn is None and listener.proto == "tcp":
        conn = object()
    outcome = scanned.process(data, listener, src, conn)
    assert outcome == general.process(data, listener, src, conn), data
    return outcome


def scanned_path_takes(eng: SipEngine, data: bytes, listener: Listener, src: tuple[str, int]) -> bool:
    if data.startswith(b"SIP/"):
        response = SCAN_RESPONSE(data) if SCAN_RESPONSE is not None else None
        return response is not None and scanned_path.response(eng.state, response) is not None
    found = SCAN_REQUEST(data, src[0], src[1]) if SCAN_REQUEST is not None else None
    return found is not None and scanned_path.request(eng.state, data, found, listener, src, None) is not None


ROUTE = "Route: <sip:127.0.0.1:5060;lr>"
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.10\r\ns=-\r\nc=IN IP4 127.0.0.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def one_via_line(response: bytes) -> bytes:
    """The response with all its Via values on one line, the way SIPp's uas writes `[last_Via:]`."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    values = [line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(b"via:")]
    first = next(i for i, line in enumerate(lines) if line.lower().startswith(b"via:"))
    rest = [line for line in lines[first:] if not line.lower().startswith(b"via:")]
    return b"\r\n".join([*lines[:first], b"Via: " + b", ".join(values), *rest]) + b"\r\n\r\n" + body


def usual_requests() -> list[bytes]:

    return [
        request(body=SDP),
        request("ACK", to_tag="uas-1"),
        request("BYE", to_tag="uas-1", cseq=2),
        request("OPTIONS", "sip:carrier.example.com:5099"),
        request("REGISTER", "sip:registrar.example.com"),
        request("INVITE", "sip:+442071234567@127.0.0.1:5080"),
        request("INVITE", "sip:bob@127.0.0.1:5080;transport=tcp;user=phone"),
        request("MESSAGE", "SIP:bob@127.0.0.1", max_forwards=None, body=b"hello"),
        request(extra=["Subject: a call", 'P-Asserted-Identity: "Alice A." <sip:alice@example.com>']),
        request(via="SIP/2.0/UDP 127.0.0.10:5061;branch=z9hG4bK-2;received=127.0.0.10"),
        request(extra=["Via: SIP/2.0/UDP 127.0.0.99:5070;branch=z9hG4bK-earlier"]),
        request(content_length=False, body=b""),
        # a top Via to complete (RFC 3581 rport; a sent-by that is not the source: NAT, names)
        request(via="SIP/2.0/UDP 127.0.0.10:5061;rport;branch=z9hG4bK-r1"),
        request(via="SIP/2.0/UDP 127.0.0.10:5061;branch=z9hG4bK-r2;RPORT;x=1"),
        request(via="SIP/2.0/UDP uac.example.com:5061;branch=z9hG4bK-n1"),
        request(via="SIP/2.0/UDP 192.0.2.7;received=198.51.100.1;rport=9;branch=z9hG4bK-n2"),
        request(via="SIP/2.0/TCP UAC.example.com;branch=z9hG4bK-n3;Received=1.2.3.4"),
        # inside a dialog, loose-routed by our Record-Route: single, double (RFC 5658) on one or two lines
        request("BYE", to_tag="uas-1", cseq=2, extra=[ROUTE]),
        request(
            "ACK",
            to_tag="uas-1",
            extra=["Route: <sip:127.0.0.2:5070;r2=on;lr>, <sip:127.0.0.1:5060;r2=on;lr>"],
        ),
        request(
            "ACK",
            to_tag="uas-1",
            extra=["Route: <sip:127.0.0.1:5060;r2=on;lr>", "route: <sip:127.0.0.2:5070;lr;r2>"],
        ),
        request("INFO", to_tag="uas-1", extra=["Route: <sip:127.0.0.1:5060;transport=tcp;lr>;x=1"]),
        request(body=b"x" * 1400),  # too big for UDP: leaves over TCP
        request("reply", "sip:reply@127.0.0.1"),
    ]


@pytest.mark.parametrize("routes", ROUTE_SETS)
@pytest.mark.parametrize("record_route", [True, False])
def test_usual_requests_take_the_scanned_path_and_agree(routes: object, record_route: bool) -> None:
    scanned, general = pair(routes, record_route)
    taken = 0
    for data in usual_requests():
        for listener in (UDP4, TCP4, PUBLIC):
            outcome = agree(scanned, general, data, listener, UAC)
            if outcome.drop_reason is None and listener.proto == "udp":
                assert scanned_path_takes(scanned, data, listener, UAC), data
                taken += 1
    assert taken >= 20


def test_usual_responses_take_the_scanned_path_and_agree() -> None:
    scanned, general = pair()
    for listener in (UDP4, TCP4):
        conn = object() if listener.proto == "tcp" else None
        for data in usual_requests():
            forwarded = agree(scanned, general, data, listener, UAC, conn)
            if forwarded.drop_reason is not None:
                continue
            for status, phrase, body in ((180, "Ringing", b""), (200, "OK", b"v=0\r\n"), (486, "Busy", b"")):
                reply = answer(one(forwarded).data, status, phrase, body)
                for shape in (reply, one_via_line(reply)):
                    agree(scanned, general, shape, one(forwarded).listener, UAS)
                    assert scanned_path_takes(scanned, shape, UDP4, UAS), shape


RESPONSE_EDITS = [
    (b";sk=u7f000001-13c4, ", b";sk=u7f000001-13c4,"),
    (b";sk=u7f000001-13c4, ", b";sk=u7f000001-13c4 ,   "),
    (b";sk=u7f000001-13c4, ", b";sk=u7f000001-13c4, , "),
    (b";sk=u7f000001-13c4, ", b";sk=u7f000001-13c4,\r\nVia: "),
    (b";sk=u7f000001-13c4, ", b";sk=u7f000001-13c4\r\nVia: "),
    (b";sk=u7f000001-13c4, ", b";sk=u7f000001-13c4, SIP/2.0/UDP 127.0.0.9:5070;branch=z9hG4bK-x, "),
    (b";sk=u7f000001-13c4, ", b';sk=u7f000001-13c4, SIP/2.0/UDP 127.0.0.9;branch="q", '),
    (b"127.0.0.10:5061;branch", b"127.0.0.10:5061;received=127.0.0.77;rport=7;branch"),
    (b"SIP/2.0/UDP 127.0.0.10:5061;branch", b"SIP/2.0/TCP 127.0.0.10;branch"),
    (b"SIP/2.0/UDP 127.0.0.10:5061;branch", b"SIP/2.0/UDP [::1]:5061;branch"),
    (b"z9hG4bK-uac-1\r\n", b"z9hG4bK-uac-1,\r\n"),
]


@pytest.mark.parametrize(("old", "new"), RESPONSE_EDITS)
def test_response_edits_agree(old: bytes, new: bytes) -> None:
    scanned, general = pair()
    data = one_via_line(answer(one(scanned.process(request(), UDP4, UAC)).data, 180, "Ringing"))
    general.process(request(), UDP4, UAC)
    assert old in data, (old, data)
    agree(scanned, general, data.replace(old, new, 1), UDP4, UAS)


def usual_responses(scanned: SipEngine, general: SipEngine) -> list[bytes]:
    """Answers with one Via per line to requests both engines forwarded: over UDP with and without a body,
    over TCP, and to a UA asking for rport from a hostname sent-by."""
    udp = one(agree(scanned, general, request(body=b"v=0\r\n"), UDP4, UAC)).data
    tcp_request = request(via="SIP/2.0/TCP 127.0.0.10:5061;rport;branch=z9hG4bK-f")
    tcp = one(agree(scanned, general, tcp_request, TCP4, UAC, object())).data
    rport_request = request(via="SIP/2.0/UDP uac.example.com:5061;rport;branch=z9hG4bK-r")
    rport = one(agree(scanned, general, rport_request, UDP4, UAC)).data
    return [
        answer(udp, 180, "Ringing"),
        answer(udp, 200, "OK", body=b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"),
        answer(tcp, 486, "Busy Here"),
        answer(rport, 200, "OK"),
    ]


def test_usual_responses_are_forwarded_by_the_scanned_path() -> None:
    scanned, general = pair()
    for data in usual_responses(scanned, general):
        one(agree(scanned, general, data, UDP4, UAS))
        assert scanned_path_takes(scanned, data, UDP4, UAS), data


# Edits of a response with one Via per line: each either leaves the message to the general path or gets the
# same outcome from the scanned path.
PER_LINE_RESPONSE_EDITS = [
    (b"\r\nVia: ", b"\r\nv: "),
    (b"\r\nVia: ", b"\r\nVIA: "),
    (b"\r\nVia: ", b"\r\nVia : "),
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
]


@pytest.mark.parametrize(("old", "new"), PER_LINE_RESPONSE_EDITS)
def test_per_line_response_edits_agree(old: bytes, new: bytes) -> None:
    scanned, general = pair()
    data = usual_responses(scanned, general)[0]
    assert old in data, (old, data)
    agree(scanned, general, data.replace(old, new, 1), UDP4, UAS)


def test_random_mutations_of_usual_responses_agree() -> None:
    scanned, general = pair()
    rng = random.Random("fast-path")
    specials = b'\r\n :;,<>"=[]0zvV'
    taken = 0
    for data in usual_responses(scanned, general):
        for _ in range(1500):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                mutated[rng.randrange(len(mutated))] = rng.choice(specials)
            sample = bytes(mutated)
            agree(scanned, general, sample, UDP4, UAS)
            taken += scanned_path_takes(scanned, sample, UDP4, UAS)
    assert taken > 800, taken  # many small edits leave a response the scanner reads (1,045 when written)


def test_sources_behind_nat_get_received_and_rport_as_on_the_general_path() -> None:
    scanned, general = pair()
    for via in ("127.0.0.10:5061;rport", "127.0.0.10:5061", "uac.example.com;rport=1;received=10.0.0.1"):
        data = request(via=f"SIP/2.0/UDP {via};branch=z9hG4bK-nat")
        for src in (UAC, ("127.0.0.99", 40000), ("::1", 5070)):
            listener = UDP6 if ":" in src[0] else UDP4
            outcome = agree(scanned, general, data, listener, src)
            assert scanned_path_takes(scanned, data, listener, src)
            sent = one(outcome).data
            if ";rport" in via and "rport=" not in via:
                assert f";rport={src[1]}".encode() in sent
            if via.split(";")[0].split(":")[0] != src[0]:
                assert f";received={src[0]}".encode() in sent


# Edits that each change what a scan may accept: the scanned path must either decline (the general path
# answers) or give the same outcome.
REQUEST_EDITS = [
    (b"\r\nVia: ", b"\r\nv: "),
    (b"\r\nVia: ", b"\r\nVia : "),
    (b"\r\nVia: ", b"\r\nVia:\t"),
    (b"\r\nFrom: ", b"\r\nf: "),
    (b"\r\nTo: ", b"\r\nt: "),
    (b"\r\nCall-ID: ", b"\r\ni: "),
    (b"\r\nCall-ID: call-1@127.0.0.10", b"\r\nCall-ID: "),
    (b"\r\nContent-Length: ", b"\r\nl: "),
    (b"Content-Length: 0", b"Content-Length: 0\r\nContent-Length: 0"),
    (b"Content-Length: 0", b"Content-Length: 0\r\nContent-Length: 1"),
    (b"Content-Length: 0", b"Content-Length: 4"),
    (b"Content-Length: 0", b"Content-Length: 00000000000"),
    (b"Max-Forwards: 70", b"Max-Forwards: 0"),
    (b"Max-Forwards: 70", b"Max-Forwards: 1"),
    (b"Max-Forwards: 70", b"Max-Forwards: x"),
    (b"Max-Forwards: 70", b"max-forwards:70"),
    (b"Max-Forwards: 70", b"Max-Forwards: 70\r\nMax-Forwards: 70"),
    (b"CSeq: 1 INVITE", b"CSeq: 1 BYE"),
    (b"CSeq: 1 INVITE", b"CSeq: 1  INVITE"),
    (b"CSeq: 1 INVITE", b"CSeq: 4294967296 INVITE"),
    (b"CSeq: 1 INVITE", b"CSeq: 1 INVITE x"),
    (b"CSeq: 1 INVITE", b"CSeq: INVITE"),
    (b"INVITE sip:", b"INVITE  sip:"),
    (b"INVITE sip:", b"INVITE sips:"),
    (b"INVITE sip:", b"INVITE tel:"),
    (b"INVITE sip:", b"FOO sip:"),
    (b"sip:bob@127.0.0.1:5080", b"sip:bob@127.0.0.1:5080?Subject=x"),
    (b"sip:bob@127.0.0.1:5080", b"sip:bob@[::1]:5080"),
    (b"sip:bob@127.0.0.1:5080", b"sip:bob@127.0.0.1:0"),
    (b"sip:bob@127.0.0.1:5080", b"sip:bob@127.0.0.1:5060"),  # ourselves
    (b"sip:bob@127.0.0.1:5080", b"sip:b@b@127.0.0.1:5080;lr"),
    (b" SIP/2.0\r\n", b" SIP/2.1\r\n"),
    (b" SIP/2.0\r\n", b" sip/2.0\r\n"),
    (b";tag=from-1", b";TAG=from-1"),
    (b";tag=from-1", b"; tag=from-1"),
    (b";tag=from-1", b";xtag=1;tag=from-1"),
    (b";tag=from-1", b";tag=from-1;tag=2"),
    (b";tag=from-1", b""),
    (b"From: Alice <", b'From: "Alice, A." <'),
    (b"From: Alice <", b'From: "Al\\"ice" <'),
    (b"From: Alice <", b"From: Alice, B <"),
    (b"From: Alice <", b'From: "Alice <'),
    (b"From: Alice <sip:alice@127.0.0.10>", b"From: sip:alice@127.0.0.10"),
    (b"127.0.0.10:5061;branch", b"127.0.0.10:5061;rport;branch"),
    (b"127.0.0.10:5061;branch", b"127.0.0.11:5061;branch"),
    (b"127.0.0.10:5061;branch", b"[::1]:5061;branch"),
    (b"127.0.0.10:5061;branch", b"127.0.0.10:5061 ;branch"),
    (b";branch=z9hG4bK-uac-1", b";branch=z9hG4bK"),
    (b";branch=z9hG4bK-uac-1", b";branch="),
    (b";branch=z9hG4bK-uac-1", b';branch="z9hG4bK-q"'),
    (b";branch=z9hG4bK-uac-1", b";branch=a;branch=b"),
    (b";branch=z9hG4bK-uac-1", b";branch=z9hG4bKsps1.2, SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsps3.4"),
    (b";branch=z9hG4bK-uac-1", b";branch=z9hG4bK-3, SIP/2.0/TCP 127.0.0.99;branch=z9hG4bK-0"),
    (b"SIP/2.0/UDP 127.0.0.10", b"SIP/2.0/udp 127.0.0.10"),
    (b"SIP/2.0/UDP 127.0.0.10", b"SIP / 2.0 / UDP 127.0.0.10"),
    (b"\r\nContact", b"\r\n Contact"),
    (b"\r\nContact", b"\r\nContact\r\nContact"),
    (b"\r\nContact", b"\r\nRoute: <sip:127.0.0.1:5060;lr>\r\nContact"),
    (b"\r\nContact", b"\r\nProxy-Require: foo\r\nContact"),
    (b"\r\nContact", b"\r\nX-Ctl: a\x00b\r\nContact"),
    (b"\r\nContact", b"\r\nX-Utf8: \xc3\xa9\r\nContact"),
]


def test_branches_agree_across_hash_block_boundaries() -> None:
    """The branch of a scanned request is hashed in C; keys of every length around the 64-byte blocks."""
    scanned, general = pair()
    for size in range(1, 200):
        call_id = ("c" * size).encode()
        for branch in (b"z9hG4bK-uac-1", b"z9hG4bK"):  # with a usable branch, and RFC 2543-style
            data = request().replace(b"call-1@127.0.0.10", call_id).replace(b"z9hG4bK-uac-1", branch)
            assert scanned_path_takes(scanned, data, UDP4, UAC)
            agree(scanned, general, data, UDP4, UAC)


ROUTED_EDITS = [
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: <sip:127.0.0.99:5060;lr>"),  # not ours
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.99;lr>"),
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: <sip:127.0.0.1:5060;r2=on;lr>, <sip:127.0.0.99;lr>"),
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.2:5070;lr>"),
    (
        b"Route: <sip:127.0.0.1:5060;lr>",
        b"Route: <sip:127.0.0.1:5060;r2;lr>,<sip:127.0.0.2:5070;lr>,<sip:a;lr>",
    ),
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: <sip:127.0.0.1:5060>"),  # a strict router's entry
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: proxy <sip:127.0.0.1:5060;lr>"),
    (b"Route: <sip:127.0.0.1:5060;lr>", b'Route: "proxy" <sip:127.0.0.1:5060;lr>'),
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: proxy, inc <sip:127.0.0.1:5060;lr>"),
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: <sip:127.0.0.1:5060;lr>,"),
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: <sip:127.0.0.1:5060;lr>, , <sip:127.0.0.1:5060;lr>"),
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: "),
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: sip:127.0.0.1:5060;lr"),
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: <sip:127.0.0.1:5060;lr"),
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: <sips:127.0.0.1:5060;lr>"),
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: <sip:[::1]:5060;lr>"),
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: <sip:127.0.0.1:5060;LR;R2=ON>, <sip:127.0.0.2:5070;lr>"),
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: <sip:127.0.0.1:5060;lr>\r\nMax-Forwards: 9"),
    (b"Route: <sip:127.0.0.1:5060;lr>", b"Route: <sip:127.0.0.1:5060;lr>\r\nProxy-Require: x"),
    (b"BYE sip:bob@127.0.0.1:5080", b"BYE sip:bob@127.0.0.1:5080;lr"),
    (b"BYE sip:bob@127.0.0.1:5080", b"BYE sip:127.0.0.1:5060;lr"),  # a strict router put our URI there
    (b";tag=uas-1", b""),  # outside a dialog: the rules apply
    (b"Max-Forwards: 70\r\n", b""),
]


@pytest.mark.parametrize(("old", "new"), ROUTED_EDITS)
@pytest.mark.parametrize("listener", [UDP4, TCP4, CORE])
def test_routed_request_edits_agree(old: bytes, new: bytes, listener: Listener) -> None:
    scanned, general = pair(ROUTE_SETS[2])
    data = request("BYE", to_tag="uas-1", cseq=2, extra=[ROUTE])
    assert old in data, old
    agree(scanned, general, data.replace(old, new, 1), listener, UAC)


@pytest.mark.parametrize(("old", "new"), REQUEST_EDITS)
@pytest.mark.parametrize("listener", [UDP4, TCP4])
def test_request_edits_agree(old: bytes, new: bytes, listener: Listener) -> None:
    scanned, general = pair(ROUTE_SETS[2])
    data = request()
    assert old in data, old
    agree(scanned, general, data.replace(old, new, 1), listener, UAC)


def test_random_mutations_agree() -> None:
    scanned, general = pair(ROUTE_SETS[1])
    rng = random.Random("scanner")
    specials = b'\r\n \t:;,<>"=[]@?0zvVtT\x00\xff'
    taken = 0
    samples = [*usual_requests()[:4], request("BYE", to_tag="uas-1", cseq=2, extra=[ROUTE])]
    forwarded = one(scanned.process(samples[0], UDP4, UAC)).data
    samples += [answer(forwarded, 180, "Ringing"), answer(forwarded, 200, "OK", b"v=0\r\n")]
    samples.append(one_via_line(samples[-1]))
    for data in samples:
        src = UAS if data.startswith(b"SIP/") else UAC
        for _ in range(600):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                at = rng.randrange(len(mutated))
                choice = rng.random()
                if choice < 0.6:
                    mutated[at] = rng.choice(specials)
                elif choice < 0.8:
                    del mutated[at]
                else:
                    mutated.insert(at, rng.choice(specials))
            sample = bytes(mutated)
            agree(scanned, general, sample, UDP4, src)
            taken += scanned_path_takes(scanned, sample, UDP4, src)
    assert taken > 800  # most small edits leave a message the scanner still reads


class Flow:
    """A stream connection as the worker shows it to the engine: its socket and peer."""

    def __init__(self, listener: Listener, peer: tuple[str, int]) -> None:
        self.listener = listener
        self.peer = peer


WSS = Listener("wss", "127.0.0.1", 8443)
BROWSER = ("127.0.0.30", 50123)


def test_flow_tokens_take_the_scanned_path_and_agree() -> None:
    """A browser's call over WSS: responses with a flow token in our Via, the callee's in-dialog requests
    with one in our Record-Route (sent over the browser's connection), and mutations of those tokens."""
    listeners = StaticListeners((*LISTENERS, WSS))
    scanned = SipEngine([], listeners, flow_key=FLOW_KEY)
    general = SipEngine([], listeners, scan=False, flow_key=FLOW_KEY)
    conn = Flow(WSS, BROWSER)
    invite = request(via="SIP/2.0/WSS abc.invalid;branch=z9hG4bK-ws")
    forwarded = one(agree(scanned, general, invite, WSS, BROWSER, conn)).data
    head = forwarded.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    route_set = [line.split(b": ", 1)[1] for line in head if line.startswith(b"Record-Route: ")]
    token = route_set[1][len(b"<sip:") : route_set[1].index(b"@")]
    samples = [answer(forwarded, 180, "Ringing"), answer(forwarded, 200, "OK", b"v=0\r\n")]
    samples.append(
        request(
            "BYE",
            "sip:alice@abc.invalid;transport=ws",
            via="SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-b",
            to_tag="uas-1",
            cseq=2,
            extra=["Route: " + b", ".join(route_set).decode()],
        )
    )
    for data in samples:
        src = UAS if data.startswith(b"SIP/") or b"BYE" in data[:4] else UAC
        sent = one(agree(scanned, general, data, UDP4, src))
        assert sent.connection is conn, data
        assert scanned_path_takes(scanned, data, UDP4, src), data
    rng = random.Random("flow tokens")
    for data in samples:
        at = data.index(token)
        for _ in range(300):
            mutated = bytearray(data)
            mutated[at + rng.randrange(len(token))] = rng.choice(b"0123456789abcdefA@;-")
            agree(scanned, general, bytes(mutated), UDP4, UAS)


@pytest.mark.parametrize("name", sorted(p.stem for p in DATA.glob("*.dat")))
def test_rfc4475_messages_agree(name: str) -> None:
    data = (DATA / f"{name}.dat").read_bytes()
    scanned, general = pair(ROUTE_SETS[1])
    for listener in (UDP4, TCP4):
        agree(scanned, general, data, listener, ("127.0.0.9", 5062))


def test_no_input_makes_the_scanner_fail() -> None:
    assert SCAN_REQUEST is not None and SCAN_RESPONSE is not None
    scanned, _ = pair()
    forwarded = one(scanned.process(request(), UDP4, UAC)).data
    messages = [request(body=b"v=0\r\n"), answer(forwarded, 200, "OK", b"v=0\r\n")]
    messages += [(DATA / f"{name}.dat").read_bytes() for name in ("wsinv", "esc01", "longreq", "scalarlg")]
    for data in messages:
        for end in range(len(data) + 1):  # every truncation, as a datagram cut short would be
            SCAN_REQUEST(data[:end], "127.0.0.10", 5061)
            SCAN_RESPONSE(data[:end])
    rng = random.Random("garbage")
    for _ in range(3000):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        for data in (noise, b"SIP/2.0 200 OK\r\n" + noise, b"INVITE sip:a@b SIP/2.0\r\n" + noise):
            for found in (
                SCAN_REQUEST(data + b"\r\n\r\n", "127.0.0.10", 5061),
                SCAN_RESPONSE(data + b"\r\n\r\n"),
            ):
                assert found is None or isinstance(found, tuple)
    rport = request(via="SIP/2.0/UDP 127.0.0.10:5061;rport;branch=z9hG4bK-p")
    for port in (0, 65535, -(2**63), 2**63 - 1):  # whatever the runtime passes, it is written whole
        found = SCAN_REQUEST(rport, "127.0.0.99", port)
        assert found is not None and b";rport=%d;" % port in found[7]
    with pytest.raises(TypeError):
        SCAN_REQUEST("INVITE", "127.0.0.10", 5061)  # type: ignore[arg-type]
