"""`helm test`'s probe: which SipSockets it sends an OPTIONS to, where, and with which Request-URI."""

from __future__ import annotations

from typing import Any

from sipproxy.probe import Target, options_request, targets


def sipsocket(name: str, ready: str = "True", status_port: int | None = None, **spec: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": ready, "reason": "x"}]}
    if status_port is not None:
        status["port"] = status_port
    return {"metadata": {"name": name}, "spec": spec, "status": status}


def test_only_ready_sipsockets_by_name_each_sent_to_its_own_address() -> None:
    items = [
        sipsocket("b", protocol="tcp", address="10.0.5.21", port=5070),
        sipsocket("a", protocol="udp", address="10.0.5.20", port=5060),
        sipsocket("c", ready="False", protocol="udp", address="10.0.5.22", port=5060),
        {"metadata": {"name": "d"}, "spec": {"protocol": "udp", "address": "10.0.5.23"}},  # no status yet
    ]
    assert targets(items) == [
        Target("a", "udp", "10.0.5.20", 5060, "10.0.5.20", 5060),
        Target("b", "tcp", "10.0.5.21", 5070, "10.0.5.21", 5070),
    ]


def test_the_port_in_effect_comes_from_the_status_or_the_protocols_default() -> None:
    [t] = targets([sipsocket("a", status_port=5080, protocol="udp", address="10.0.5.20")])
    assert (t.port, t.uri_port) == (5080, 5080)
    [t] = targets([sipsocket("a", protocol="tcp", address="10.0.5.20")])
    assert t.port == 5060


def test_an_advertised_address_is_the_request_uri_and_for_a_wildcard_also_where_to_send() -> None:
    advertised = {"address": "203.0.113.10", "port": 5099}
    [specific] = targets(
        [sipsocket("a", protocol="udp", address="10.0.5.20", port=5060, advertised=advertised)]
    )
    assert (specific.host, specific.port, specific.uri_host, specific.uri_port) == (
        "10.0.5.20",
        5060,
        "203.0.113.10",
        5099,
    )
    [wild] = targets([sipsocket("a", protocol="udp", address="0.0.0.0", port=5060, advertised=advertised)])
    assert (wild.host, wild.port, wild.uri_host, wild.uri_port, wild.skip) == (
        "203.0.113.10",
        5099,
        "203.0.113.10",
        5099,
        "",
    )


def test_a_wildcard_without_advertised_goes_to_the_fallback_host_or_is_not_probed() -> None:
    items = [sipsocket("a", protocol="udp", address="::", port=5060)]
    [via_service] = targets(items, fallback_host="sipsockets-proxy.voip.svc")
    # The Request-URI keeps the socket's own address, which the proxy knows as its own and answers.
    assert (via_service.host, via_service.uri_host, via_service.skip) == (
        "sipsockets-proxy.voip.svc",
        "::",
        "",
    )
    [t] = targets(items)
    assert "wildcard" in t.skip


def test_transports_other_than_udp_and_tcp_are_reported_not_probed() -> None:
    [t] = targets([sipsocket("a", protocol="wss", address="10.0.5.20", port=443)])
    assert t.skip and "udp and tcp" in t.skip


def test_the_request_names_the_proxy_and_asks_replies_back_to_the_sender() -> None:
    text = options_request("2001:db8::5", 5060, ("2001:db8::9", 40000), "udp").decode()
    lines = text.split("\r\n")
    assert lines[0] == "OPTIONS sip:[2001:db8::5]:5060 SIP/2.0"
    assert lines[1].startswith("Via: SIP/2.0/UDP [2001:db8::9]:40000;branch=z9hG4bK") and lines[1].endswith(
        ";rport"
    )
    assert "Max-Forwards: 70" in lines and text.endswith("\r\n\r\n")
