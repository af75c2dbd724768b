"""TLS, WS and WSS clients through the engine: Via transports, Record-Route with flow tokens, in-dialog
requests and responses sent back over the client's own connection, and forged or stale tokens refused."""

from __future__ import annotations

import pytest

from sipproxy.sip import flowtoken
from sipproxy.sip.engine import Listener, Outcome, Send, SipEngine
from sipproxy.sip.headers import addr_uri, split_values
from sipproxy.sip.message import parse_message
from sipproxy.sip.routing import parse_routes
from sipproxy.sip.uri import parse_sip_uri
from tests.unit.sip.support import UDP4, StaticListeners, answer, one, parsed, request, vias

KEY = bytes(range(32))
TLS = Listener("tls", "127.0.0.1", 5061)
WS = Listener("ws", "127.0.0.1", 8080)
WSS = Listener("wss", "127.0.0.1", 8443, advertised_host="edge.example.com", advertised_port=443)
TCP = Listener("tcp", "127.0.0.1", 5060)
LISTENERS = (UDP4, TCP, TLS, WS, WSS)
UAS = ("127.0.0.20", 5080)
BROWSER = ("127.0.0.30", 50123)


class Connection:
    """What the worker's stream connections show the engine: the peer and the local socket."""

    def __init__(self, listener: Listener, peer: tuple[str, int]) -> None:
        self.listener = listener
        self.peer = peer


def engines(routes: object = None) -> list[SipEngine]:
    """The engine with and without the C scanner: every assertion holds for both."""
    listeners = StaticListeners(LISTENERS)
    rules = parse_routes(routes)
    return [
        SipEngine(rules, listeners, flow_key=KEY),
        SipEngine(rules, listeners, flow_key=KEY, scan=False),
    ]


def browser_invite(transport: str = "WSS") -> bytes:
    return request(
        "INVITE",
        "sip:bob@127.0.0.20:5080",
        via=f"SIP/2.0/{transport} df7jal23ls0d.invalid;branch=z9hG4bK-ws-1",
        extra=["Contact: <sip:alice@df7jal23ls0d.invalid;transport=ws;ob>"],
    ).replace(b"Contact: <sip:alice@127.0.0.10:5061>\r\n", b"")


def record_routes(data: bytes) -> list[bytes]:
    return [v for value in parse_message(data).values_of(b"record-route") for v in split_values(value)]


def user_of(entry: bytes) -> bytes:
    uri = parse_sip_uri(addr_uri(entry))
    assert uri is not None and uri.user is not None, entry
    return uri.user


def conn_id(token: bytes) -> int:
    flow = flowtoken.check(KEY, token)
    assert flow is not None
    return flow.conn_id


def only(outcome: Outcome) -> Send:
    assert len(outcome.sends) == 1, outcome
    return outcome.sends[0]


@pytest.mark.parametrize(
    ("listener", "via"),
    [(TLS, b"SIP/2.0/TLS 127.0.0.1:5061;"), (WS, b"SIP/2.0/WS 127.0.0.1:8080;"), (WSS, b"SIP/2.0/WSS edge.")],
)
def test_our_via_names_the_transport_of_the_socket_it_leaves_from(listener: Listener, via: bytes) -> None:
    for eng in engines([{"forward": f"sip:127.0.0.20:5080;transport={listener.proto}"}]):
        send = one(eng.handle(request(), UDP4, ("127.0.0.10", 5061)))
        assert (send.listener, send.proto, send.connection) == (listener, listener.proto, None)
        assert vias(parsed(send))[0].startswith(via)
        # the socket changed transport: a double Record-Route, the entry facing the next hop names it
        assert record_routes(send.data)[0].endswith(f";transport={listener.proto};r2=on;lr>".encode())


@pytest.mark.parametrize("listener", [TLS, WS, WSS])
def test_the_record_route_facing_a_tls_or_websocket_client_carries_its_flow_token(listener: Listener) -> None:
    for eng in engines():
        conn = Connection(listener, BROWSER)
        send = one(eng.handle(browser_invite(listener.proto.upper()), listener, BROWSER, conn))
        assert (send.listener, send.proto) == (UDP4, "udp")
        facing_next, facing_back = record_routes(send.data)
        assert facing_next == b"<sip:127.0.0.1:5060;r2=on;lr>"
        uri = parse_sip_uri(addr_uri(facing_back))
        assert uri is not None and uri.transport == listener.proto and uri.param(b"r2") == b"on"
        flow = flowtoken.check(KEY, user_of(facing_back))
        assert flow is not None and flow.is_peer(*BROWSER)
        # the same token names the connection in our Via
        assert vias(parsed(send))[0].endswith(b"-" + user_of(facing_back))


def test_a_tcp_client_gets_no_flow_token_in_the_record_route_but_one_in_the_via() -> None:
    for eng in engines():
        conn = Connection(TCP, ("127.0.0.10", 40000))
        send = one(
            eng.handle(request(via="SIP/2.0/TCP 127.0.0.10:5061;branch=z9hG4bK-t"), TCP, conn.peer, conn)
        )
        assert all(b"@" not in rr for rr in record_routes(send.data))
        sk = vias(parsed(send))[0].rsplit(b";sk=", 1)[1]
        assert flowtoken.check(KEY, sk.split(b"-")[2]) is not None


def test_a_single_record_route_on_one_websocket_socket_carries_the_token() -> None:
    for eng in engines([{"forward": "sip:127.0.0.20:5080;transport=ws"}]):
        conn = Connection(WS, BROWSER)
        send = one(eng.handle(browser_invite("WS"), WS, BROWSER, conn))
        (rr,) = record_routes(send.data)
        assert rr.startswith(b"<sip:") and b"@127.0.0.1:8080;transport=ws;lr>" in rr


def dialog(eng: SipEngine, listener: Listener = WSS) -> tuple[Connection, bytes, list[bytes]]:
    """A browser's INVITE through `eng`: its connection, what the UAS got, the UAS's route set."""
    conn = Connection(listener, BROWSER)
    forwarded = one(eng.handle(browser_invite(listener.proto.upper()), listener, BROWSER, conn)).data
    return conn, forwarded, record_routes(forwarded)


def uas_bye(route_set: list[bytes], ruri: str = "sip:alice@df7jal23ls0d.invalid;transport=ws") -> bytes:
    return request(
        "BYE",
        ruri,
        via=f"SIP/2.0/UDP {UAS[0]}:{UAS[1]};branch=z9hG4bK-uas-bye",
        to_tag="uas-1",
        cseq=2,
        extra=["Route: " + b", ".join(route_set).decode()],
    )


def test_responses_go_back_over_the_browsers_connection() -> None:
    for eng in engines():
        conn, forwarded, _ = dialog(eng)
        back = one(eng.handle(answer(forwarded, 200, "OK"), UDP4, UAS))
        assert (back.connection, back.listener, back.proto) == (conn, WSS, "wss")


def test_an_in_dialog_request_from_the_callee_goes_over_the_browsers_connection() -> None:
    for eng in engines():
        conn, _, route_set = dialog(eng)
        # The UAS keeps the Record-Route as it came (RFC 3261 12.1.1): its Route set in the same order.
        send = one(eng.handle(uas_bye(route_set), UDP4, UAS))
        assert (send.connection, send.listener, send.proto) == (conn, WSS, "wss")
        assert (send.host, send.port) == BROWSER
        msg = parsed(send)
        assert msg.start_line == b"BYE sip:alice@df7jal23ls0d.invalid;transport=ws SIP/2.0"
        assert vias(msg)[0].startswith(b"SIP/2.0/WSS edge.example.com:443;branch=z9hG4bKsps")
        assert b"route" not in msg.index
        # the browser's 200 to that BYE goes back to the UAS over UDP
        ok = one(eng.handle(answer(send.data, 200, "OK"), WSS, BROWSER, conn))
        assert (ok.listener, ok.proto, (ok.host, ok.port)) == (UDP4, "udp", UAS)


def test_an_in_dialog_request_from_the_browser_itself_follows_its_route_set() -> None:
    for eng in engines():
        conn, _, route_set = dialog(eng)
        # The browser's route set is the reverse: the entry with its own token first.
        ack = request(
            "ACK",
            "sip:bob@127.0.0.20:5080",
            via="SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK-ws-ack",
            to_tag="uas-1",
            extra=["Route: " + b", ".join(reversed(route_set)).decode()],
        )
        send = one(eng.handle(ack, WSS, BROWSER, conn))
        assert (send.listener, send.proto, send.connection, (send.host, send.port)) == (
            UDP4,
            "udp",
            None,
            UAS,
        )


def test_a_forged_flow_token_is_refused_with_403() -> None:
    for eng in engines():
        _, _, route_set = dialog(eng)
        token = user_of(route_set[1])
        forged_token = flowtoken.make(bytes(32), conn_id(token), BROWSER)
        for bad in (forged_token, token[:-1] + (b"0" if token[-1:] != b"0" else b"1"), b"alice"):
            forged = [route_set[0], route_set[1].replace(token, bad)]
            outcome = eng.handle(uas_bye(forged), UDP4, UAS)
            assert outcome.drop_reason == "flow_token_forged", bad
            reply = only(outcome)
            assert parsed(reply).status == 403 and (reply.host, reply.port) == UAS


def test_a_flow_that_is_gone_is_refused_with_430() -> None:
    for eng in engines():
        conn, _, route_set = dialog(eng)
        eng.forget_connection(conn)
        outcome = eng.handle(uas_bye(route_set), UDP4, UAS)
        assert outcome.drop_reason == "flow_failed" and parsed(only(outcome)).status == 430


def test_a_token_for_an_id_now_naming_another_peers_connection_is_refused() -> None:
    """Connection ids are reused; the token is bound to the peer, so a newer connection is never reached."""
    for eng in engines():
        conn, forwarded, route_set = dialog(eng)
        conn.peer = ("127.0.0.31", 50123)  # the id now names a connection from elsewhere
        outcome = eng.handle(uas_bye(route_set), UDP4, UAS)
        assert outcome.drop_reason == "flow_failed"
        back = one(eng.handle(answer(forwarded, 200, "OK"), UDP4, UAS))
        assert back.connection is None  # RFC 3261 18.2.2: a new connection to the Via's address


def test_a_response_naming_a_connection_with_a_forged_token_is_dropped() -> None:
    """Issue 14: a forged UDP response must not be written onto another client's stream connection."""
    for eng in engines():
        conn = Connection(TCP, ("127.0.0.10", 40000))
        data = request(via="SIP/2.0/TCP 127.0.0.10:5061;branch=z9hG4bK-t")
        forwarded = one(eng.handle(data, TCP, conn.peer, conn)).data
        our_via = vias(parse_message(forwarded))[0]
        sk = our_via.rsplit(b";sk=", 1)[1]
        key, token = sk.rsplit(b"-", 1)
        cid = conn_id(token)
        # the old plain form (a bare id), a token made under another key, a token with one digit changed
        for bad in (b"%x" % cid, flowtoken.make(bytes(32), cid, conn.peer), token[:-2] + b"00"):
            if bad == token:
                continue
            response = answer(forwarded, 200, "OK").replace(sk, key + b"-" + bad)
            outcome = eng.handle(response, UDP4, UAS)
            assert outcome.sends == [] and outcome.drop_reason == "flow_token_forged", bad
        # the genuine one goes back on the connection
        assert one(eng.handle(answer(forwarded, 200, "OK"), UDP4, UAS)).connection is conn


def test_a_token_of_another_proxy_does_not_reach_this_ones_connections() -> None:
    ours, theirs = SipEngine([], StaticListeners(LISTENERS)), SipEngine([], StaticListeners(LISTENERS))
    conn = Connection(WSS, BROWSER)
    theirs_fwd = one(theirs.handle(browser_invite(), WSS, BROWSER, conn)).data
    ours.handle(browser_invite(), WSS, BROWSER, conn)  # the same connection id exists here too
    outcome = ours.handle(uas_bye(record_routes(theirs_fwd)), UDP4, UAS)
    assert outcome.drop_reason == "flow_token_forged"


@pytest.mark.parametrize("length", [1, 12, 43, 45, 67, 68, 69, 100])
def test_an_sk_token_of_any_other_shape_is_forged_on_both_paths(length: int) -> None:
    """The scanner reads at most a token's length of hex; what it declines the general path refuses alike."""
    outcomes = []
    for eng in engines():
        conn = Connection(TCP, ("127.0.0.10", 40000))
        data = request(via="SIP/2.0/TCP 127.0.0.10:5061;branch=z9hG4bK-t")
        forwarded = one(eng.handle(data, TCP, conn.peer, conn)).data
        sk = vias(parse_message(forwarded))[0].rsplit(b";sk=", 1)[1]
        key = sk.rsplit(b"-", 1)[0]
        response = answer(forwarded, 200, "OK").replace(sk, key + b"-" + (b"a" * length))
        outcomes.append(eng.handle(response, UDP4, UAS))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0].drop_reason == "flow_token_forged"
