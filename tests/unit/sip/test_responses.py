"""Responses going back through the proxy by Via (RFC 3261 16.7 step 3, 16.11, 18.2.2)."""

from __future__ import annotations

import gc

from sipproxy.sip.message import parse_message
from tests.unit.sip.support import TCP4, UAC, UDP4, UDP6, answer, engine, one, parsed, request, vias

UAS = ("127.0.0.1", 5080)


def test_response_goes_back_to_the_client_without_our_via_and_otherwise_untouched() -> None:
    eng = engine()
    forwarded = one(eng.handle(request(), UDP4, UAC))
    response = answer(forwarded.data, 180, "Ringing", body=b"early")
    back = one(eng.handle(response, UDP4, UAS))
    assert (back.host, back.port, back.proto, back.listener, back.connection) == (
        "127.0.0.10",
        5061,
        "udp",
        UDP4,
        None,
    )
    msg = parsed(back)
    assert msg.start_line == b"SIP/2.0 180 Ringing"
    assert vias(msg) == [b"SIP/2.0/UDP 127.0.0.10:5061;branch=z9hG4bK-uac-1"]
    original = parse_message(response)
    for name in (b"from", b"to", b"call-id", b"cseq", b"content-length"):
        assert msg.raw_of(name) == original.raw_of(name)
    assert msg.body == b"early"


def test_response_follows_received_and_rport() -> None:
    eng = engine()
    data = request(via="SIP/2.0/UDP uac.example.com:5061;rport;branch=z9hG4bK-x")
    forwarded = one(eng.handle(data, UDP4, ("127.0.0.10", 40000)))
    back = one(eng.handle(answer(forwarded.data), UDP4, UAS))
    assert (back.host, back.port) == ("127.0.0.10", 40000)
    no_rport = one(eng.handle(request(via="SIP/2.0/UDP uac.example.com:5077;branch=z9hG4bK-y"), UDP4, UAC))
    back = one(eng.handle(answer(no_rport.data), UDP4, UAS))
    assert (back.host, back.port) == ("127.0.0.10", 5077)


def test_only_our_value_is_removed_from_a_shared_or_compact_via_line() -> None:
    eng = engine()
    forwarded = parse_message(one(eng.handle(request(), UDP4, UAC)).data)
    ours, theirs = vias(forwarded)
    for name in (b"Via", b"v", b"V "):
        response = (
            b"SIP/2.0 200 OK\r\n"
            + name
            + b": "
            + ours
            + b" , "
            + theirs
            + b"\r\nv: SIP/2.0/UDP 127.0.0.99\r\n"
            b"From: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
        back = one(eng.handle(response, UDP4, UAS))
        assert back.data.split(b"\r\n")[1:3] == [name.rstrip() + b": " + theirs, b"v: SIP/2.0/UDP 127.0.0.99"]
        assert (back.host, back.port) == ("127.0.0.10", 5061)


def test_responses_whose_top_via_is_not_ours_are_dropped() -> None:
    eng = engine()
    forwarded = one(eng.handle(request(), UDP4, UAC)).data
    foreign_branch = forwarded.replace(b"branch=z9hG4bKsps", b"branch=z9hG4bKxyz", 1)
    foreign_host = forwarded.replace(
        b"Via: SIP/2.0/UDP 127.0.0.1:5060;", b"Via: SIP/2.0/UDP 127.0.0.99:5060;", 1
    )
    for data in (request(), foreign_branch, foreign_host):
        out = eng.handle(answer(data), UDP4, UAS)
        assert out.sends == [] and out.drop_reason == "response_not_ours"


def test_response_to_a_stream_request_uses_the_same_connection_until_it_closes() -> None:
    class Connection:
        """What the runtime's stream connections show the engine: the peer at the other end."""

        def __init__(self, peer: tuple[str, int]) -> None:
            self.peer = peer

    eng = engine()
    conn = Connection(("127.0.0.10", 40100))
    data = request(via="SIP/2.0/TCP 127.0.0.10:5061;branch=z9hG4bK-t")
    forwarded = one(eng.handle(data, TCP4, ("127.0.0.10", 40100), connection=conn))
    assert forwarded.proto == "udp"  # the next hop is UDP; the response still returns over TCP
    back = one(eng.handle(answer(forwarded.data), UDP4, UAS))
    assert (back.connection, back.listener, back.proto) == (conn, TCP4, "tcp")
    assert (back.host, back.port) == ("127.0.0.10", 5061)
    eng.forget_connection(conn)
    later = one(eng.handle(answer(forwarded.data), UDP4, UAS))
    assert later.connection is None and later.proto == "tcp" and later.port == 5061
    # the registry holds connections weakly: a collected one is gone too
    conn2 = Connection(("127.0.0.10", 40101))
    fwd2 = one(eng.handle(data, TCP4, ("127.0.0.10", 40101), connection=conn2))
    del conn2
    gc.collect()
    assert one(eng.handle(answer(fwd2.data), UDP4, UAS)).connection is None


def test_response_onto_a_stream_gets_a_content_length() -> None:
    eng = engine()
    forwarded = one(
        eng.handle(
            request(via="SIP/2.0/TCP 127.0.0.10:5061;branch=z9hG4bK-t"), TCP4, UAC, connection=object()
        )
    )
    response = answer(forwarded.data, body=b"sdp").replace(b"Content-Length: 3\r\n", b"")
    msg = parsed(one(eng.handle(response, UDP4, UAS)))
    assert msg.values_of(b"content-length") == [b"3"] and msg.body == b"sdp"


def test_response_content_length_rules() -> None:
    eng = engine()
    forwarded = one(eng.handle(request(), UDP4, UAC)).data
    short = answer(forwarded, body=b"abc").replace(b"Content-Length: 3", b"Content-Length: 10")
    assert eng.handle(short, UDP4, UAS).drop_reason == "bad_content_length"
    longer = answer(forwarded, body=b"abcdef").replace(b"Content-Length: 6", b"Content-Length: 2")
    assert parsed(one(eng.handle(longer, UDP4, UAS))).body == b"ab"


def test_response_without_a_next_via_is_dropped() -> None:
    eng = engine()
    forwarded = one(eng.handle(request(), UDP4, UAC)).data
    ours = vias(parse_message(forwarded))[0]
    response = b"SIP/2.0 200 OK\r\nVia: " + ours + b"\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    assert eng.handle(response, UDP4, UAS).drop_reason == "no_next_via"


def test_ipv6_round_trip() -> None:
    eng = engine()
    data = request(ruri="sip:bob@[::1]:5080", via="SIP/2.0/UDP [::1]:5061;branch=z9hG4bK-6")
    forwarded = one(eng.handle(data, UDP6, ("::1", 5061)))
    assert forwarded.listener == UDP6
    back = one(eng.handle(answer(forwarded.data), UDP6, ("::1", 5080)))
    assert (back.host, back.port, back.listener) == ("::1", 5061, UDP6)


def test_out_of_range_rport_or_port_never_reaches_the_runtime() -> None:
    eng = engine()
    forwarded = one(eng.handle(request(via="SIP/2.0/UDP 127.0.0.10:5061;rport;branch=z9hG4bK-p"), UDP4, UAC))
    response = answer(forwarded.data).replace(b"rport=5061", b"rport=99999")
    back = one(eng.handle(response, UDP4, UAS))
    assert (back.host, back.port) == ("127.0.0.10", 5061)  # the sent-by port instead
    zero = answer(forwarded.data).replace(b"127.0.0.10:5061;rport=5061", b"127.0.0.10:0;rport=0")
    assert eng.handle(zero, UDP4, UAS).drop_reason == "parse_error"


def test_received_must_be_an_ip_address() -> None:
    eng = engine()
    forwarded = one(eng.handle(request(via="SIP/2.0/UDP 127.0.0.10:5061;branch=z9hG4bK-r"), UDP4, UAC))
    response = answer(forwarded.data).replace(b"branch=z9hG4bK-r", b"branch=z9hG4bK-r;received=evil.example")
    back = one(eng.handle(response, UDP4, UAS))
    assert (back.host, back.port) == ("127.0.0.10", 5061)
