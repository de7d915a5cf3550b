"""one current bank account per party, bank-account history, the party's verification URL

Bakkt keeps one linked bank account per party and `/transfer` names none, so this service now
keeps one too: at most one LINKED account per party (a partial unique index), older ones
REPLACED. Existing data is carried over: of a party's several LINKED accounts the newest (by
the time Bakkt linked it, then by creation, then by id) stays LINKED, the others become REPLACED,
each with a `bank_account_history` row (source `migration`) saying so. Every account also gets a
first history row with the status it has now, so its history starts somewhere.

Parties gain `verification_url` and `verification_url_expires_at` (DOCUMENT_VERIFICATION), filled
from the newest stored PARTY_EVENT of each party whose current reason is DOCUMENT_VERIFICATION.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 18:40:00.000000
"""

import json
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("parties", sa.Column("verification_url", sa.Text(), nullable=True))
    op.add_column(
        "parties",
        sa.Column("verification_url_expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "bank_account_history",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("bank_account_id", sa.UUID(), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=True),
        sa.Column("reason_code", sa.String(length=64), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "source IN ('api', 'webhook', 'sync', 'admin', 'migration')",
            name=op.f("ck_bank_account_history_source_known"),
        ),
        sa.ForeignKeyConstraint(
            ["bank_account_id"],
            ["bank_accounts.id"],
            name=op.f("fk_bank_account_history_bank_account_id_bank_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bank_account_history")),
    )
    op.create_index(
        op.f("ix_bank_account_history_bank_account_id"),
        "bank_account_history",
        ["bank_account_id"],
        unique=False,
    )
    op.execute(
        "INSERT INTO bank_account_history (bank_account_id, to_status, source, reason_code, "
        "note, event_time) SELECT id, status, 'migration', reason_code, "
        "'status when history began (migration 0005)', status_event_time FROM bank_accounts"
    )
    op.execute(
        """
        WITH ranked AS (
            SELECT id, row_number() OVER (
                PARTITION BY party_ref
                ORDER BY coalesce(status_event_time, created_at) DESC, created_at DESC, id DESC
            ) AS rank
            FROM bank_accounts
            WHERE status = 'LINKED'
        ),
        replaced AS (
            UPDATE bank_accounts b SET status = 'REPLACED', updated_at = now()
            FROM ranked r
            WHERE b.id = r.id AND r.rank > 1
            RETURNING b.id
        )
        INSERT INTO bank_account_history (bank_account_id, from_status, to_status, source, note)
        SELECT id, 'LINKED', 'REPLACED', 'migration',
               'migration 0005: one current account per party; a newer LINKED one is current'
        FROM replaced
        """
    )
    _carry_verification_urls()
    op.create_index(
        "uq_bank_accounts_one_linked",
        "bank_accounts",
        ["party_ref"],
        unique=True,
        postgresql_where=sa.text("status = 'LINKED'"),
    )


def _carry_verification_urls() -> None:
    """Read in Python, not SQL: a stored body is bytes that need not be valid JSON."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT DISTINCT ON (e.party_ref) e.party_ref, e.body FROM webhook_events e "
            "JOIN parties p ON p.party_ref = e.party_ref "
            "WHERE e.event_type = 'PARTY_EVENT' AND p.status_reason = 'DOCUMENT_VERIFICATION' "
            "ORDER BY e.party_ref, e.event_time DESC NULLS LAST, e.id DESC"
        )
    ).all()
    for party_ref, body in rows:
        try:
            event = json.loads(bytes(body))
            url = event.get("verificationURL") or event.get("verificationUrl")
            expiry = event.get("verificationURLExpiry") or event.get("verificationUrlExpiry")
            expires_at = datetime.fromisoformat(expiry) if isinstance(expiry, str) else None
        except (ValueError, TypeError, AttributeError):
            continue
        if not isinstance(url, str) or expires_at is None or expires_at.tzinfo is None:
            continue
        bind.execute(
            sa.text(
                "UPDATE parties SET verification_url = :url, verification_url_expires_at = :at "
                "WHERE party_ref = :p"
            ),
            {"url": url, "at": expires_at, "p": party_ref},
        )


def downgrade() -> None:
    op.drop_index(
        "uq_bank_accounts_one_linked",
        table_name="bank_accounts",
        postgresql_where=sa.text("status = 'LINKED'"),
    )
    # REPLACED accounts were LINKED before: what 0004's code knows them as.
    op.execute("UPDATE bank_accounts SET status = 'LINKED' WHERE status = 'REPLACED'")
    op.drop_index(
        op.f("ix_bank_account_history_bank_account_id"), table_name="bank_account_history"
    )
    op.drop_table("bank_account_history")
    op.drop_column("parties", "verification_url_expires_at")
    op.drop_column("parties", "verification_url")
