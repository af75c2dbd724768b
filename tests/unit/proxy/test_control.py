"""The supervisor-worker control protocol: every message survives the wire, anything else is refused."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest

from sipproxy.shared.channel import Channel, ChannelClosed, make_pair, memory_file, read_memory_file
from sipproxy.shared.control import (
    COMMANDS,
    REPLIES,
    STATS_PART,
    Ack,
    Add,
    Command,
    Error,
    Init,
    ProtocolError,
    Remove,
    Reply,
    Stats,
    StatsPart,
    StatsReply,
    Stop,
    Sync,
    TlsDomains,
    Update,
    decode_command,
    decode_reply,
    encode,
    listener_from_wire,
    listener_to_wire,
    read_tls_domains_document,
    tls_domains_document,
)
from sipproxy.shared.counters import SocketCounters
from sipproxy.shared.tls_domains import CLIENT_DOMAIN, SERVER_DOMAIN, TlsDomain
from sipproxy.sip.listeners import Listener
from tests.tlscerts import issue, make_ca

UDP = Listener("udp", "127.0.0.1", 5060)
TCP6 = Listener("tcp", "2001:db8::1", 5070, "sip.example.com", 5080, "core")

COMMAND_SAMPLES: list[Command] = [
    Init(routes=(), tcp_idle_timeout=120.0),
    Init(
        routes=({"match": {"ruri_user_prefix": "+44"}, "to": "10.0.0.1:5060"}, {"to": "[::1]:5062"}),
        tcp_idle_timeout=0.5,
        record_route=False,
        flow_key="00" * 16,
    ),
    Init(routes=(), tcp_idle_timeout=1, flow_key="0123456789abcdef" * 4),
    TlsDomains(generation=3, size=12345),
    Add(1, UDP, serve=True),
    Add(7, TCP6, serve=False),
    Update(1, UDP),
    Remove(7),
    Sync(3),
    Stats(4),
    Stop(),
]
REPLY_SAMPLES: list[Reply] = [
    Ack(3),
    StatsPart({}),
    StatsPart({"udp:127.0.0.1:5060": SocketCounters(1, 2, 3, 4, {"parse_error": 5})}),
    StatsReply(4, {"tcp:[2001:db8::1]:5070": SocketCounters(), "udp:127.0.0.1:5060": SocketCounters(9, 9)}),
    Error(7, "[Errno 9] Bad file descriptor"),
]


def test_the_samples_cover_every_message() -> None:
    assert {type(m) for m in COMMAND_SAMPLES} == set(COMMANDS)
    assert {type(m) for m in REPLY_SAMPLES} == set(REPLIES)


@pytest.mark.parametrize("message", COMMAND_SAMPLES, ids=repr)
def test_every_command_round_trips(message: Command) -> None:
    assert decode_command(encode(message)) == message


@pytest.mark.parametrize("message", REPLY_SAMPLES, ids=repr)
def test_every_reply_round_trips(message: Reply) -> None:
    assert decode_reply(encode(message)) == message


@pytest.mark.parametrize("listener", [UDP, TCP6, Listener("udp", "::1", 5060, None, None, "edge")], ids=repr)
def test_a_listener_round_trips_and_keeps_its_identity(listener: Listener) -> None:
    back = listener_from_wire(json.loads(json.dumps(listener_to_wire(listener))))
    assert back == listener
    assert hash(back) == hash(listener)


ADD = {"op": "add", "sid": 1, "listener": listener_to_wire(UDP), "serve": True}


def _with(base: dict[str, object], **changes: object) -> bytes:
    out = {**base, **changes}
    return json.dumps({k: v for k, v in out.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{not json", "control message is not JSON"),
        (b"\xff\xfe", "control message is not JSON"),
        (b"[1, 2]", "control message must be a JSON object, not list"),
        (b'{"sid": 1}', "control message has no op"),
        (b'{"op": 3}', "control message has no op"),
        (b'{"op": "frobnicate"}', "unknown control message 'frobnicate'"),
        (b'{"op": "ack", "seq": 1}', "control message 'ack' does not go supervisor to worker"),
        (_with(ADD, sid=...), "control message 'add': field 'sid' is missing"),
        (_with(ADD, sid="1"), "control message 'add': field 'sid' must be an integer >= 0, not '1'"),
        (_with(ADD, sid=True), "control message 'add': field 'sid' must be an integer >= 0, not True"),
        (_with(ADD, serve=1), "control message 'add': field 'serve' must be true or false, not 1"),
        (_with(ADD, colour="blue"), "control message 'add': unexpected field 'colour'"),
        (_with(ADD, listener=[]), "control message 'add': field 'listener': listener must be an object"),
        (
            _with(ADD, listener={**listener_to_wire(UDP), "port": "5060"}),
            "control message 'add': field 'listener': listener: field 'port' must be an integer >= 0",
        ),
        (
            _with(ADD, listener={k: v for k, v in listener_to_wire(UDP).items() if k != "tag"}),
            "control message 'add': field 'listener': listener: field 'tag' is missing",
        ),
        (b'{"op": "sync", "seq": -1}', "control message 'sync': field 'seq' must be an integer >= 0, not -1"),
        (b'{"op": "remove"}', "control message 'remove': field 'sid' is missing"),
        (
            b'{"op": "init", "routes": {}, "tcp_idle_timeout": 1, "record_route": true, "flow_key": ""}',
            "control message 'init': field 'routes' must be a list",
        ),
        (
            b'{"op": "init", "routes": [], "tcp_idle_timeout": 0, "record_route": true, "flow_key": ""}',
            "control message 'init': field 'tcp_idle_timeout' must be a number of seconds > 0",
        ),
        (
            b'{"op": "init", "routes": [], "tcp_idle_timeout": 1, "record_route": true}',
            "control message 'init': field 'flow_key' is missing",
        ),
        (
            b'{"op": "init", "routes": [], "tcp_idle_timeout": 1, "record_route": true, "flow_key": "abc"}',
            "control message 'init': field 'flow_key' must be 16 to 32 bytes in lowercase hex, or empty",
        ),
        (
            b'{"op": "init", "routes": [], "tcp_idle_timeout": 1, "record_route": true, "flow_key": "'
            + b"AB" * 16
            + b'"}',
            "control message 'init': field 'flow_key' must be 16 to 32 bytes in lowercase hex, or empty",
        ),
        (
            b'{"op": "tls_domains", "generation": 1, "size": "big"}',
            "control message 'tls_domains': field 'size' must be an integer >= 0",
        ),
        (b'{"op": "stop", "now": true}', "control message 'stop': unexpected field 'now'"),
    ],
)
def test_a_malformed_command_is_refused_naming_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_command(data)
    assert str(info.value).startswith(problem)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"op": "sync", "seq": 1}', "control message 'sync' does not go worker to supervisor"),
        (b'{"op": "stats_reply", "seq": 1}', "control message 'stats_reply': field 'counters' is missing"),
        (
            b'{"op": "stats_part", "counters": []}',
            "control message 'stats_part': field 'counters' must be an object of counters by socket label",
        ),
        (
            b'{"op": "stats_reply", "seq": 1, "counters": {"udp:127.0.0.1:5060": [1, 2, 3]}}',
            "control message 'stats_reply': field 'counters': socket 'udp:127.0.0.1:5060': "
            "counters must be a list of 6 items",
        ),
        (
            b'{"op": "stats_part", "counters": '
            b'{"udp:127.0.0.1:5060": [1, 2, 3, 4, {"parse_error": "x"}, 0]}}',
            "control message 'stats_part': field 'counters': socket 'udp:127.0.0.1:5060': "
            "counters: drops must map reasons to integers >= 0",
        ),
        (
            b'{"op": "error", "sid": 1, "error": null}',
            "control message 'error': field 'error' must be a string",
        ),
    ],
)
def test_a_malformed_reply_is_refused_naming_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_reply(data)
    assert str(info.value).startswith(problem)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_packets_of_any_size_up_to_the_limit_arrive_whole_and_one_at_a_time() -> None:
    parent_sock, child_sock = make_pair()
    supervisor = Channel(parent_sock, decode_reply)
    worker = Channel(child_sock, decode_command)
    try:
        labels = (f"udp:10.0.{i // 250}.{i % 250}:5060" for i in range(STATS_PART))
        big = StatsReply(7, {label: SocketCounters(i, i, i, i) for i, label in enumerate(labels)})
        assert len(encode(big)) > 16 << 10  # several pages of the buffer
        await worker.send(big)
        await worker.send(Ack(8))
        await worker.send(StatsPart({"udp:127.0.0.1:5060": SocketCounters(1)}))
        assert await asyncio.wait_for(supervisor.recv(), 5) == (big, None)
        assert await asyncio.wait_for(supervisor.recv(), 5) == (Ack(8), None)
        assert await asyncio.wait_for(supervisor.recv(), 5) == (
            StatsPart({"udp:127.0.0.1:5060": SocketCounters(1)}),
            None,
        )
    finally:
        supervisor.close()
        worker.close()


async def test_the_channel_carries_a_descriptor_and_closes_one_sent_with_a_refused_message() -> None:
    parent_sock, child_sock = make_pair()
    bound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bound.bind(("127.0.0.1", 0))
    supervisor = Channel(parent_sock, decode_reply)
    worker = Channel(child_sock, decode_command)
    try:
        await supervisor.send(Add(5, UDP, serve=True), bound.fileno())
        msg, fd = await asyncio.wait_for(worker.recv(), 5)
        assert msg == Add(5, UDP, serve=True)
        assert fd is not None
        with socket.socket(fileno=fd) as received:
            assert received.getsockname() == bound.getsockname()

        before = _open_fds()
        socket.send_fds(parent_sock, [b'{"op": "add", "sid": "x"}'], [bound.fileno()])
        with pytest.raises(ProtocolError, match="control message 'add': field 'listener' is missing"):
            await asyncio.wait_for(worker.recv(), 5)
        assert _open_fds() == before  # the descriptor that came with it is closed, not leaked

        await supervisor.send(Sync(9))  # and the channel goes on
        assert await asyncio.wait_for(worker.recv(), 5) == (Sync(9), None)
        await worker.send(Ack(9))
        assert await asyncio.wait_for(supervisor.recv(), 5) == (Ack(9), None)
    finally:
        supervisor.close()
        worker.close()
        bound.close()


async def test_what_waits_in_the_channel_is_taken_without_waiting_and_an_empty_one_says_so() -> None:
    """The worker applies a reload's commands inside its loop's callback: it takes what waits, is told when
    nothing does, sends its answer at once, and learns of a supervisor gone."""
    parent_sock, child_sock = make_pair()
    supervisor = Channel(parent_sock, decode_reply)
    worker = Channel(child_sock, decode_command)
    try:
        with pytest.raises(BlockingIOError):
            worker.recv_now()
        await supervisor.send(Remove(3))
        await supervisor.send(Sync(4))
        assert worker.recv_now() == (Remove(3), None)
        assert worker.recv_now() == (Sync(4), None)
        with pytest.raises(BlockingIOError):
            worker.recv_now()
        assert worker.send_now(encode(Ack(4)))
        assert await asyncio.wait_for(supervisor.recv(), 5) == (Ack(4), None)
        supervisor.close()
        with pytest.raises(ChannelClosed):
            worker.recv_now()
        with pytest.raises(ChannelClosed):
            worker.send_now(encode(Ack(5)))
    finally:
        supervisor.close()
        worker.close()


async def test_a_listened_channel_hands_over_each_message_reports_unreadable_ones_and_its_end_once() -> None:
    parent_sock, child_sock = make_pair()
    supervisor = Channel(parent_sock, decode_reply)
    worker = Channel(child_sock, decode_command)
    got: list[tuple[object, int | None]] = []
    unreadable: list[str] = []
    two = asyncio.Event()
    third = asyncio.Event()
    ended = asyncio.Event()
    ends: list[bool] = []

    def on_message(message: Reply, fd: int | None) -> bool:
        got.append((message, fd))
        if len(got) == 2:
            two.set()
        if len(got) == 3:
            third.set()
        return len(got) != 2  # stops listening after the second

    def on_closed() -> None:
        ends.append(True)
        ended.set()

    try:
        supervisor.listen(on_message, lambda exc: unreadable.append(str(exc)), on_closed)
        await worker.send(Ack(1))
        child_sock.send(b'{"op": "ack"}')
        await worker.send(Ack(2))
        await asyncio.wait_for(two.wait(), 5)
        assert got == [(Ack(1), None), (Ack(2), None)]
        assert unreadable == ["control message 'ack': field 'seq' is missing"]
        await worker.send(Ack(3))  # waits until listened to again
        await asyncio.sleep(0.05)
        assert len(got) == 2
        supervisor.listen(on_message, lambda exc: unreadable.append(str(exc)), on_closed)
        await asyncio.wait_for(third.wait(), 5)
        assert got[2] == (Ack(3), None)
        worker.close()
        await asyncio.wait_for(ended.wait(), 5)
        await asyncio.sleep(0.05)
        assert ends == [True]
    finally:
        supervisor.close()
        worker.close()


CA = make_ca()
LEAF = issue(CA, "sip.example.com", dns=["sip.example.com"])
DOMAINS = [
    TlsDomain(
        "edge",
        SERVER_DOMAIN,
        ("127.0.0.1:5061", "[::1]:5061"),
        ("sip.example.com", "*.example.com"),
        method="TLSv1_2-TLSv1_3",
        verify_cert=False,
        require_cert=False,
        certificate=LEAF.cert_pem,
        private_key=LEAF.key_pem,
        cipher_list="ECDHE+AESGCM",
        ec_curve="prime256v1",
        id=7,
    ),
    TlsDomain("carrier", CLIENT_DOMAIN, ca_list=CA.cert_pem * 600, ca_dir="/etc/ssl/certs", id=None),
]


def test_the_tls_domains_document_round_trips_whole_private_keys_included() -> None:
    data = tls_domains_document(DOMAINS)
    assert len(data) > 256 << 10  # more than a packet of the channel can hold
    back = read_tls_domains_document(data)
    assert back == DOMAINS
    assert back[0].private_key == LEAF.key_pem  # compared fields exclude nothing: the key made it too


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{", "TLS domains document is not JSON"),
        (b"{}", "TLS domains document must be a list"),
        (b"[1]", "TLS domain #0 must be an object"),
        (b'[{"name": "x"}]', "TLS domain #0: field 'type' is missing"),
        (
            tls_domains_document(DOMAINS[:1]).replace(b'"match_domains":[', b'"match_domains":[1,'),
            "TLS domain #0: field 'match_domains' must be a list of strings",
        ),
        (
            tls_domains_document(DOMAINS[:1]).replace(b"-----BEGIN CERTIFICATE", "-----BÉGIN".encode(), 1),
            "TLS domain #0: PEM must be ASCII",
        ),
    ],
)
def test_a_malformed_tls_domains_document_is_refused_naming_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError) as info:
        read_tls_domains_document(data)
    assert str(info.value).startswith(problem)


async def test_tls_domains_travel_in_a_memory_file_one_file_for_several_workers() -> None:
    data = tls_domains_document(DOMAINS)
    pairs = [make_pair() for _ in range(2)]
    fd = memory_file(data)
    try:
        for parent, _ in pairs:
            await Channel(parent, decode_reply).send(TlsDomains(1, len(data)), fd)
        for _, child in pairs:
            msg, received = await asyncio.wait_for(Channel(child, decode_command).recv(), 5)
            assert msg == TlsDomains(1, len(data)) and received is not None
            try:
                assert read_tls_domains_document(read_memory_file(received, msg.size)) == DOMAINS
            finally:
                os.close(received)
    finally:
        os.close(fd)
        for parent, child in pairs:
            parent.close()
            child.close()
