"""Tables of partner webhooks: endpoints, per-(endpoint, party) lanes, one delivery row per
event per endpoint, and the delivery log (one row per attempt). docs/partner-webhooks.md says
why lanes and delivery rows rather than cursors alone."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
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
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class EndpointSource(StrEnum):
    SETTINGS = "settings"  # PARTNER_WEBHOOK_URLS, signed with PARTNER_WEBHOOK_SECRETS
    ADMIN = "admin"  # added through the admin routes, with secrets of its own


class EndpointStatus(StrEnum):
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"


class DisabledReason(StrEnum):
    ADMIN = "admin"
    GONE = "gone"  # the receiver answered 410
    FAILING = "failing"  # every attempt failed for PARTNER_WEBHOOK_DISABLE_AFTER_DAYS
    REMOVED_FROM_SETTINGS = "removed_from_settings"


class DeliveryState(StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"


class WebhookEndpoint(Base):
    __tablename__ = "partner_webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(Text)
    # NULL: every event type.
    event_types: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    # An admin endpoint's own `whsec_` secrets, all signing (rotation); a settings endpoint's
    # come from the settings and are never stored. Never in a response or a log line.
    secrets: Mapped[list[str]] = mapped_column(
        ARRAY(Text), default=list, server_default=text("'{}'")
    )
    status: Mapped[str] = mapped_column(String(16), default=EndpointStatus.ENABLED)
    disabled_reason: Mapped[str | None] = mapped_column(String(32))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Every event with a seq up to this one has been turned into delivery rows (or filtered).
    fanout_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    # The start of the current run of failures with no success in between; NULL while healthy.
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookLane(Base):
    """One party's queue at one endpoint: what is claimed, retried and scheduled. Its events go
    out one at a time in seq order, so a failing event holds back that party's later ones and
    nobody else's."""

    __tablename__ = "partner_webhook_lanes"

    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("partner_webhook_endpoints.id", ondelete="CASCADE"),
        primary_key=True,
    )
    party_ref: Mapped[str] = mapped_column(Text, primary_key=True)
    # When the lane is next due: NULL when nothing is pending; pushed a lease ahead while a
    # worker holds it; the retry time while its first pending event is failing.
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Failed attempts in a row of the lane's first pending event.
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The claim that holds the lane: an outcome recorded under another claim's token (its lease
    # ran out and another worker took the lane) leaves the schedule to the newer claim.
    claim_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # The process holding that claim (service_processes.id; NULL: a claimer without a heartbeat,
    # left to the lease). Once its heartbeat is stale the lane is due again at once.
    claim_holder: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))

    __table_args__ = (
        Index(
            "ix_partner_webhook_lanes_due",
            "next_attempt_at",
            postgresql_where=text("next_attempt_at IS NOT NULL"),
        ),
        Index(
            "ix_partner_webhook_lanes_claim_holder",
            "claim_holder",
            postgresql_where=text("claim_token IS NOT NULL"),
        ),
    )


class WebhookDelivery(Base):
    """One event for one endpoint: PENDING until a 2xx, then DELIVERED. A redelivery sets a row
    back to PENDING."""

    __tablename__ = "partner_webhook_deliveries"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("partner_webhook_endpoints.id", ondelete="CASCADE")
    )
    event_local_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("events.local_id", ondelete="CASCADE")
    )
    # The event's seq and party, copied so a lane's order needs no join.
    seq: Mapped[int] = mapped_column(BigInteger)
    party_ref: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_local_id"),
        # A lane's pending events in order: the claim reads its first few from here.
        Index(
            "ix_partner_webhook_deliveries_lane_pending",
            "endpoint_id",
            "party_ref",
            "seq",
            postgresql_where=text("state = 'PENDING'"),
        ),
        Index(
            "ix_partner_webhook_deliveries_delivered_at",
            "delivered_at",
            postgresql_where=text("state = 'DELIVERED'"),
        ),
    )


class WebhookAttempt(Base):
    """The delivery log: every attempt, with its answer and how long it took."""

    __tablename__ = "partner_webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("partner_webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    endpoint_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    event_id: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_partner_webhook_attempts_endpoint_id_id", "endpoint_id", "id"),)
