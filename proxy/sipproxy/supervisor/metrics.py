"""Counters summed across workers and rendered in the Prometheus text format."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sipproxy.shared.counters import SocketCounters


def sum_counters(snapshots: Iterable[Mapping[str, SocketCounters]]) -> dict[str, SocketCounters]:
    """Snapshots are keyed by socket label (e.g. udp:127.0.0.1:5060)."""
    total: dict[str, SocketCounters] = {}
    for snap in snapshots:
        for label, counters in snap.items():
            total.setdefault(label, SocketCounters()).add(counters)
    return total


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(
    per_socket: Mapping[str, SocketCounters],
    reloads: int,
    reload_failures: int,
    reload_seconds_sum: float,
    worker_restarts: int,
    sockets_by_state: Mapping[str, int],
) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    series = [
        ("sipproxy_received_packets_total", "SIP packets received", "rx_packets"),
        ("sipproxy_received_bytes_total", "SIP bytes received", "rx_bytes"),
        ("sipproxy_forwarded_packets_total", "SIP packets sent out of the socket", "fwd_packets"),
        ("sipproxy_forwarded_bytes_total", "SIP bytes sent out of the socket", "fwd_bytes"),
        (
            "sipproxy_forwarded_invites_total",
            "INVITE requests sent out of the socket (calls; retransmissions included)",
            "fwd_invites",
        ),
    ]
    for name, help_text, attr in series:
        family(name, "counter", help_text)
        for label in sorted(per_socket):
            lines.append(f'{name}{{socket="{_esc(label)}"}} {getattr(per_socket[label], attr)}')
    family("sipproxy_dropped_packets_total", "counter", "SIP packets dropped, by reason")
    for label in sorted(per_socket):
        for reason, n in sorted(per_socket[label].drops.items()):
            labels = f'socket="{_esc(label)}",reason="{_esc(reason)}"'
            lines.append(f"sipproxy_dropped_packets_total{{{labels}}} {n}")
    family("sipproxy_reloads_total", "counter", "sockets_reload calls")
    lines.append(f"sipproxy_reloads_total {reloads}")
    family("sipproxy_reload_failures_total", "counter", "sockets_reload calls that could not read the table")
    lines.append(f"sipproxy_reload_failures_total {reload_failures}")
    family("sipproxy_reload_duration_seconds", "summary", "time spent in sockets_reload")
    lines.append(f"sipproxy_reload_duration_seconds_sum {reload_seconds_sum:.6f}")
    lines.append(f"sipproxy_reload_duration_seconds_count {reloads}")
    family("sipproxy_worker_restarts_total", "counter", "workers that died and were replaced")
    lines.append(f"sipproxy_worker_restarts_total {worker_restarts}")
    family("sipproxy_sockets", "gauge", "dynamic and static sockets by state")
    for state, n in sorted(sockets_by_state.items()):
        lines.append(f'sipproxy_sockets{{state="{_esc(state)}"}} {n}')
    return "\n".join(lines) + "\n"
