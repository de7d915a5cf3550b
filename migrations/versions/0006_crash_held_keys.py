"""crash-held keys and abandoned hosted links: process heartbeats, the holder of each idempotency
claim, hosted-link expiry (bank-account history comes with 0005)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 18:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "service_processes",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_processes")),
    )
    op.create_index(
        op.f("ix_service_processes_heartbeat_at"), "service_processes", ["heartbeat_at"]
    )
    op.add_column(
        "idempotency_keys", sa.Column("holder_id", postgresql.UUID(as_uuid=True), nullable=True)
    )
    op.add_column(
        "bank_accounts", sa.Column("link_expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        "ix_bank_accounts_pending_hosted_expiry",
        "bank_accounts",
        ["link_expires_at"],
        postgresql_where=sa.text("status = 'PENDING' AND link_method = 'HOSTED'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_bank_accounts_pending_hosted_expiry",
        table_name="bank_accounts",
        postgresql_where=sa.text("status = 'PENDING' AND link_method = 'HOSTED'"),
    )
    op.drop_column("bank_accounts", "link_expires_at")
    op.drop_column("idempotency_keys", "holder_id")
    op.drop_index(op.f("ix_service_processes_heartbeat_at"), table_name="service_processes")
    op.drop_table("service_processes")
