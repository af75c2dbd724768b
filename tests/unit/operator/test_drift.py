"""When a proxy pod needs a `sockets_reload` (its listing against what the table says) or a `tls_reload`."""

from __future__ import annotations

from sipoperator.drift import (
    FLEET_RETRY,
    needs_reload,
    needs_tls_reload,
    next_fleet_check,
    pod_out_of_sync,
    table_sockets,
    tls_failure,
)
from sipoperator.proxies import parse_listing
from sipoperator.spec import validate

MINE = validate({"protocol": "udp", "address": "10.0.0.1", "port": 5070})
TABLE = table_sockets(["udp:10.0.0.1:5070", "udp:10.0.0.2:5070"])


def listing(*sockets: str, failed: str = "") -> object:
    entries = [{"socket": s, "state": "listening"} for s in sockets]
    if failed:
        entries.append({"socket": failed, "state": "failed", "error": "[Errno 98] Address already in use"})
    return entries


def test_a_pod_listing_exactly_the_table_is_left_alone() -> None:
    listed = parse_listing(listing("udp:10.0.0.1:5070", "udp:10.0.0.2:5070"))
    assert not needs_reload(listed, MINE, TABLE, reloaded=False)


def test_our_socket_missing_or_failed_asks_for_a_reload() -> None:
    assert needs_reload(parse_listing(listing("udp:10.0.0.2:5070")), MINE, TABLE, reloaded=False)
    failed = parse_listing(listing("udp:10.0.0.2:5070", failed="udp:10.0.0.1:5070"))
    assert needs_reload(failed, MINE, TABLE, reloaded=False)


def test_a_socket_the_table_no_longer_has_asks_for_a_reload() -> None:
    """A reload missed after a delete: the pod still serves a removed row."""
    listed = parse_listing(listing("udp:10.0.0.1:5070", "udp:10.0.0.2:5070", "udp:10.0.0.9:5070"))
    assert needs_reload(listed, MINE, TABLE, reloaded=False)
    lacking = parse_listing(listing("udp:10.0.0.1:5070"))
    assert needs_reload(lacking, MINE, TABLE, reloaded=False)


def test_after_this_pass_reloaded_only_a_socket_still_unlisted_is_worth_another() -> None:
    assert needs_reload(parse_listing(listing()), MINE, TABLE, reloaded=True)
    failed = parse_listing(listing(failed="udp:10.0.0.1:5070"))
    assert not needs_reload(failed, MINE, TABLE, reloaded=True)  # the bind error is the answer


def test_without_the_table_no_reload_is_asked_for() -> None:
    assert not needs_reload(parse_listing(listing()), MINE, None, reloaded=False)


def test_rows_the_proxy_cannot_parse_are_not_expected_in_its_listing() -> None:
    assert table_sockets(["udp:10.0.0.1:5070", "garbage", None]) == frozenset({"udp:10.0.0.1:5070"})


def test_a_pod_gets_tls_reload_until_it_applied_the_current_domain_row() -> None:
    assert needs_tls_reload(None, "d1")  # never asked by this operator process (it may have missed one)
    assert needs_tls_reload("d1", "d2")  # the row changed (a renewal)
    assert not needs_tls_reload("d2", "d2")
    assert not needs_tls_reload(None, None)  # no domain row: nothing to load


def test_a_tls_reload_that_left_our_domain_out_says_why() -> None:
    answer = {
        "generation": 4,
        "loaded": [{"domain": "voip/other", "kind": "server", "source": "table"}],
        "failed": [
            {"domain": "voip/edge", "kind": "server", "source": "table", "error": "key does not match"},
            {"domain": "voip/edge", "kind": "client", "source": "config", "error": "not ours"},
        ],
    }
    assert tls_failure(answer, "voip/edge") == "key does not match"
    assert tls_failure(answer, "voip/other") is None
    assert tls_failure("OK", "voip/edge") is None  # OpenSIPS says nothing more


def test_a_pod_is_judged_as_a_whole_against_the_table() -> None:
    """The fleet check, with no SipSocket at all: a pod serving a removed row, or lacking one, differs."""
    assert not pod_out_of_sync(parse_listing(listing("udp:10.0.0.1:5070", "udp:10.0.0.2:5070")), TABLE)
    assert pod_out_of_sync(parse_listing(listing("udp:10.0.0.9:5070")), table_sockets([]))
    assert pod_out_of_sync(parse_listing(listing()), TABLE)
    assert not pod_out_of_sync(parse_listing(listing()), table_sockets([]))
    # A socket that failed to bind is still the pod's answer for that row.
    failed = parse_listing(listing("udp:10.0.0.2:5070", failed="udp:10.0.0.1:5070"))
    assert not pod_out_of_sync(failed, TABLE)


def test_the_fleet_is_checked_again_within_seconds_while_a_pod_does_not_answer() -> None:
    assert next_fleet_check(60.0, retry_soon=False) == 60.0
    assert next_fleet_check(60.0, retry_soon=True) == FLEET_RETRY
    assert next_fleet_check(3.0, retry_soon=True) == 3.0
