"""Tables of the funding domain: parties, their bank accounts, transactions and their history.

Money is integer cents in the database; the API speaks decimal strings.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class LinkMethod(StrEnum):
    PLAID = "PLAID"
    HOSTED = "HOSTED"  # Bakkt's hosted bank-picker page (docs/bakkt-contract.md A2)
    ACCOUNT_DETAILS = "ACCOUNT_DETAILS"  # routing and account number (bankAccountLinking/ach)


class PartyStatus(StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    SUSPENDED = "SUSPENDED"
    LIQUIDATED = "LIQUIDATED"
    UNDER_REVIEW = "UNDER_REVIEW"
    CLOSED = "CLOSED"


class BankAccountStatus(StrEnum):
    PENDING = "PENDING"  # link requested, Bakkt has not confirmed it yet
    LINKED = "LINKED"
    FAILED = "FAILED"
    UNLINKED = "UNLINKED"
    DISABLED = "DISABLED"  # an ACH return said the account is unusable
    # A later link succeeded: Bakkt keeps one account per party and now moves money through that
    # one, so this one is kept only for the record and can no longer be used.
    REPLACED = "REPLACED"


class TransactionType(StrEnum):
    DEPOSIT = "DEPOSIT"
    WITHDRAWAL = "WITHDRAWAL"
    RETURN_FEE = "RETURN_FEE"
    PARTNER_WRITE_OFF = "PARTNER_WRITE_OFF"
    BAKKT_WRITE_OFF = "BAKKT_WRITE_OFF"
    DECEASED_PARTY = "DECEASED_PARTY"
    ADJUSTMENT = "ADJUSTMENT"


class TransactionMethod(StrEnum):
    ACH = "ACH"
    WIRE = "WIRE"


class TransactionStatus(StrEnum):
    SUBMITTING = "SUBMITTING"  # intent committed, Bakkt has not answered yet
    UNKNOWN = "UNKNOWN"  # Bakkt's answer was lost (timeout, 5xx): settled by recovery
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"  # Bakkt rejected the request, or it never reached Bakkt in time
    DECLINED = "DECLINED"
    CANCELLED = "CANCELLED"
    RETURNED = "RETURNED"


class TransactionOrigin(StrEnum):
    PARTNER = "PARTNER"  # started through this service
    BAKKT = "BAKKT"  # started at Bakkt: inbound wires, fees, write-offs, adjustments


class HistorySource(StrEnum):
    API = "api"
    WEBHOOK = "webhook"
    SYNC = "sync"
    ADMIN = "admin"


class Party(Base):
    __tablename__ = "parties"

    party_ref: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[str] = mapped_column(String(32), default=PartyStatus.ACTIVE)
    status_reason: Mapped[str | None] = mapped_column(String(64))
    # Bakkt's time of the event that set the status, so a late PARTY_EVENT cannot undo a newer one.
    status_event_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # DOCUMENT_VERIFICATION's upload page and its expiry, from the PARTY_EVENT that set it;
    # cleared by any later status event.
    verification_url: Mapped[str | None] = mapped_column(Text)
    verification_url_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PartyLimit(Base):
    """Per-party overrides of the configured default limits, by direction; NULL = default."""

    __tablename__ = "party_limits"

    party_ref: Mapped[str] = mapped_column(
        ForeignKey("parties.party_ref", ondelete="CASCADE"), primary_key=True
    )
    direction: Mapped[str] = mapped_column(String(16), primary_key=True)
    per_transaction_cents: Mapped[int | None] = mapped_column(BigInteger)
    per_day_cents: Mapped[int | None] = mapped_column(BigInteger)
    per_30_days_cents: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (CheckConstraint("direction IN ('DEPOSIT', 'WITHDRAWAL')", name="direction"),)


class PartyLimitUsage(Base):
    """Running totals for the limits: what a party's counted transfers of one direction add up
    to, per hour of their creation (UTC). Written only by the database (migration 0012's
    trigger on `transactions`), so no code path can move a transaction and forget them; read
    by `repository.limit_usage`."""

    __tablename__ = "party_limit_usage"

    party_ref: Mapped[str] = mapped_column(String(255), primary_key=True)
    direction: Mapped[str] = mapped_column(String(32), primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)


class BankAccount(Base):
    __tablename__ = "bank_accounts"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    party_ref: Mapped[str] = mapped_column(ForeignKey("parties.party_ref"), index=True)
    # The reference Bakkt knows this link by (its partnerTransactionRef).
    link_ref: Mapped[str] = mapped_column(String(255), unique=True)
    link_method: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=BankAccountStatus.PENDING)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    bank_name: Mapped[str | None] = mapped_column(String(255))
    account_mask: Mapped[str | None] = mapped_column(String(4))
    account_type: Mapped[str | None] = mapped_column(String(32))
    reason_code: Mapped[str | None] = mapped_column(String(64))
    status_event_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the hosted link page Bakkt gave us stops working (its `expiresAt`): a HOSTED link
    # still PENDING well after it was abandoned, and recovery expires it.
    link_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        # Bakkt keeps one linked account per party (`/transfer` names none): so do we.
        Index(
            "uq_bank_accounts_one_linked",
            "party_ref",
            unique=True,
            postgresql_where=text("status = 'LINKED'"),
        ),
        Index(
            "ix_bank_accounts_pending_hosted_expiry",
            "link_expires_at",
            postgresql_where=text("status = 'PENDING' AND link_method = 'HOSTED'"),
        ),
    )


class BankAccountHistory(Base):
    """Append-only: every status a bank account took, who moved it and why."""

    __tablename__ = "bank_account_history"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    bank_account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("bank_accounts.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str | None] = mapped_column(String(255))
    reason_code: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    event_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The operator behind a row of source `admin` (the admin token's subject, or `cli:<name>`).
    actor: Mapped[str | None] = mapped_column(String(255))
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    __table_args__ = (
        CheckConstraint(
            "source IN ('api', 'webhook', 'sync', 'admin', 'migration')", name="source_known"
        ),
    )


class Transaction(Base):
    __tablename__ = "transactions"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    party_ref: Mapped[str] = mapped_column(ForeignKey("parties.party_ref"))
    type: Mapped[str] = mapped_column(String(32))
    method: Mapped[str | None] = mapped_column(String(8))
    origin: Mapped[str] = mapped_column(String(16), default=TransactionOrigin.PARTNER)
    status: Mapped[str] = mapped_column(String(16))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    reason_code: Mapped[str | None] = mapped_column(String(64))
    reason_description: Mapped[str | None] = mapped_column(Text)
    # What Bakkt knows this transaction by; derived from our row id for the ones we start.
    bakkt_ref: Mapped[str] = mapped_column(String(255), unique=True)
    # Sent to Bakkt's /transfer; the same key on every retry of the same intent, never a new one.
    bakkt_idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    related_transaction_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("transactions.id"))
    bank_account_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("bank_accounts.id"))
    wire_bank_name: Mapped[str | None] = mapped_column(String(255))
    wire_account_mask: Mapped[str | None] = mapped_column(String(4))
    held_for_review: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )
    review_reason: Mapped[str | None] = mapped_column(Text)
    # What Bakkt's record and ours disagreed about when the hold began; after an operator
    # released the hold, a word with this same disagreement applies instead of holding again.
    review_mismatch: Mapped[str | None] = mapped_column(Text)
    # Bakkt's time of the last applied event: an older event is stale and only recorded.
    status_event_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    submit_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_check_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    check_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("amount_cents >= 0", name="amount_not_negative"),
        CheckConstraint(
            "status IN ('SUBMITTING', 'UNKNOWN', 'PENDING', 'COMPLETED', 'FAILED', "
            "'DECLINED', 'CANCELLED', 'RETURNED')",
            name="status_known",
        ),
        Index("ix_transactions_party_created", "party_ref", "created_at", "id"),
        Index(
            "ix_transactions_due_check",
            "next_check_at",
            postgresql_where=text("status IN ('SUBMITTING', 'UNKNOWN', 'PENDING')"),
        ),
        # The operators' lists across parties, oldest first (app/admin/).
        Index(
            "ix_transactions_open_created",
            "created_at",
            "id",
            postgresql_where=text("status IN ('SUBMITTING', 'UNKNOWN', 'PENDING')"),
        ),
        Index(
            "ix_transactions_held_created",
            "created_at",
            "id",
            postgresql_where=text("held_for_review"),
        ),
    )


class TransactionHistory(Base):
    """Append-only: every move, and every event that was seen but not applied."""

    __tablename__ = "transaction_history"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    transaction_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("transactions.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str | None] = mapped_column(String(255))
    reason_code: Mapped[str | None] = mapped_column(String(64))
    applied: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    note: Mapped[str | None] = mapped_column(Text)
    event_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The operator behind a row of source `admin` (the admin token's subject, or `cli:<name>`).
    actor: Mapped[str | None] = mapped_column(String(255))
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    __table_args__ = (
        CheckConstraint("source IN ('api', 'webhook', 'sync', 'admin')", name="source_known"),
        UniqueConstraint("transaction_id", "event_id", name="uq_transaction_history_event"),
    )
