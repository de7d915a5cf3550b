"""The names of the delivery counters (declared with the others in `app.core.metrics`), and the
dispatcher's own last reading of its backlog. The backlog gauges on `/metrics` read the same
figures from the database at scrape time (`app.recovery.gauges`), so every replica shows them
whether or not it runs the workers."""

from __future__ import annotations

from dataclasses import dataclass

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
