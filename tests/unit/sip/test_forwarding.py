"""Requests the proxy forwards (RFC 3261 16.4, 16.6, 16.11, 18.2.1; RFC 5658)."""

from __future__ import annotations

from sipproxy.sip.engine import SipEngine
from sipproxy.sip.headers import split_values
from sipproxy.sip.message import parse_message
from sipproxy.sip.routing import parse_routes
from sipproxy.sip.via import parse_via
from tests.unit.sip.support import (
    CORE,
    PUBLIC,
    TCP4,
    UAC,
    UDP4,
    UDP6,
    StaticListeners,
    engine,
    one,
    parsed,
    request,
    vias,
)


def test_forwarded_to_request_uri_with_our_via_record_route_and_decremented_max_forwards() -> None:
    data = request(body=b"v=0\r\n")
    send = one(engine().handle(data, UDP4, UAC))
    assert (send.host, send.port, send.proto, send.listener) == ("127.0.0.1", 5080, "udp", UDP4)
    msg = parsed(send)
    assert msg.start_line == b"INVITE sip:bob@127.0.0.1:5080 SIP/2.0"
    top, second = vias(msg)
    ours = parse_via(top)
    assert ours is not None and ours.branch is not None
    assert (ours.transport, ours.host, ours.port) == ("UDP", "127.0.0.1", 5060)
    assert ours.branch.startswith(b"z9hG4bK")
    assert ours.params[b"sk"] == b"u7f000001-13c4"
    assert second == b"SIP/2.0/UDP 127.0.0.10:5061;branch=z9hG4bK-uac-1"  # same host as source: untouched
    assert msg.values_of(b"record-route") == [b"<sip:127.0.0.1:5060;lr>"]
    assert msg.values_of(b"max-forwards") == [b"69"]
    assert msg.body == b"v=0\r\n"
    # every other header is passed on byte for byte
    original = parse_message(data)
    for name in (b"from", b"to", b"call-id", b"cseq", b"contact", b"content-length"):
        assert msg.raw_of(name) == original.raw_of(name)


def test_max_forwards_added_when_absent_and_kept_without_record_route() -> None:
    send = one(engine(record_route=False).handle(request(max_forwards=None), UDP4, UAC))
    msg = parsed(send)
    assert msg.values_of(b"max-forwards") == [b"70"]
    assert b"record-route" not in msg.index


def test_received_added_when_sent_by_differs_and_rport_filled() -> None:
    data = request(via="SIP/2.0/UDP uac.example.com:5061;rport;branch=z9hG4bK-uac-1")
    msg = parsed(one(engine().handle(data, UDP4, ("127.0.0.10", 40000))))
    assert (
        vias(msg)[1]
        == b"SIP/2.0/UDP uac.example.com:5061;rport=40000;branch=z9hG4bK-uac-1;received=127.0.0.10"
    )


def test_register_and_in_dialog_requests_get_no_record_route() -> None:
    msg = parsed(one(engine().handle(request("REGISTER", "sip:127.0.0.1:5080"), UDP4, UAC)))
    assert b"record-route" not in msg.index
    bye = parsed(one(engine().handle(request("BYE", to_tag="t1"), UDP4, UAC)))
    assert b"record-route" not in bye.index


def _our_branch(data: bytes, src: tuple[str, int] = UAC) -> bytes:
    via = parse_via(vias(parsed(one(engine().handle(data, UDP4, src))))[0])
    assert via is not None and via.branch is not None
    return via.branch


def test_branch_is_the_same_for_retransmission_cancel_and_ack_of_a_failure() -> None:
    invite = request()
    branch = _our_branch(invite)
    assert _our_branch(invite) == branch
    assert _our_branch(invite, ("127.0.0.10", 6000)) == branch  # arrived from another port: still one txn
    assert _our_branch(request("CANCEL", cseq=1)) == branch
    assert _our_branch(request("ACK", cseq=1, to_tag="uas-1")) == branch
    # A new transaction (next CSeq, new client branch) gets another branch.
    other = request("BYE", cseq=2, via="SIP/2.0/UDP 127.0.0.10:5061;branch=z9hG4bK-uac-2", to_tag="uas-1")
    assert _our_branch(other) != branch


def test_branch_for_rfc2543_clients_is_derived_from_the_transaction_fields() -> None:
    via = "SIP/2.0/UDP 127.0.0.10:5061"
    invite = request(via=via)
    branch = _our_branch(invite)
    assert branch.startswith(b"z9hG4bK")
    assert _our_branch(invite) == branch
    assert _our_branch(request("CANCEL", via=via)) == branch
    assert _our_branch(request("ACK", via=via, to_tag="uas-1")) == branch
    assert _our_branch(request(via=via, cseq=2)) != branch
    assert _our_branch(request(via=via, ruri="sip:carol@127.0.0.1:5080")) != branch
    # a bare magic cookie carries no uniqueness (RFC 4475 3.2.1): treated the same way
    bare = "SIP/2.0/UDP 127.0.0.10:5061;branch=z9hG4bK"
    assert _our_branch(request(via=bare, cseq=1)) != _our_branch(request(via=bare, cseq=2))


def test_own_top_route_removed_and_next_route_is_the_next_hop() -> None:
    data = request(
        "BYE",
        to_tag="t1",
        extra=["Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.20:5090;lr;x=1>", "Route: <sip:127.0.0.21;lr>"],
    )
    send = one(engine().handle(data, UDP4, UAC))
    assert (send.host, send.port) == ("127.0.0.20", 5090)
    msg = parsed(send)
    assert msg.start_line == b"BYE sip:bob@127.0.0.1:5080 SIP/2.0"
    assert [v for value in msg.values_of(b"route") for v in split_values(value)] == [
        b"<sip:127.0.0.20:5090;lr;x=1>",
        b"<sip:127.0.0.21;lr>",
    ]


def test_a_port_less_route_names_the_default_port_not_any_port_of_ours() -> None:
    # CORE listens on 127.0.0.2:5070 only: <sip:127.0.0.2;lr> is 127.0.0.2:5060, another element's.
    foreign = request("BYE", to_tag="t1", extra=["Route: <sip:127.0.0.2;lr>"])
    for scan in (True, False):
        send = one(
            SipEngine(parse_routes(None), StaticListeners([UDP4, CORE]), scan=scan).handle(foreign, UDP4, UAC)
        )
        assert (send.host, send.port) == ("127.0.0.2", 5060)
        assert parsed(send).values_of(b"route") == [b"<sip:127.0.0.2;lr>"]
    # UDP4 listens on 127.0.0.1:5060: <sip:127.0.0.1;lr> is ours and goes.
    ours = request("BYE", to_tag="t1", extra=["Route: <sip:127.0.0.1;lr>"])
    for scan in (True, False):
        send = one(
            SipEngine(parse_routes(None), StaticListeners([UDP4, CORE]), scan=scan).handle(ours, UDP4, UAC)
        )
        assert (send.host, send.port) == ("127.0.0.1", 5080)
        assert b"route" not in parsed(send).index


def test_strict_router_upstream_request_uri_is_restored_from_the_last_route() -> None:
    data = request("BYE", "sip:127.0.0.1:5060;lr", to_tag="t1", extra=["Route: <sip:bob@127.0.0.1:5080>"])
    send = one(engine().handle(data, UDP4, UAC))
    msg = parsed(send)
    assert msg.start_line == b"BYE sip:bob@127.0.0.1:5080 SIP/2.0"
    assert b"route" not in msg.index
    assert (send.host, send.port) == ("127.0.0.1", 5080)


def test_strict_router_next_hop_gets_the_route_in_the_request_uri() -> None:
    data = request("BYE", to_tag="t1", extra=["Route: <sip:127.0.0.30:5090>"])
    send = one(engine().handle(data, UDP4, UAC))
    msg = parsed(send)
    assert msg.start_line == b"BYE sip:127.0.0.30:5090 SIP/2.0"
    assert msg.values_of(b"route") == [b"<sip:bob@127.0.0.1:5080>"]
    assert (send.host, send.port) == ("127.0.0.30", 5090)


def test_double_record_route_when_leaving_on_another_socket_and_its_use_in_dialog() -> None:
    eng = engine()
    send = one(eng.handle(request(ruri="sip:bob@127.0.0.1:5080;transport=tcp"), CORE, UAC))
    assert send.listener == TCP4 and send.proto == "tcp"
    msg = parsed(send)
    assert msg.values_of(b"record-route") == [
        b"<sip:127.0.0.1:5060;transport=tcp;r2=on;lr>",
        b"<sip:127.0.0.2:5070;r2=on;lr>",
    ]
    assert vias(msg)[0].startswith(b"SIP/2.0/TCP 127.0.0.1:5060;branch=")
    # The callee's BYE comes back over TCP with both entries as its route set: it leaves from the socket
    # the caller's side used (CORE), not merely the first UDP socket.
    bye = request(
        "BYE",
        "sip:alice@127.0.0.10:5061",
        via="SIP/2.0/TCP 127.0.0.1:5080;branch=z9hG4bK-uas-9",
        to_tag="t1",
        extra=["Route: <sip:127.0.0.1:5060;transport=tcp;r2=on;lr>, <sip:127.0.0.2:5070;r2=on;lr>"],
    )
    back = one(eng.handle(bye, TCP4, ("127.0.0.1", 40001), connection=object()))
    assert (back.host, back.port, back.proto, back.listener) == ("127.0.0.10", 5061, "udp", CORE)
    assert b"route" not in parsed(back).index
    # a single Record-Route when in and out are the same socket
    assert parsed(one(eng.handle(request(), CORE, UAC))).values_of(b"record-route") == [
        b"<sip:127.0.0.2:5070;lr>"
    ]


def test_options_to_the_proxy_itself_is_answered_200() -> None:
    eng = engine()
    for ruri in ("sip:127.0.0.1:5060", "sip:127.0.0.1", "sip:sbc.example.net:5099", "sip:ping@[::1]:5060"):
        send = one(eng.handle(request("OPTIONS", ruri), UDP4, UAC))
        msg = parsed(send)
        assert msg.status == 200, ruri
        assert {b"allow", b"accept", b"supported"} <= msg.index.keys()
        assert msg.values_of(b"content-length") == [b"0"]
        assert (send.host, send.port) == UAC
    # another port of our address is somebody else: forwarded
    assert parsed(one(eng.handle(request("OPTIONS", "sip:127.0.0.1:5999"), UDP4, UAC))).is_request


def test_max_forwards_zero_is_483_except_options_to_ourselves() -> None:
    eng = engine()
    out = eng.handle(request(max_forwards=0), UDP4, UAC)
    assert out.drop_reason == "max_forwards"
    assert parsed(out.sends[0]).status == 483
    ok = one(eng.handle(request("OPTIONS", "sip:127.0.0.1:5060", max_forwards=0), UDP4, UAC))
    assert parsed(ok).status == 200


def test_a_request_coming_back_unchanged_is_a_loop_but_a_spiral_is_not() -> None:
    eng = engine(routes=[{"match": {"ruri": "^sip:loop@"}, "forward": "sip:127.0.0.1:5060"}])
    first = one(eng.handle(request(ruri="sip:loop@example.com"), UDP4, UAC))
    again = eng.handle(first.data, UDP4, ("127.0.0.1", 5060))
    assert again.drop_reason == "loop"
    assert parsed(again.sends[0]).status == 482
    # same message with a changed Request-URI has spiralled: forwarded
    spiral = first.data.replace(b"INVITE sip:loop@example.com", b"INVITE sip:bob@127.0.0.1:5080", 1)
    assert one(eng.handle(spiral, UDP4, ("127.0.0.1", 5060))).port == 5080


def test_socket_named_by_the_rule_and_its_advertised_address() -> None:
    eng = engine(
        routes=[
            {"match": {"ruri": "^sip:\\+44"}, "forward": "sip:127.0.0.40:5060", "socket": "core"},
            {"match": {"tag": "pub"}, "forward": "sip:127.0.0.41", "socket": "pub"},
            {"match": {"ruri": "^sip:gone"}, "forward": "sip:127.0.0.42", "socket": "nope"},
        ]
    )
    send = one(eng.handle(request(ruri="sip:+441234@example.com"), UDP4, UAC))
    assert (send.listener, send.host, send.port) == (CORE, "127.0.0.40", 5060)
    msg = parsed(send)
    assert vias(msg)[0].startswith(b"SIP/2.0/UDP 127.0.0.2:5070;")
    assert msg.values_of(b"record-route") == [
        b"<sip:127.0.0.2:5070;r2=on;lr>",
        b"<sip:127.0.0.1:5060;r2=on;lr>",
    ]
    pub = one(eng.handle(request(), PUBLIC, UAC))
    assert pub.listener == PUBLIC and pub.port == 5060
    pmsg = parsed(pub)
    assert vias(pmsg)[0].startswith(b"SIP/2.0/UDP sbc.example.net:5099;")
    assert pmsg.values_of(b"record-route") == [b"<sip:sbc.example.net:5099;lr>"]
    missing = eng.handle(request(ruri="sip:gone@example.com"), UDP4, UAC)
    assert missing.drop_reason == "no_socket" and parsed(missing.sends[0]).status == 503


def test_outbound_socket_follows_transport_and_address_family() -> None:
    eng = engine()
    v6 = one(eng.handle(request(ruri="sip:bob@[::1]:5080"), UDP4, UAC))
    assert v6.listener == UDP6 and v6.host == "::1"
    assert vias(parsed(v6))[0].startswith(b"SIP/2.0/UDP [::1]:5060;")
    tcp = one(eng.handle(request(ruri="sip:bob@127.0.0.1:5080;transport=TCP"), UDP4, UAC))
    assert tcp.listener == TCP4 and tcp.proto == "tcp"
    named = one(eng.handle(request(ruri="sip:bob@pbx.example.com"), CORE, UAC))
    assert named.listener == CORE and (named.host, named.port) == ("pbx.example.com", 5060)
    tls = eng.handle(request(ruri="sips:bob@127.0.0.1:5081"), UDP4, UAC)
    assert tls.drop_reason == "no_socket" and parsed(tls.sends[0]).status == 503


def test_large_request_prefers_tcp_unless_udp_is_forced() -> None:
    body = b"a=x\r\n" * 300
    eng = engine()
    big = one(eng.handle(request(body=body), UDP4, UAC))
    assert big.listener == TCP4 and big.proto == "tcp" and parsed(big).body == body
    forced = engine(routes=[{"forward": "sip:127.0.0.1:5080;transport=udp"}])
    assert one(forced.handle(request(body=body), UDP4, UAC)).proto == "udp"
    no_tcp = engine(listeners=[UDP4])
    assert one(no_tcp.handle(request(body=body), UDP4, UAC)).proto == "udp"
    assert one(eng.handle(request(body=b"small"), UDP4, UAC)).proto == "udp"


def test_content_length_truncation_and_addition_on_streams() -> None:
    eng = engine()
    longer = request(body=b"12345").replace(b"Content-Length: 5", b"Content-Length: 3")
    assert parsed(one(eng.handle(longer, UDP4, UAC))).body == b"123"
    no_cl = request(body=b"hello", content_length=False)
    udp = parsed(one(eng.handle(no_cl, UDP4, UAC)))
    assert udp.body == b"hello" and b"content-length" not in udp.index
    tcp = parsed(
        one(
            eng.handle(
                request(ruri="sip:bob@127.0.0.1:5080;transport=tcp", body=b"hello", content_length=False),
                UDP4,
                UAC,
            )
        )
    )
    assert tcp.values_of(b"content-length") == [b"5"] and tcp.body == b"hello"


def test_reply_rules_and_first_match_wins() -> None:
    eng = engine(
        routes=[
            {"match": {"tag": "core", "ruri": "^sip:\\+44"}, "forward": "sip:127.0.0.40"},
            {"match": {"ruri": "^sip:\\+44"}, "reply": 403},
            {"match": {}, "reply": 404},
        ]
    )
    assert one(eng.handle(request(ruri="sip:+4420@x.example"), CORE, UAC)).host == "127.0.0.40"
    forbidden = eng.handle(request(ruri="sip:+4420@x.example"), UDP4, UAC)
    assert forbidden.drop_reason == "route_reply" and parsed(forbidden.sends[0]).status == 403
    assert parsed(eng.handle(request(), UDP4, UAC).sends[0]).start_line == b"SIP/2.0 404 Not Found"
    # ACKs are never answered
    assert eng.handle(request("ACK", to_tag="x"), UDP4, UAC).sends == []


def test_in_dialog_loose_routed_requests_follow_their_route_not_the_rules() -> None:
    eng = engine(routes=[{"match": {}, "reply": 404}])
    bye = request("BYE", "sip:bob@127.0.0.1:5080", to_tag="t1", extra=["Route: <sip:127.0.0.1:5060;lr>"])
    assert one(eng.handle(bye, UDP4, UAC)).port == 5080
    # an initial request with a pre-loaded Route to us still goes through the rules
    invite = request(extra=["Route: <sip:127.0.0.1:5060;lr>"])
    assert parsed(eng.handle(invite, UDP4, UAC).sends[0]).status == 404


def test_tel_request_uri_needs_a_rule() -> None:
    eng = engine(routes=[{"match": {"ruri": "^tel:\\+1"}, "forward": "sip:127.0.0.50"}])
    assert one(eng.handle(request(ruri="tel:+15551234"), UDP4, UAC)).host == "127.0.0.50"
    out = eng.handle(request(ruri="tel:+445551234"), UDP4, UAC)
    assert parsed(out.sends[0]).status == 416


def test_a_request_sent_back_by_an_application_server_with_a_route_to_us_is_not_a_loop() -> None:
    eng = engine(
        routes=[
            {"match": {"tag": "core"}, "forward": "sip:127.0.0.1:5080"},
            {"forward": "sip:127.0.0.40:5060"},
        ]
    )
    to_as = one(eng.handle(request(), UDP4, UAC))
    assert (to_as.host, to_as.port) == ("127.0.0.40", 5060)
    # the AS pushes its own Via and a Route back to our core socket, Request-URI unchanged
    msg = to_as.data.split(b"\r\n", 1)
    back = (
        msg[0] + b"\r\nVia: SIP/2.0/UDP 127.0.0.40:5060;branch=z9hG4bK-as-1\r\n"
        b"Route: <sip:127.0.0.2:5070;lr>\r\n" + msg[1]
    )
    onward = one(eng.handle(back, CORE, ("127.0.0.40", 5060)))
    assert (onward.host, onward.port) == ("127.0.0.1", 5080)


def test_only_a_double_record_route_pair_is_removed_at_once() -> None:
    """Two single entries of ours in a row come from two passes (a spiral): one pass removes one."""
    data = request(
        "BYE",
        to_tag="t1",
        extra=["Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.2:5070;lr>, <sip:127.0.0.20:5090;lr>"],
    )
    send = one(engine().handle(data, UDP4, UAC))
    assert (send.host, send.port) == ("127.0.0.2", 5070)  # on to our own second entry
    assert parsed(send).values_of(b"route") == [b"<sip:127.0.0.2:5070;lr>, <sip:127.0.0.20:5090;lr>"]
