"""a claimed partner-webhook lane names the process that holds it (`claim_holder`), so that a lane
whose holder died is taken back as soon as the holder's heartbeat is stale, not only when the
lease (PARTNER_WEBHOOK_LEASE, 120 s) runs out

Expand only: the release before this one neither writes nor reads the column; its claims carry
no holder and are left to the lease, as before.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 01:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "partner_webhook_lanes",
        sa.Column("claim_holder", sa.UUID(), nullable=True),
    )
    # Only lanes in a claim: the reclaim looks there, and few lanes are claimed at a time.
    op.create_index(
        "ix_partner_webhook_lanes_claim_holder",
        "partner_webhook_lanes",
        ["claim_holder"],
        postgresql_where=sa.text("claim_token IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_partner_webhook_lanes_claim_holder", table_name="partner_webhook_lanes")
    op.drop_column("partner_webhook_lanes", "claim_holder")
