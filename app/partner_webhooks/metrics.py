"""The names of the delivery counters (declared with the others in `app.core.metrics`). The
backlog gauges are read from the database at scrape time (`app.recovery.gauges`), so every
replica shows them whether or not it runs the workers."""

from __future__ import annotations

# Counter names (with the registry's `fiat_onramp_` prefix on /metrics).
ATTEMPTS = "partner_webhook_attempts_total"  # label outcome: delivered, http_error, ...
DISABLED = "partner_webhook_endpoints_disabled_total"  # label reason
FANNED_OUT = "partner_webhook_fanned_out_total"
