"""State of the scheduled recovery jobs that must run once per period across all replicas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Index, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.idempotency.models import IdempotencyKey
from app.webhooks.models import WebhookEvent


class RecoveryJob(Base):
    """One row per scheduled job (the daily reconciliation). Kept in the database, not in a
    process, so a restart does not reset the schedule and N replicas run the job once."""

    __tablename__ = "recovery_jobs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # A lease: the replica running the job holds it until then; a crashed run is retaken after.
    running_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the last successful run started: the next run's window begins there (less an
    # overlap), so a gap of any length is covered.
    last_success_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_summary: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    last_error: Mapped[str | None] = mapped_column(Text)


# Indexes only the recovery jobs read, declared here beside them rather than in the models of the
# tables they index.

# Retention clears stored webhook bodies past their period.
Index(
    "ix_webhook_events_body_retention",
    WebhookEvent.received_at,
    postgresql_where=WebhookEvent.body.is_not(None),
)

# Consumer requests that wrote their intent and have not finished: few at any time, looked for
# every settle cycle (finish_abandoned_requests), so a small partial index instead of a scan.
Index(
    "ix_idempotency_keys_unfinished",
    IdempotencyKey.locked_until,
    postgresql_where=IdempotencyKey.recovery_point == "intent_written",
)
