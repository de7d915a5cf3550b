"""partner webhooks: endpoints, per-(endpoint, party) lanes, delivery rows, the delivery log

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 21:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "partner_webhook_endpoints",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("event_types", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column(
            "secrets", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("disabled_reason", sa.String(length=32), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fanout_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partner_webhook_endpoints")),
    )
    op.create_table(
        "partner_webhook_lanes",
        sa.Column("endpoint_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("party_ref", sa.Text(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim_token", postgresql.UUID(as_uuid=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["partner_webhook_endpoints.id"],
            name=op.f("fk_partner_webhook_lanes_endpoint_id_partner_webhook_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("endpoint_id", "party_ref", name=op.f("pk_partner_webhook_lanes")),
    )
    op.create_index(
        "ix_partner_webhook_lanes_due",
        "partner_webhook_lanes",
        ["next_attempt_at"],
        postgresql_where=sa.text("next_attempt_at IS NOT NULL"),
    )
    op.create_table(
        "partner_webhook_deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("endpoint_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("event_local_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("party_ref", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["partner_webhook_endpoints.id"],
            name=op.f("fk_partner_webhook_deliveries_endpoint_id_partner_webhook_endpoints"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_local_id"],
            ["events.local_id"],
            name=op.f("fk_partner_webhook_deliveries_event_local_id_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partner_webhook_deliveries")),
        sa.UniqueConstraint(
            "endpoint_id",
            "event_local_id",
            name=op.f("uq_partner_webhook_deliveries_endpoint_id_event_local_id"),
        ),
    )
    op.create_index(
        "ix_partner_webhook_deliveries_lane_pending",
        "partner_webhook_deliveries",
        ["endpoint_id", "party_ref", "seq"],
        postgresql_where=sa.text("state = 'PENDING'"),
    )
    op.create_index(
        "ix_partner_webhook_deliveries_delivered_at",
        "partner_webhook_deliveries",
        ["delivered_at"],
        postgresql_where=sa.text("state = 'DELIVERED'"),
    )
    op.create_table(
        "partner_webhook_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("endpoint_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["partner_webhook_deliveries.id"],
            name=op.f("fk_partner_webhook_attempts_delivery_id_partner_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partner_webhook_attempts")),
    )
    op.create_index(
        op.f("ix_partner_webhook_attempts_delivery_id"),
        "partner_webhook_attempts",
        ["delivery_id"],
    )
    op.create_index(
        "ix_partner_webhook_attempts_endpoint_id_id",
        "partner_webhook_attempts",
        ["endpoint_id", "id"],
    )


def downgrade() -> None:
    op.drop_table("partner_webhook_attempts")
    op.drop_table("partner_webhook_deliveries")
    op.drop_table("partner_webhook_lanes")
    op.drop_table("partner_webhook_endpoints")
