"""The layers a worker adds to a stream connection, driven byte by byte without sockets: TLS over memory BIOs
(handshake, SNI, client certificates, refusals) and the WebSocket codec (upgrade, frames, refusals)."""

from __future__ import annotations

import dataclasses
import logging
import ssl
from typing import Any

import pytest

from sipproxy.shared.tls_domains import CLIENT_DOMAIN, SERVER_DOMAIN, TlsDomain
from sipproxy.sip.websocket import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, encode_close, encode_frame
from sipproxy.worker.tcp import StreamRefused
from sipproxy.worker.tls import TlsContexts, TlsSession
from sipproxy.worker.ws import WsCodec
from tests.tlscerts import Issued, issue, make_ca

CA = make_ca()
A = issue(CA, "a.example.com", dns=["a.example.com"])
B = issue(CA, "b.example.com", dns=["b.example.com"])
PHONE = issue(CA, "phone", client=True)
MASK = b"\x01\x02\x03\x04"
LOCAL = ("127.0.0.1", 5061)


def server(name: str, leaf: Issued, **changes: object) -> TlsDomain:
    base = TlsDomain(
        name,
        SERVER_DOMAIN,
        match_domains=(f"{name}.example.com",),
        verify_cert=False,
        require_cert=False,
        certificate=leaf.cert_pem,
        private_key=leaf.key_pem,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def contexts(*domains: TlsDomain) -> TlsContexts:
    tls = TlsContexts(logging.getLogger("test"))
    tls.apply(1, list(domains))
    return tls


def client_session(sni: str | None, cert: Issued | None = None, ca: Issued = CA) -> TlsSession:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    ctx.check_hostname = sni is not None
    if cert is not None:
        import tempfile

        with tempfile.NamedTemporaryFile() as f:
            f.write(cert.cert_pem + cert.key_pem)
            f.flush()
            ctx.load_cert_chain(f.name)
    return TlsSession(ctx, server_side=False, server_hostname=sni)


def handshake(client: TlsSession, server: TlsSession) -> None:
    """Carry bytes between the two until both are done (or one refuses: StreamRefused)."""
    to_server = client.start()
    for _ in range(10):
        if client.handshake_done and server.handshake_done:
            return
        _, to_client = server.receive(to_server)
        _, to_server = client.receive(to_client)
    raise AssertionError("the handshake did not finish")


def session_for(tls: TlsContexts) -> TlsSession:
    session = tls.server_session(LOCAL)
    assert isinstance(session, TlsSession)
    return session


def peer_subject(session: TlsSession) -> str:
    cert: Any = session.obj.getpeercert()
    return next(str(v) for ((k, v),) in cert["subject"] if k == "commonName")


@pytest.mark.parametrize(
    ("sni", "subject"), [("a.example.com", "a.example.com"), ("b.example.com", "b.example.com")]
)
def test_sni_picks_the_server_domain_and_data_flows_both_ways(sni: str, subject: str) -> None:
    tls = contexts(server("a", A), server("b", B))
    client, srv = client_session(sni), session_for(tls)
    handshake(client, srv)
    assert peer_subject(client) == subject
    assert srv.check() is None
    plain, _ = srv.receive(client.send(b"OPTIONS sip:x SIP/2.0\r\n\r\n"))
    assert plain == b"OPTIONS sip:x SIP/2.0\r\n\r\n"
    plain, _ = client.receive(srv.send(b"SIP/2.0 200 OK\r\n\r\n"))
    assert plain == b"SIP/2.0 200 OK\r\n\r\n"


def test_an_unknown_name_fails_the_handshake() -> None:
    tls = contexts(server("a", A))
    with pytest.raises(StreamRefused) as refused:
        handshake(client_session("c.example.com"), session_for(tls))
    assert refused.value.reason == "tls_handshake_failed"
    assert refused.value.reply  # the alert the client is sent


def test_a_client_that_does_not_trust_us_ends_the_handshake() -> None:
    tls = contexts(server("a", A))
    client = client_session("a.example.com", ca=make_ca("another CA"))
    with pytest.raises(StreamRefused) as refused:
        handshake(client, session_for(tls))
    assert refused.value.reason == "tls_handshake_failed"


def test_no_domain_for_the_local_address_fails_at_once() -> None:
    tls = contexts(server("a", A, match_addresses=("127.0.0.1:5062",)))
    assert tls.server_session(LOCAL) == "tls_no_server_domain"
    assert isinstance(tls.server_session(("127.0.0.1", 5062)), TlsSession)


def test_a_domain_requiring_a_client_certificate_is_enforced_after_an_sni_switch() -> None:
    """Two domains on one address, one of them asking for client certificates: the connection starts with the
    first one's context and SNI switches it; OpenSSL keeps the first verify mode, so check() enforces it."""
    strict = server("b", B, verify_cert=True, require_cert=True, ca_list=CA.cert_pem)
    tls = contexts(server("a", A), strict)
    client, srv = client_session("b.example.com"), session_for(tls)
    handshake(client, srv)
    assert srv.check() == "TLS domain 'b' requires a client certificate and none was presented"
    with_cert, srv = client_session("b.example.com", PHONE), session_for(tls)
    handshake(with_cert, srv)
    assert srv.check() is None


def test_a_new_generation_serves_new_connections_and_old_sessions_keep_theirs() -> None:
    tls = contexts(server("a", A, match_domains=("*",)))
    old_client, old = client_session(None), session_for(tls)
    handshake(old_client, old)
    tls.apply(2, [server("a", B, match_domains=("*",))])
    new_client, new = client_session(None), session_for(tls)
    handshake(new_client, new)
    assert (peer_subject(old_client), peer_subject(new_client)) == ("a.example.com", "b.example.com")
    plain, _ = old.receive(old_client.send(b"still here"))
    assert plain == b"still here" and old.check() is None


def test_client_sessions_come_from_the_client_domain_of_the_next_hop() -> None:
    carrier = TlsDomain("carrier", CLIENT_DOMAIN, match_domains=("*.example.com",), ca_list=CA.cert_pem)
    tls = contexts(server("a", A), carrier)
    session = tls.client_session("a.example.com", "127.0.0.1", 5061)
    assert isinstance(session, TlsSession)
    srv = session_for(tls)
    handshake(session, srv)
    assert peer_subject(session) == "a.example.com"
    refused = tls.client_session("carrier.net", "127.0.0.1", 5061)
    assert isinstance(refused, str) and refused.startswith("no TLS client domain for carrier.net")
    # by IP: no SNI, and the chain alone is checked
    by_ip = tls.client_session("127.0.0.1", "127.0.0.1", 5061)
    assert isinstance(by_ip, str)  # the domain matches names only


# --- WebSocket ------------------------------------------------------------------------------------------

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: edge.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: sip\r\nOrigin: https://phone.example.com\r\n\r\n"
)
SIP = b"OPTIONS sip:edge.example.com SIP/2.0\r\n\r\n"


def test_the_upgrade_then_one_sip_message_per_websocket_message() -> None:
    codec = WsCodec()
    assert codec.partial and codec.keepalive() == b""
    assert codec.receive(UPGRADE[:20]) == ([], b"", False)
    first = encode_frame(OP_TEXT, SIP, mask=MASK)
    messages, answer, closing = codec.receive(UPGRADE[20:] + first[:5])
    assert (
        answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        and b"Sec-WebSocket-Protocol: sip" in answer
    )
    assert (messages, closing, codec.partial) == ([], False, True)
    messages, answer, closing = codec.receive(first[5:] + encode_frame(OP_PING, b"hi", mask=MASK))
    assert messages == [SIP] and answer == encode_frame(OP_PONG, b"hi") and not closing
    assert not codec.partial
    assert codec.encode(b"SIP/2.0 200 OK\r\n\r\n") == encode_frame(OP_TEXT, b"SIP/2.0 200 OK\r\n\r\n")
    assert codec.keepalive() == encode_frame(OP_PING, b"")
    messages, answer, closing = codec.receive(encode_frame(OP_CLOSE, (1000).to_bytes(2, "big"), mask=MASK))
    assert (messages, answer, closing) == ([], encode_frame(OP_CLOSE, (1000).to_bytes(2, "big")), True)


def test_a_refused_upgrade_is_answered_and_named() -> None:
    with pytest.raises(StreamRefused) as refused:
        WsCodec().receive(UPGRADE.replace(b"Sec-WebSocket-Protocol: sip", b"Sec-WebSocket-Protocol: chat"))
    assert refused.value.reason == "ws_no_sip_protocol"
    assert refused.value.reply.startswith(b"HTTP/1.1 400 Bad Request (Sec-WebSocket-Protocol must list sip)")


def test_a_broken_frame_is_answered_with_its_close_code() -> None:
    codec = WsCodec()
    codec.receive(UPGRADE)
    with pytest.raises(StreamRefused) as refused:
        codec.receive(encode_frame(OP_TEXT, SIP))  # unmasked
    assert refused.value.reason == "ws_unmasked"
    assert refused.value.reply == encode_close(1002, "client frames must be masked")


def test_the_peers_close_notify_is_an_orderly_end_after_what_came_before_it() -> None:
    tls = contexts(server("a", A))
    client, srv = client_session("a.example.com"), session_for(tls)
    handshake(client, srv)
    last = client.send(b"BYE sip:x SIP/2.0\r\n\r\n")
    try:
        client.obj.unwrap()
    except ssl.SSLWantReadError:
        pass  # close_notify sent; the answer would come next
    plain, _ = srv.receive(last + client._out.read())
    assert plain == b"BYE sip:x SIP/2.0\r\n\r\n" and srv.peer_closed
