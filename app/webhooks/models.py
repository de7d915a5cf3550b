"""Every verified Bakkt webhook, stored once, with what became of it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Identity,
    Integer,
    LargeBinary,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class EventStatus(StrEnum):
    RECEIVED = "RECEIVED"
    APPLIED = "APPLIED"
    IGNORED = "IGNORED"
    PARKED = "PARKED"
    UNMATCHED = "UNMATCHED"
    HELD = "HELD"
    MALFORMED = "MALFORMED"
    # A delivery under a stored requestId with another body: kept, never applied.
    CONFLICT = "CONFLICT"


class WebhookEvent(Base):
    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # Bakkt's requestId: stable across redeliveries, so a redelivery is a no-op.
    request_id: Mapped[str] = mapped_column(String(255), unique=True)
    event_type: Mapped[str | None] = mapped_column(String(64))
    party_ref: Mapped[str | None] = mapped_column(String(255))
    # The transaction a FIAT_EVENT concerns and the transfer it relates to (fees, adjustments):
    # kept outside the body so a fee that arrived before its transfer can be linked later.
    transaction_ref: Mapped[str | None] = mapped_column(String(255), index=True)
    related_ref: Mapped[str | None] = mapped_column(String(255), index=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    event_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # RECEIVED (stored, not yet applied), APPLIED, IGNORED (stale, forbidden or not ours to
    # act on), PARKED (its transaction is unknown yet), UNMATCHED (parked too long), HELD
    # (amount or currency disagrees with our row), MALFORMED (verified but unreadable),
    # CONFLICT (another body under a stored requestId, kept under a derived id, not applied).
    status: Mapped[str] = mapped_column(String(16), default=EventStatus.RECEIVED)
    outcome: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    needs_operator: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
