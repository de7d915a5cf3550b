"""Delivery outcomes and outbox lag, as plain counters and gauges on the process's registry
(`/metrics`). Minimal on purpose: the registry itself is being replaced (prometheus-client), and
these names are what the replacement should keep."""

from __future__ import annotations

from dataclasses import dataclass

from app.recovery.metrics import Metrics

# Counter names (with the registry's `fiat_onramp_` prefix on /metrics).
ATTEMPTS = "partner_webhook_attempts_total"  # label outcome: delivered, http_error, ...
DISABLED = "partner_webhook_endpoints_disabled_total"  # label reason
FANNED_OUT = "partner_webhook_fanned_out_total"


@dataclass(slots=True)
class Backlog:
    """Read by the gauges; refreshed by the dispatcher every few seconds."""

    fanout_lag: float | None = None  # numbered events not yet turned into deliveries
    pending: float | None = None  # deliveries not yet acknowledged, enabled endpoints
    oldest_pending_seconds: float | None = None


BACKLOG = Backlog()


def watch_backlog(metrics: Metrics, backlog: Backlog = BACKLOG) -> None:
    metrics.gauge(
        "partner_webhook_fanout_lag_events",
        lambda: backlog.fanout_lag,
        "Numbered events not yet turned into deliveries (worst enabled endpoint)",
    )
    metrics.gauge(
        "partner_webhook_pending_deliveries",
        lambda: backlog.pending,
        "Events not yet acknowledged by an enabled endpoint",
    )
    metrics.gauge(
        "partner_webhook_oldest_pending_seconds",
        lambda: backlog.oldest_pending_seconds,
        "Age of the oldest event not yet acknowledged by an enabled endpoint",
    )
