"""A worker's counters across reloads: counts survive a socket's removal under its label, and a socket added
and removed again and again (a new sid each time) leaves nothing behind."""

from __future__ import annotations

from sipproxy.worker.counters import WorkerCounters


def test_counts_continue_under_the_label_and_removed_sockets_leave_nothing() -> None:
    counters = WorkerCounters()
    for sid in range(1, 1001):
        counters.name(sid, "udp:127.0.0.1:5060")
        counters.for_sid(sid).rx_packets += 1
        counters.retire(sid)
    assert counters.snapshot()["udp:127.0.0.1:5060"].rx_packets == 1000
    assert counters.by_sid == {} and counters.labels == {}
    counters.name(1001, "udp:127.0.0.1:5060")
    counters.for_sid(1001).rx_packets += 1
    assert counters.snapshot()["udp:127.0.0.1:5060"].rx_packets == 1001
