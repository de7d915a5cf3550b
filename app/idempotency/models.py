"""Consumer-facing idempotency keys (Stripe's design), scoped to the party."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Identity, Integer, String, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    party_ref: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(255))
    request_method: Mapped[str] = mapped_column(String(8))
    request_path: Mapped[str] = mapped_column(String(512))
    fingerprint: Mapped[str] = mapped_column(String(64))
    # Where a request that died mid-flight resumes: started -> intent_written -> finished.
    recovery_point: Mapped[str] = mapped_column(String(32), default="started")
    # A lease: a claim older than this is stale and may be taken over by a retry.
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The process holding the claim (app.processes): once it stops renewing its heartbeat the
    # claim is stale whatever `locked_until` says. NULL: the lease alone decides.
    holder_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # What the request answered (app/idempotency/answers.py: accepted, created, done, rejected)
    # and its body. NULL on rows finished by a release before migration 0012.
    response_kind: Mapped[str | None] = mapped_column(String(16))
    # The HTTP status the releases before 0012 stored instead of a kind, and still read: written
    # beside the kind until a contract migration drops it.
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[Any | None] = mapped_column(JSONB)
    transaction_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)

    __table_args__ = (UniqueConstraint("party_ref", "key", name="uq_idempotency_keys_party_key"),)
