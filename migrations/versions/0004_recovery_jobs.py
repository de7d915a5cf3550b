"""recovery jobs: the daily reconciliation's schedule; indexes the recovery jobs read

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "recovery_jobs",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("running_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_summary", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_recovery_jobs")),
    )
    op.create_index(
        "ix_webhook_events_body_retention",
        "webhook_events",
        ["received_at"],
        unique=False,
        postgresql_where=sa.text("body IS NOT NULL"),
    )
    op.create_index(
        "ix_idempotency_keys_unfinished",
        "idempotency_keys",
        ["locked_until"],
        unique=False,
        postgresql_where=sa.text("recovery_point = 'intent_written'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_idempotency_keys_unfinished",
        table_name="idempotency_keys",
        postgresql_where=sa.text("recovery_point = 'intent_written'"),
    )
    op.drop_index(
        "ix_webhook_events_body_retention",
        table_name="webhook_events",
        postgresql_where=sa.text("body IS NOT NULL"),
    )
    op.drop_table("recovery_jobs")
