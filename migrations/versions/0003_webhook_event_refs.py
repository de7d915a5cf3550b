"""webhook event refs: the transaction and related transfer a FIAT_EVENT names

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-26 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "webhook_events", sa.Column("transaction_ref", sa.String(length=255), nullable=True)
    )
    op.add_column("webhook_events", sa.Column("related_ref", sa.String(length=255), nullable=True))
    op.create_index(
        op.f("ix_webhook_events_transaction_ref"),
        "webhook_events",
        ["transaction_ref"],
        unique=False,
    )
    op.create_index(
        op.f("ix_webhook_events_related_ref"), "webhook_events", ["related_ref"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_events_related_ref"), table_name="webhook_events")
    op.drop_index(op.f("ix_webhook_events_transaction_ref"), table_name="webhook_events")
    op.drop_column("webhook_events", "related_ref")
    op.drop_column("webhook_events", "transaction_ref")
