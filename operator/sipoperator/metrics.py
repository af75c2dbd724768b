"""Prometheus text exposition of the operator's own figures (no client library needed for a few series)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    items = [f'{k}="{v}"'.replace("\n", " ") for k, v in pairs]
    return "{" + ",".join(items) + "}" if items else ""


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.values: dict[tuple[tuple[str, str], ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        out += [f"{self.name}{_labels(k)} {v:g}" for k, v in sorted(self.values.items())]
        return out


class Gauge:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {self.value:g}"]


class Histogram:
    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.counts = [0] * len(self.BUCKETS)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.BUCKETS):
            if value <= bound:
                self.counts[i] += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for bound, count in zip(self.BUCKETS, self.counts, strict=True):
            out.append(f'{self.name}_bucket{{le="{bound:g}"}} {count}')
        out.append(f'{self.name}_bucket{{le="+Inf"}} {self.total}')
        out.append(f"{self.name}_sum {self.sum if math.isfinite(self.sum) else 0:g}")
        out.append(f"{self.name}_count {self.total}")
        return out


class Metrics:
    def __init__(self) -> None:
        self.reconciles = Counter("sipsockets_reconciles_total", "Reconciles of SipSockets by result.")
        self.errors = Counter("sipsockets_reconcile_errors_total", "Reconcile problems by reason.")
        self.reloads = Counter("sipsockets_proxy_reloads_total", "MI sockets_reload calls by result.")
        self.tls_reloads = Counter("sipsockets_proxy_tls_reloads_total", "MI tls_reload calls by result.")
        self.reload_seconds = Histogram(
            "sipsockets_proxy_reload_duration_seconds", "Duration of successful MI sockets_reload calls."
        )
        self.drift_repairs = Counter(
            "sipsockets_fleet_drift_repairs_total",
            "Proxy pods reloaded by the fleet check because their sockets differed from the table.",
        )
        self.leader = Gauge(
            "sipsockets_leader",
            "1 while this replica holds the leader-election Lease (the only one writing rows and statuses).",
        )
        # Set by the operator: (condition, status, reason) -> number of SipSockets.
        self.conditions_source: Callable[[], dict[tuple[str, str, str], int]] = dict

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.reconciles, self.errors, self.reloads, self.tls_reloads, self.drift_repairs):
            lines += metric.render()
        lines += self.reload_seconds.render()
        lines += self.leader.render()
        lines.append("# HELP sipsockets_sockets SipSockets by condition, status and reason.")
        lines.append("# TYPE sipsockets_sockets gauge")
        for (cond, status, reason), count in sorted(self.conditions_source().items()):
            pairs = [("condition", cond), ("status", status), ("reason", reason)]
            lines.append(f"sipsockets_sockets{_labels(pairs)} {count}")
        return "\n".join(lines) + "\n"
