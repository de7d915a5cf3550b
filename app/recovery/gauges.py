"""The gauges read from the database when `/metrics` is scraped: the same on every replica, so
each scrape reads them once (five small statements), not every worker process on a timer."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts import repository as alerts_repo
from app.core.clock import utcnow
from app.core.metrics import gauge, labelled_gauge
from app.events import repository as events_repo
from app.funding import repository as funding_repo
from app.funding.bakkt_sync import CONFLICT_ALERTS, HELD_ALERT
from app.funding.models import HistorySource
from app.funding.repository import OPEN
from app.partner_webhooks import repository as deliveries_repo
from app.webhooks import repository as webhooks_repo

# Disagreements with Bakkt that no automatic path settles: an operator resolves the alert.
DRIFT_ALERTS = (
    "reconcile_unknown_transaction",
    HELD_ALERT,
    CONFLICT_ALERTS[HistorySource.SYNC],
)
# An event that gave up matching (UNMATCHED) raised this alert; it counts until resolved.
UNMATCHED_ALERT = "webhook_unmatched"


async def read_gauges(session: AsyncSession) -> list[GaugeMetricFamily]:
    counts, oldest = await funding_repo.open_transaction_stats(session)
    parked = await webhooks_repo.count_parked(session)
    alerts = await alerts_repo.count_open(session, (*DRIFT_ALERTS, UNMATCHED_ALERT))
    waiting, waiting_age = await events_repo.unnumbered(session)
    fanout_lag, pending, oldest_pending = await deliveries_repo.stats(session)
    pending_age = 0.0 if oldest_pending is None else (utcnow() - oldest_pending).total_seconds()
    return [
        labelled_gauge(
            "transactions",
            "Open transactions (SUBMITTING, UNKNOWN, PENDING) by state",
            "state",
            {str(state): float(counts.get(str(state), 0)) for state in OPEN},
        ),
        gauge(
            "oldest_nonterminal_transaction_age_seconds",
            "Age of the oldest transaction in SUBMITTING, UNKNOWN or PENDING (0 when none)",
            oldest or 0.0,
        ),
        gauge(
            "webhook_events_parked",
            "Stored webhook events that matched no transaction: PARKED (retried) and UNMATCHED "
            "(given up; counted until their webhook_unmatched alert is resolved)",
            float(parked + alerts.get(UNMATCHED_ALERT, 0)),
        ),
        gauge(
            "reconciliation_drift",
            "Disagreements with Bakkt left to an operator: unresolved alerts of kinds "
            + ", ".join(DRIFT_ALERTS),
            float(sum(alerts.get(kind, 0) for kind in DRIFT_ALERTS)),
        ),
        gauge(
            "events_unnumbered",
            "Committed events the sequencer has not numbered yet (invisible to readers)",
            float(waiting),
        ),
        gauge(
            "events_unnumbered_oldest_seconds",
            "Age of the oldest committed event not yet numbered (the outbox's lag; 0 when none)",
            waiting_age,
        ),
        gauge(
            "partner_webhook_fanout_lag_events",
            "Numbered events not yet turned into deliveries (worst enabled endpoint)",
            float(fanout_lag),
        ),
        gauge(
            "partner_webhook_pending_deliveries",
            "Events not yet acknowledged by an enabled endpoint",
            float(pending),
        ),
        gauge(
            "partner_webhook_oldest_pending_seconds",
            "Age of the oldest event not yet acknowledged by an enabled endpoint (0 when none)",
            max(0.0, pending_age),
        ),
    ]
