"""Reading `sockets_list` from our proxy and from OpenSIPS 3.6 (answer shapes of opensips-compat.md)."""

from __future__ import annotations

from sipoperator.conditions import FAILED, LISTENING, PARTIAL, PENDING
from sipoperator.proxies import parse_listing
from sipoperator.spec import validate


def test_our_proxy_reports_state_and_error() -> None:
    listed = parse_listing(
        [
            {"socket": "udp:10.0.0.1:5060", "proto": "udp", "slot": 0, "state": "listening"},
            {
                "socket": "udp:10.0.0.2:5060",
                "state": "failed",
                "error": "[Errno 99] Cannot assign requested address",
            },
        ]
    )
    assert not listed.opensips
    ok = validate({"protocol": "udp", "address": "10.0.0.1"})
    bad = validate({"protocol": "udp", "address": "10.0.0.2"})
    absent = validate({"protocol": "udp", "address": "10.0.0.3"})
    assert listed.state_of(ok.socket, ok.key) == (LISTENING, "")
    assert listed.state_of(bad.socket, bad.key) == (FAILED, "[Errno 99] Cannot assign requested address")
    assert listed.state_of(absent.socket, absent.key) == (PENDING, "")


def test_a_socket_some_worker_lacks_is_partial_with_the_reason() -> None:
    why = "worker udp-pool#3 (pid 4242) did not apply the change within 10 s; it is being replaced"
    listed = parse_listing([{"socket": "udp:10.0.0.1:5060", "state": "partial", "error": why}])
    ok = validate({"protocol": "udp", "address": "10.0.0.1"})
    assert listed.state_of(ok.socket, ok.key) == (PARTIAL, why)


def test_opensips_listing_counts_as_listening() -> None:
    listed = parse_listing(
        [{"socket": "udp:10.0.0.1", "advertised": "203.0.113.1:5060", "tag": "a", "tos": 16}]
    )
    assert listed.opensips
    # The row text may be written differently (default port left out): matched by endpoint and protocol.
    wanted = validate({"protocol": "udp", "address": "10.0.0.1"})
    assert listed.state_of(wanted.socket, wanted.key) == (LISTENING, "")
    tcp = validate({"protocol": "tcp", "address": "10.0.0.1"})
    assert listed.state_of(tcp.socket, tcp.key) == (PENDING, "")


def test_garbage_is_ignored() -> None:
    assert parse_listing("OK").entries == {}
    assert parse_listing([1, {"no": "socket"}, {"socket": 5}]).entries == {}


def test_a_tls_socket_the_proxy_warns_about_carries_its_warning() -> None:
    warning = "no TLS server domain matches 10.0.0.1:5061 (match_ip_address, or *): connections fail"
    listed = parse_listing(
        [
            {"socket": "tls:10.0.0.1:5061", "state": "listening", "warning": warning},
            {"socket": "tls:10.0.0.2:5061", "state": "listening"},
        ]
    )
    mine = validate({"protocol": "tls", "address": "10.0.0.1", "port": 5061, "tls": {"secretName": "x"}})
    other = validate({"protocol": "tls", "address": "10.0.0.2", "port": 5061, "tls": {"secretName": "x"}})
    assert listed.state_of(mine.socket, mine.key) == (LISTENING, "")
    assert listed.warning_of(mine.socket, mine.key) == warning
    assert listed.warning_of(other.socket, other.key) == ""
