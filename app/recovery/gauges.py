"""The gauges read from the database when `/metrics` is scraped: the same on every replica, so
each scrape reads them once (three small statements), not every worker process on a timer."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts import repository as alerts_repo
from app.core.metrics import gauge, labelled_gauge
from app.funding import repository as funding_repo
from app.funding.bakkt_sync import CONFLICT_ALERTS, HELD_ALERT
from app.funding.models import HistorySource
from app.funding.repository import OPEN
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
    ]
