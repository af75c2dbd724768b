"""Counters summed across workers and rendered in the Prometheus text format."""

from sipproxy.shared.counters import SocketCounters
from sipproxy.supervisor.metrics import render_prometheus, sum_counters


def test_counters_survive_the_wire_and_sum_per_socket() -> None:
    a = SocketCounters(3, 300, 2, 250, {"parse_error": 1}, fwd_invites=2)
    b = SocketCounters.from_wire(
        SocketCounters(1, 100, 1, 90, {"parse_error": 2, "max_forwards": 1}, fwd_invites=1).to_wire()
    )
    total = sum_counters(
        [{"udp:127.0.0.1:5060": a}, {"udp:127.0.0.1:5060": b, "tcp:[::1]:5060": SocketCounters()}]
    )
    t = total["udp:127.0.0.1:5060"]
    assert (t.rx_packets, t.rx_bytes, t.fwd_packets, t.fwd_bytes, t.fwd_invites) == (4, 400, 3, 340, 3)
    assert t.drops == {"parse_error": 3, "max_forwards": 1}
    assert a.drops == {"parse_error": 1}  # inputs are not modified


def test_prometheus_text() -> None:
    per_socket = {"udp:127.0.0.1:5060": SocketCounters(4, 400, 3, 340, {'bad"reason': 2}, fwd_invites=1)}
    text = render_prometheus(per_socket, 5, 1, 0.25, 2, {"listening": 3, "failed": 1})
    lines = text.splitlines()
    assert 'sipproxy_received_packets_total{socket="udp:127.0.0.1:5060"} 4' in lines
    assert 'sipproxy_forwarded_bytes_total{socket="udp:127.0.0.1:5060"} 340' in lines
    assert 'sipproxy_forwarded_invites_total{socket="udp:127.0.0.1:5060"} 1' in lines
    assert 'sipproxy_dropped_packets_total{socket="udp:127.0.0.1:5060",reason="bad\\"reason"} 2' in lines
    assert "sipproxy_reloads_total 5" in lines
    assert "sipproxy_reload_duration_seconds_count 5" in lines
    assert "sipproxy_worker_restarts_total 2" in lines
    assert 'sipproxy_sockets{state="failed"} 1' in lines
    for line in lines:
        if line.startswith("# TYPE"):
            assert line.split()[3] in ("counter", "gauge", "summary")
    assert text.endswith("\n")
