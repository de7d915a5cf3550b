"""core schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 18:13:32.468544
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("party_ref", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_method", sa.String(length=8), nullable=False),
        sa.Column("request_path", sa.String(length=512), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("recovery_point", sa.String(length=32), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("transaction_id", sa.UUID(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("party_ref", "key", name="uq_idempotency_keys_party_key"),
    )
    op.create_index(
        op.f("ix_idempotency_keys_expires_at"), "idempotency_keys", ["expires_at"], unique=False
    )
    op.create_table(
        "operator_alerts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_alerts")),
    )
    op.create_index(op.f("ix_operator_alerts_kind"), "operator_alerts", ["kind"], unique=False)
    op.create_table(
        "parties",
        sa.Column("party_ref", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_reason", sa.String(length=64), nullable=True),
        sa.Column("status_event_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("party_ref", name=op.f("pk_parties")),
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("request_id", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=True),
        sa.Column("party_ref", sa.String(length=255), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("headers", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("needs_operator", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("request_id", name=op.f("uq_webhook_events_request_id")),
    )
    op.create_index(
        op.f("ix_webhook_events_next_attempt_at"),
        "webhook_events",
        ["next_attempt_at"],
        unique=False,
    )
    op.create_table(
        "bank_accounts",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("party_ref", sa.String(length=255), nullable=False),
        sa.Column("link_ref", sa.String(length=255), nullable=False),
        sa.Column("link_method", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("needs_review", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("bank_name", sa.String(length=255), nullable=True),
        sa.Column("account_mask", sa.String(length=4), nullable=True),
        sa.Column("account_type", sa.String(length=32), nullable=True),
        sa.Column("reason_code", sa.String(length=64), nullable=True),
        sa.Column("status_event_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["party_ref"], ["parties.party_ref"], name=op.f("fk_bank_accounts_party_ref_parties")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bank_accounts")),
        sa.UniqueConstraint("link_ref", name=op.f("uq_bank_accounts_link_ref")),
    )
    op.create_index(
        op.f("ix_bank_accounts_party_ref"), "bank_accounts", ["party_ref"], unique=False
    )
    op.create_table(
        "party_limits",
        sa.Column("party_ref", sa.String(length=255), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("per_transaction_cents", sa.BigInteger(), nullable=True),
        sa.Column("per_day_cents", sa.BigInteger(), nullable=True),
        sa.Column("per_30_days_cents", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "direction IN ('DEPOSIT', 'WITHDRAWAL')", name=op.f("ck_party_limits_direction")
        ),
        sa.ForeignKeyConstraint(
            ["party_ref"],
            ["parties.party_ref"],
            name=op.f("fk_party_limits_party_ref_parties"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("party_ref", "direction", name=op.f("pk_party_limits")),
    )
    op.create_table(
        "transactions",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("party_ref", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=True),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason_code", sa.String(length=64), nullable=True),
        sa.Column("reason_description", sa.Text(), nullable=True),
        sa.Column("bakkt_ref", sa.String(length=255), nullable=False),
        sa.Column("bakkt_idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("related_transaction_id", sa.UUID(), nullable=True),
        sa.Column("bank_account_id", sa.UUID(), nullable=True),
        sa.Column("wire_bank_name", sa.String(length=255), nullable=True),
        sa.Column("wire_account_mask", sa.String(length=4), nullable=True),
        sa.Column("held_for_review", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("review_reason", sa.Text(), nullable=True),
        sa.Column("status_event_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("submit_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("check_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('SUBMITTING', 'UNKNOWN', 'PENDING', 'COMPLETED', 'FAILED', "
            "'DECLINED', 'CANCELLED', 'RETURNED')",
            name=op.f("ck_transactions_status_known"),
        ),
        sa.CheckConstraint("amount_cents >= 0", name=op.f("ck_transactions_amount_not_negative")),
        sa.ForeignKeyConstraint(
            ["bank_account_id"],
            ["bank_accounts.id"],
            name=op.f("fk_transactions_bank_account_id_bank_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["party_ref"], ["parties.party_ref"], name=op.f("fk_transactions_party_ref_parties")
        ),
        sa.ForeignKeyConstraint(
            ["related_transaction_id"],
            ["transactions.id"],
            name=op.f("fk_transactions_related_transaction_id_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transactions")),
        sa.UniqueConstraint(
            "bakkt_idempotency_key", name=op.f("uq_transactions_bakkt_idempotency_key")
        ),
        sa.UniqueConstraint("bakkt_ref", name=op.f("uq_transactions_bakkt_ref")),
    )
    op.create_index(
        "ix_transactions_due_check",
        "transactions",
        ["next_check_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('SUBMITTING', 'UNKNOWN', 'PENDING')"),
    )
    op.create_index(
        "ix_transactions_party_created",
        "transactions",
        ["party_ref", "created_at", "id"],
        unique=False,
    )
    op.create_table(
        "transaction_history",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("transaction_id", sa.UUID(), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=True),
        sa.Column("reason_code", sa.String(length=64), nullable=True),
        sa.Column("applied", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "source IN ('api', 'webhook', 'sync', 'admin')",
            name=op.f("ck_transaction_history_source_known"),
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["transactions.id"],
            name=op.f("fk_transaction_history_transaction_id_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transaction_history")),
        sa.UniqueConstraint("transaction_id", "event_id", name="uq_transaction_history_event"),
    )
    op.create_index(
        op.f("ix_transaction_history_transaction_id"),
        "transaction_history",
        ["transaction_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_transaction_history_transaction_id"), table_name="transaction_history")
    op.drop_table("transaction_history")
    op.drop_index("ix_transactions_party_created", table_name="transactions")
    op.drop_index(
        "ix_transactions_due_check",
        table_name="transactions",
        postgresql_where=sa.text("status IN ('SUBMITTING', 'UNKNOWN', 'PENDING')"),
    )
    op.drop_table("transactions")
    op.drop_table("party_limits")
    op.drop_index(op.f("ix_bank_accounts_party_ref"), table_name="bank_accounts")
    op.drop_table("bank_accounts")
    op.drop_index(op.f("ix_webhook_events_next_attempt_at"), table_name="webhook_events")
    op.drop_table("webhook_events")
    op.drop_table("parties")
    op.drop_index(op.f("ix_operator_alerts_kind"), table_name="operator_alerts")
    op.drop_table("operator_alerts")
    op.drop_index(op.f("ix_idempotency_keys_expires_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
