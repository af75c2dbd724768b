"""Flow tokens name a connection so that only this proxy can make one (RFC 5626 5.2 style)."""

from __future__ import annotations

import re

import pytest

from sipproxy.sip import flowtoken
from sipproxy.sip.flowtoken import MAX_TOKEN_LENGTH, Flow, check, make, new_key
from sipproxy.sip.uri import parse_sip_uri

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
# What the runtime's connection ids look like: (worker index + 1) << 20 | counter.
CONN = (3 << 20) | 41
PEERS = [("127.0.0.10", 50000), ("2001:db8::7", 5061), ("::ffff:192.0.2.1", 0), ("10.0.0.1", 65535)]


@pytest.mark.parametrize("peer", PEERS)
def test_round_trip(peer: tuple[str, int]) -> None:
    token = make(KEY, CONN, peer)
    flow = check(KEY, token)
    assert flow is not None
    assert flow.conn_id == CONN
    assert flow.is_peer(*peer)
    assert check(KEY, token.decode()) == flow  # str or bytes


def test_the_peer_is_compared_in_any_spelling_of_its_address() -> None:
    flow = check(KEY, make(KEY, CONN, ("2001:db8::7", 5061)))
    assert flow is not None and flow == Flow(CONN, "2001:db8::7", 5061)
    assert flow.is_peer("2001:0db8:0:0:0:0:0:7", 5061)
    assert flow.is_peer("[2001:db8::7]", 5061)


def test_a_wrong_peer_is_refused_by_the_connection_check() -> None:
    flow = check(KEY, make(KEY, CONN, ("127.0.0.10", 50000)))
    assert flow is not None
    assert not flow.is_peer("127.0.0.10", 50001)  # the id now names a connection from another port
    assert not flow.is_peer("127.0.0.11", 50000)
    assert not flow.is_peer("not-an-ip", 50000)


@pytest.mark.parametrize("peer", PEERS)
def test_any_changed_character_is_refused(peer: tuple[str, int]) -> None:
    token = make(KEY, CONN, peer).decode()
    for i, c in enumerate(token):
        for other in "0123456789abcdef":
            if other != c:
                assert check(KEY, token[:i] + other + token[i + 1 :]) is None, (i, other)


def test_another_key_is_refused() -> None:
    token = make(KEY, CONN, PEERS[0])
    assert check(OTHER_KEY, token) is None
    assert check(new_key(), token) is None


def test_a_token_for_another_peer_cannot_be_made_by_editing_one() -> None:
    # Replace the peer bytes of a genuine token with another address: the hash no longer matches.
    token = make(KEY, CONN, ("127.0.0.10", 50000)).decode()
    forged = token[:12] + (50000).to_bytes(2, "big").hex() + bytes((127, 0, 0, 66)).hex() + token[24:]
    assert len(forged) == len(token)
    assert check(KEY, forged) is None


def test_spellings_other_than_ours_are_refused() -> None:
    token = make(KEY, CONN, PEERS[0]).decode()
    assert check(KEY, token.upper()) is None
    assert check(KEY, token[:10] + " " + token[11:]) is None
    assert check(KEY, token + "00") is None
    assert check(KEY, token[:-2]) is None
    assert check(KEY, "") is None
    assert check(KEY, "é" * len(token)) is None
    assert check(KEY, "0" * 1_000_000) is None  # long junk is refused by its length alone


def test_length_is_bounded_and_the_token_fits_a_uri_user_part_and_a_via_parameter() -> None:
    longest = make(KEY, (1 << 48) - 1, ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535))
    assert len(longest) == MAX_TOKEN_LENGTH <= 68
    assert len(make(KEY, 1, ("127.0.0.1", 5060))) < MAX_TOKEN_LENGTH
    for token in (longest, make(KEY, CONN, PEERS[0])):
        assert re.fullmatch(rb"[0-9a-f]+", token)  # the `sk` grammar our scanner reads, and a URI user
        uri = parse_sip_uri(b"sip:" + token + b"@192.0.2.1:443;transport=ws;lr;ob")
        assert uri is not None and uri.user == token


def test_keys_and_arguments_out_of_range_are_refused() -> None:
    for key in (b"", b"short", bytes(33)):
        with pytest.raises(ValueError):
            make(key, CONN, PEERS[0])
        with pytest.raises(ValueError):
            check(key, b"00")
    for conn_id in (-1, 1 << 48):
        with pytest.raises(ValueError):
            make(KEY, conn_id, PEERS[0])
    with pytest.raises(ValueError):
        make(KEY, CONN, ("example.com", 5060))
    with pytest.raises(ValueError):
        make(KEY, CONN, ("127.0.0.1", 70000))
    assert len(new_key()) == flowtoken.MAX_KEY_BYTES
    assert new_key() != new_key()
