"""The `events` table: one row per state change, written in the change's own transaction."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, Integer, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

EVENT_VERSION = 1


class EventType(StrEnum):
    TRANSACTION_CREATED = "transaction.created"
    TRANSACTION_PENDING = "transaction.pending"
    TRANSACTION_COMPLETED = "transaction.completed"
    TRANSACTION_FAILED = "transaction.failed"
    TRANSACTION_DECLINED = "transaction.declined"
    TRANSACTION_CANCELLED = "transaction.cancelled"
    TRANSACTION_RETURNED = "transaction.returned"
    TRANSACTION_UNKNOWN = "transaction.unknown"
    TRANSACTION_HELD_FOR_REVIEW = "transaction.held_for_review"
    TRANSACTION_RELEASED = "transaction.released"
    BANK_ACCOUNT_PENDING = "bank_account.pending"
    BANK_ACCOUNT_LINKED = "bank_account.linked"
    BANK_ACCOUNT_FAILED = "bank_account.failed"
    BANK_ACCOUNT_DISABLED = "bank_account.disabled"
    BANK_ACCOUNT_UNDER_REVIEW = "bank_account.under_review"
    BANK_ACCOUNT_UNLINKED = "bank_account.unlinked"
    BANK_ACCOUNT_REPLACED = "bank_account.replaced"
    PARTY_ACTIVE = "party.active"
    PARTY_INACTIVE = "party.inactive"
    PARTY_SUSPENDED = "party.suspended"
    PARTY_LIQUIDATED = "party.liquidated"
    PARTY_UNDER_REVIEW = "party.under_review"
    PARTY_CLOSED = "party.closed"


class Event(Base):
    """`seq` stays NULL until the sequencer numbers the row after its transaction committed;
    readers only ever see numbered rows, so a late commit can never be skipped by a cursor."""

    __tablename__ = "events"

    # Insertion order only (the sequencer numbers in it); never public.
    local_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(Text, unique=True)
    seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    type: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    party_ref: Mapped[str] = mapped_column(Text)
    subject_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # The writing transaction's clock (now() is its start): when the change was made.
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index("ix_events_party_ref_seq", "party_ref", "seq"),
        Index("ix_events_unsequenced", "local_id", postgresql_where=text("seq IS NULL")),
    )
