"""The pure parts of the socket handover (supervisor/handover.py): names, messages, who may take part, which
sockets match, and one exchange between two ends of a socketpair."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket

import pytest

from sipproxy.shared.socketspec import parse_row, parse_static_socket
from sipproxy.supervisor.binding import BindKey, bind_key, bind_socket
from sipproxy.supervisor.config import ConfigError, HandoverConfig, parse_config
from sipproxy.supervisor.handover import (
    HANDOVER,
    MAX_NAME,
    METRICS,
    MI,
    SIP,
    HandoverError,
    HandoverServer,
    Holder,
    Offered,
    address,
    bind_handover,
    decode,
    encode_offered,
    encode_op,
    find_predecessor,
    listener_offer,
    refusal,
    sip_offer,
)


def test_the_address_is_abstract_and_named_by_the_fleet() -> None:
    assert address("voip/sipsockets-proxy") == "\0sipsockets-handover/voip/sipsockets-proxy"
    longest = "x" * (MAX_NAME - 20) + secrets.token_hex(10)
    assert len(address(longest).encode()) == 108  # all of sun_path: an abstract name has no terminator
    bind_handover(longest).close()
    for bad in ("", "x" * (MAX_NAME + 1), "a\0b"):
        with pytest.raises(ValueError):
            address(bad)


@pytest.mark.parametrize(
    "item",
    [
        Offered(SIP, key=BindKey("udp", "10.0.0.1", 5060, False)),
        Offered(SIP, key=BindKey("tcp", "2001:db8::1", 5061, True)),
        Offered(MI, listen=("10.0.0.1", 8888)),
        Offered(METRICS, listen=("::", 8889)),
        Offered(HANDOVER),
    ],
)
def test_every_offered_socket_reads_back_as_sent(item: Offered) -> None:
    op, got, _body = decode(encode_offered(item))
    assert (op, got) == ("socket", item)


def test_other_messages_read_back_with_their_fields() -> None:
    assert decode(encode_op("offered", pid=42))[0::2] == ("offered", {"op": "offered", "pid": 42})
    assert decode(encode_op("release"))[0] == "release"


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"{}",
        b'{"op": 3}',
        b'{"op": "socket", "role": "sip", "key": ["sctp", "10.0.0.1", 5060, false]}',
        b'{"op": "socket", "role": "sip", "key": ["udp", "10.0.0.1", "5060", false]}',
        b'{"op": "socket", "role": "sip", "key": ["udp", "10.0.0.1"]}',
        b'{"op": "socket", "role": "mi", "listen": [1, 2]}',
        b'{"op": "socket", "role": "database"}',
    ],
)
def test_a_malformed_message_is_an_error_not_a_crash(data: bytes) -> None:
    with pytest.raises(HandoverError, match="malformed handover message"):
        decode(data)


def test_only_a_process_of_our_own_uid_takes_part() -> None:
    assert refusal(10001, 10001) is None
    assert refusal(0, 10001) == "it runs as uid 0, not 10001 as this proxy does"
    assert refusal(65534, 10001) is not None


def test_the_bind_key_is_what_the_kernel_binds() -> None:
    plain = parse_static_socket("udp:10.0.0.1:5060")
    # Advertised address, tag and ToS change on an open socket: the same key.
    dressed = parse_row("udp:10.0.0.1:5060", "203.0.113.1:5060", "edge", None, "IPTOS_LOWDELAY")
    assert bind_key(plain) == bind_key(dressed) == BindKey("udp", "10.0.0.1", 5060, False)
    # tcp, tls, ws and wss bind TCP; reuse_port must be set before bind, so it is part of the key.
    assert bind_key(parse_static_socket("tls:10.0.0.1:5060")) == BindKey("tcp", "10.0.0.1", 5060, False)
    assert bind_key(parse_row("udp:10.0.0.1:5060", None, None, "reuse_port", None)).reuse_port is True


def test_an_offer_names_each_open_socket_once() -> None:
    a, b, c = socket.socket(), socket.socket(), socket.socket()
    try:
        specs = [
            (parse_static_socket("udp:10.0.0.1:5060"), a),
            (parse_row("udp:10.0.0.1:5060", None, "again", None, None), b),
            (parse_static_socket("tcp:10.0.0.1:5060"), c),
        ]
        offer = sip_offer(specs)
        assert [(o.key, s) for o, s in offer] == [
            (BindKey("udp", "10.0.0.1", 5060, False), a),
            (BindKey("tcp", "10.0.0.1", 5060, False), c),
        ]
        listeners = {MI: (("10.0.0.1", 8888), [a]), METRICS: (("10.0.0.1", 8889), [b])}
        assert [o for o, _s in listener_offer(listeners, c)] == [
            Offered(MI, listen=("10.0.0.1", 8888)),
            Offered(METRICS, listen=("10.0.0.1", 8889)),
            Offered(HANDOVER),
        ]
    finally:
        for s in (a, b, c):
            s.close()


def test_the_config_key_turns_handover_on_with_a_fleet_name() -> None:
    assert parse_config({}).handover is None
    assert parse_config({"handover": False}).handover is None
    assert parse_config({"handover": True}).handover == HandoverConfig("default")
    assert parse_config({"handover": {"name": "voip/proxy"}}).handover == HandoverConfig("voip/proxy")
    for bad, problem in (
        ({"name": "x" * 200}, "handover.name"),
        ({"colour": "blue"}, "handover.colour: unknown key"),
        ("yes", "handover: must be true, false or a mapping"),
    ):
        with pytest.raises(ConfigError, match=problem):
            parse_config({"handover": bad})


async def test_one_exchange_hands_every_socket_and_the_listeners_over() -> None:
    """Both sides in one process: the new side gets the old side's very sockets."""
    name = f"unit-{os.getpid()}-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = parse_static_socket(f"udp:127.0.0.1:{port}")
    udp = bind_socket(spec)
    mi = socket.create_server(("127.0.0.1", 0))
    released = asyncio.Event()

    async def release() -> None:
        released.set()

    async def reclaim() -> None:
        raise AssertionError("the successor did not die")

    listener = bind_handover(name)
    holder = Holder(
        lambda: sip_offer([(spec, udp)]) + listener_offer({MI: (("127.0.0.1", 8888), [mi])}, listener),
        release,
        reclaim,
    )
    server = HandoverServer(name, listener, holder)
    server.start()
    pred = await find_predecessor(name)
    assert pred is not None and pred.pid == os.getpid()
    assert server.attached
    taken = pred.take(spec)
    assert taken is not None and taken.fileno() != udp.fileno()
    # The same open socket, not a copy bound beside it.
    assert os.fstat(taken.fileno()).st_ino == os.fstat(udp.fileno()).st_ino
    assert not os.get_inheritable(taken.fileno())  # never leaked into the workers the supervisor starts
    assert pred.take(spec) is None  # taken once
    [inherited_mi] = pred.take_listeners(MI, ("127.0.0.1", 8888))
    assert os.fstat(inherited_mi.fileno()).st_ino == os.fstat(mi.fileno()).st_ino
    assert pred.take_listeners(METRICS, ("127.0.0.1", 8889)) == []
    assert pred.handover is not None
    assert os.fstat(pred.handover.fileno()).st_ino == os.fstat(listener.fileno()).st_ino
    # A second successor is not served while the first is attached.
    assert await asyncio.wait_for(find_predecessor_or_timeout(name), 10) == "no answer"
    await asyncio.wait_for(pred.release(), 10)
    assert released.is_set() and pred.released and server.handovers == 1
    await server.close()
    await asyncio.wait_for(pred.until_gone(), 10)
    for s in (udp, mi, taken, inherited_mi):
        s.close()
    pred.close()


async def find_predecessor_or_timeout(name: str) -> str:
    try:
        got = await asyncio.wait_for(find_predecessor(name), 1)
    except TimeoutError:
        return "no answer"
    if got is not None:
        got.close()
    return "answered"
