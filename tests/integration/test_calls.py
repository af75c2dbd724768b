"""SIPp INVITE calls uac -> proxy -> uas over UDP, TCP and across them, forwarded by `routes`."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import Proxy, SippUas, free_port, loopback_ip, sipp_uac


@pytest.mark.parametrize(
    ("uac_transport", "uas_transport"),
    [("udp", "udp"), ("tcp", "tcp"), ("udp", "tcp"), ("tcp", "udp")],
)
def test_calls_through_the_proxy(
    proxies: Callable[..., Proxy],
    uas_factory: Callable[..., SippUas],
    uac_transport: str,
    uas_transport: str,
) -> None:
    uas = uas_factory(uas_transport)
    ip = loopback_ip()
    port = free_port(ip)
    proxy = proxies(
        {
            "sockets": [f"udp:{ip}:{port} tag edge", f"tcp:{ip}:{port} tag edge-tcp"],
            # One UDP worker: with several, SIPp's back-to-back 180/200 may be forwarded in swapped order
            # (any worker takes the next datagram), which SIPp counts as a failed call.
            "udp_workers": 1,
            "tcp_workers": 2,
            "routes": [{"match": {"ruri": "^sip:uas@"}, "forward": uas.uri}],
        }
    )
    result = sipp_uac(ip, port, uac_transport, calls=20, rate=10)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:] + proxy.log()
    metrics = proxy.get("/metrics")[1]
    forwarded = sum(
        int(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("sipproxy_forwarded_packets_total{")
    )
    # INVITE, 100?, 180, 200, ACK, BYE, 200 per call cross the proxy: at least 6 per call.
    assert forwarded >= 20 * 6
