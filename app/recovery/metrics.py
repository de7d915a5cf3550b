"""A small in-process metrics registry: counters by name and labels, plus gauges read on demand.

One registry per process (`METRICS`), reachable from `app.state.metrics` and rendered by
`GET /metrics` in Prometheus' text format. Counters live as long as the process, as Prometheus
expects; a scraper computes rates from them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Protocol

PREFIX = "fiat_onramp_"

# What each counter counts, for the `# HELP` lines and docs/recovery.md.
HELP: Mapping[str, str] = {
    "recovery_drift_total": "Disagreements between Bakkt and our records found by reconciliation",
    "recovery_settled_unknown_total": "Unknown outcomes settled by finding the transfer at Bakkt",
    "recovery_resent_total": "Transfers Bakkt never saw, re-sent with the same key and accepted",
    "recovery_resend_rejected_total": "Re-sent transfers Bakkt rejected (now FAILED)",
    "recovery_failed_expired_total": "Transfers Bakkt never saw whose key expired (now FAILED)",
    "recovery_failed_wire_not_retained_total": "Wire withdrawals Bakkt never saw (now FAILED)",
    "recovery_still_unknown_total": "Settle attempts that left the outcome unknown",
    "recovery_swept_total": "Open transactions polled at Bakkt by the sweep",
    "recovery_sweep_moved_total": "Polled transactions whose status moved",
    "recovery_overdue_alerts_total": "Transactions still pending past their settlement window",
    "recovery_requests_finished_total": "Consumer requests left unfinished, finished by recovery",
    "recovery_links_expired_total": "Hosted-link bank accounts FAILED after their page expired",
    "recovery_webhook_rematched_total": "Stored webhook events retried by the rematch job",
    "recovery_reconcile_runs_total": "Reconciliation runs, by outcome",
    "recovery_reconcile_created_total": "Transactions reconciliation created (webhooks lost)",
    "recovery_reconcile_moved_total": "Transactions reconciliation moved (webhooks lost)",
    "recovery_retention_deleted_total": "Rows removed or cleared by retention, by what",
    "recovery_job_errors_total": "Failed cycles of a background job, by job and cause",
    "recovery_skipped_circuit_open_total": "Job cycles skipped while the Bakkt circuit was open",
    "partner_webhook_attempts_total": "Webhook sends to the partner's endpoints, by outcome",
    "partner_webhook_endpoints_disabled_total": "Partner webhook endpoints disabled, by reason",
    "partner_webhook_fanned_out_total": "Events turned into deliveries to partner endpoints",
}

Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, Labels], int] = {}
        self._gauges: dict[str, tuple[str, Callable[[], float | None]]] = {}

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        if amount == 0:
            return
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + amount

    def value(self, name: str, **labels: str) -> int:
        """One series; with no labels given, the sum over every series of the counter."""
        with self._lock:
            if labels:
                return self._counters.get((name, tuple(sorted(labels.items()))), 0)
            return sum(v for (n, _), v in self._counters.items() if n == name)

    def gauge(self, name: str, read: Callable[[], float | None], help_text: str = "") -> None:
        """A value read when rendered (the breaker's state, say); None leaves it out."""
        with self._lock:
            self._gauges[name] = (help_text, read)

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        with self._lock:
            counters = sorted(self._counters.items())
            gauges = sorted(self._gauges.items())
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), value in counters:
            full = PREFIX + name
            if name not in seen:
                seen.add(name)
                if name in HELP:
                    lines.append(f"# HELP {full} {HELP[name]}")
                lines.append(f"# TYPE {full} counter")
            lines.append(f"{full}{_labels(labels)} {value}")
        for name, (help_text, read) in gauges:
            reading = read()
            if reading is None:
                continue
            full = PREFIX + name
            if help_text:
                lines.append(f"# HELP {full} {help_text}")
            lines.append(f"# TYPE {full} gauge")
            lines.append(f"{full} {float(reading):g}")
        return "\n".join(lines) + "\n"


def counter_family(name: str, label: str, values: Mapping[str, int], help_text: str) -> str:
    """Counters kept elsewhere (the webhook receiver's), in the same exposition format."""
    full = PREFIX + name
    lines = [f"# HELP {full} {help_text}", f"# TYPE {full} counter"]
    lines += [f"{full}{_labels(((label, key),))} {n}" for key, n in sorted(values.items())]
    return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Breaker(Protocol):
    def is_open(self) -> bool: ...


class _Bakkt(Protocol):
    @property
    def breaker(self) -> _Breaker | None: ...

    @property
    def last_heartbeat_ok(self) -> bool | None: ...


def watch_breaker(metrics: Metrics, breaker: _Breaker | None) -> None:
    """Expose the Bakkt circuit breaker as the gauge `bakkt_circuit_open` (1 while open)."""
    if breaker is not None:
        metrics.gauge(
            "bakkt_circuit_open",
            lambda: 1.0 if breaker.is_open() else 0.0,
            "1 while calls to Bakkt fail fast (circuit open)",
        )


def watch_bakkt(metrics: Metrics, bakkt: _Bakkt) -> None:
    """`bakkt_up`: 1 when Bakkt answered the latest heartbeat, 0 when it did not or the circuit
    is open; absent until the first heartbeat (the workers send one every minute)."""

    def read() -> float | None:
        if bakkt.breaker is not None and bakkt.breaker.is_open():
            return 0.0
        if bakkt.last_heartbeat_ok is None:
            return None
        return 1.0 if bakkt.last_heartbeat_ok else 0.0

    metrics.gauge("bakkt_up", read, "1 when Bakkt answered the latest heartbeat")
    watch_breaker(metrics, bakkt.breaker)


METRICS = Metrics()
