"""The processes of the service (API servers and standalone workers) that are alive, as far as
the database knows: each renews its row's heartbeat every few seconds while it runs."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, Integer, String, func
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class ServiceProcess(Base):
    __tablename__ = "service_processes"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    # "serve" or "worker": for an operator reading the table, nothing decides on it.
    kind: Mapped[str] = mapped_column(String(16))
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Judged by the database's clock only, so hosts with drifting clocks agree who is alive.
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
