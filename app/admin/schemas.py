"""The admin API's JSON: camelCase like the funding API, with what operators need to see (the
history's source, actor and notes, holds, schedules), and never a secret or an account number."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from app.auth.dependencies import PARTY_REF_PATTERN
from app.funding.models import (
    BankAccountStatus,
    HistorySource,
    TransactionMethod,
    TransactionStatus,
    TransactionType,
)
from app.funding.schemas import RequestModel, ResponseModel
from app.webhooks.models import EventStatus

NOTE_LENGTH = 1000
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: str) -> str:
    """Postgres text cannot hold NUL, and UTF-8 cannot encode a lone surrogate: a 422 (or the
    command line's usage error), not a driver error, for text that carries one."""
    if _UNSTORABLE.search(value):
        raise PydanticCustomError("invalid_characters", "holds NUL or a lone surrogate")
    return value


Note = Annotated[
    str, StringConstraints(min_length=1, max_length=NOTE_LENGTH), AfterValidator(storable)
]


class Bucket(StrEnum):
    """The operational buckets of the transaction list (docs/operations.md, "Admin")."""

    STUCK = "stuck"  # SUBMITTING, UNKNOWN or PENDING for longer than `stuckAfterHours`
    UNKNOWN = "unknown"  # UNKNOWN, or SUBMITTING past the grace period: the outcome is unknown
    HELD = "held"  # held for review
    OVERDUE = "overdue"  # PENDING past its expected settlement (the sweep's calendar)


class AdminTransactionQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=200)
    status: list[TransactionStatus] = Field(default_factory=list)
    bucket: Bucket | None = None
    party_ref: str | None = Field(default=None, alias="partyRef", pattern=PARTY_REF_PATTERN)
    stuck_after_hours: int = Field(
        default=168,
        ge=1,
        le=24 * 366,
        alias="stuckAfterHours",
        description="The `stuck` bucket's threshold; 168 h is FiatOnrampTransactionsStuck's.",
    )


class AdminTransactionOut(ResponseModel):
    id: uuid.UUID
    party_ref: str
    type: TransactionType
    method: TransactionMethod | None
    origin: str
    status: TransactionStatus
    amount: str = Field(examples=["25.00"])
    currency: str
    reason_code: str | None
    reason_description: str | None
    bakkt_ref: str = Field(description="Bakkt's `partnerTransactionRef`: ask Bakkt about this.")
    bank_account_id: uuid.UUID | None
    held_for_review: bool
    review_reason: str | None
    submit_attempts: int
    check_attempts: int
    next_check_at: datetime | None = Field(description="When recovery looks at it next.")
    expected_by: datetime | None = Field(
        description="PENDING only: when it is overdue (the sweep's settlement calendar)."
    )
    created_at: datetime
    updated_at: datetime


class AdminHistoryEntryOut(ResponseModel):
    id: int
    from_status: TransactionStatus | None = Field(alias="from")
    to: TransactionStatus
    source: HistorySource
    actor: str | None = Field(description="The operator behind a row of source `admin`.")
    event_id: str | None
    reason_code: str | None
    applied: bool
    note: str | None
    event_time: datetime | None
    at: datetime


class AdminTransactionDetail(AdminTransactionOut):
    history: list[AdminHistoryEntryOut]


class AdminTransactionPage(ResponseModel):
    items: list[AdminTransactionOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (newer) page; null on the last page."
    )


class TransactionActionOut(ResponseModel):
    outcome: str = Field(description="What the action did, in words.")
    transaction: AdminTransactionDetail


class NoteRequest(RequestModel):
    note: Note | None = Field(default=None, description="Why, for the history.")


class DisableRequest(RequestModel):
    reason: Note = Field(description="Why, for the history.")


class AdminBankAccountHistoryEntryOut(ResponseModel):
    id: int
    from_status: BankAccountStatus | None = Field(alias="from")
    to: BankAccountStatus
    source: str
    actor: str | None
    event_id: str | None
    reason_code: str | None
    note: str | None
    at: datetime


class AdminBankAccountDetail(ResponseModel):
    id: uuid.UUID
    party_ref: str
    status: BankAccountStatus
    current: bool
    link_method: str
    bank_name: str | None
    account_mask: str | None = Field(description="The last 4 digits of the account number.")
    account_type: str | None
    reason_code: str | None = Field(
        description="`operator_disabled` for an account an operator disabled; an R-code after "
        "an ACH return."
    )
    needs_review: bool
    created_at: datetime
    updated_at: datetime
    history: list[AdminBankAccountHistoryEntryOut]


class BankAccountActionOut(ResponseModel):
    outcome: str
    bank_account: AdminBankAccountDetail


class WebhookEventQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=200)
    status: list[EventStatus] = Field(default_factory=list)
    request_id: (
        Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(storable)]
        | None
    ) = Field(default=None, alias="requestId")
    needs_operator: bool | None = Field(default=None, alias="needsOperator")


class WebhookEventOut(ResponseModel):
    id: int = Field(description="The stored row's id: what `replay` takes.")
    request_id: str = Field(
        description="Bakkt's requestId; `conflict:...` for a redelivery with another body, "
        "`sha256:...` or the `webhook-id` for an unreadable one."
    )
    event_type: str | None
    party_ref: str | None
    transaction_ref: str | None
    status: EventStatus
    outcome: str | None
    attempts: int
    needs_operator: bool
    event_time: datetime | None
    received_at: datetime
    processed_at: datetime | None
    next_attempt_at: datetime | None


class WebhookEventPage(ResponseModel):
    items: list[WebhookEventOut]
    next_cursor: str | None


class ReplayOut(ResponseModel):
    outcome: str | None
    event: WebhookEventOut


class AlertQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=200)
    include_resolved: bool = Field(default=False, alias="includeResolved")
    kind: (
        Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(storable)]
        | None
    ) = None


class AlertOut(ResponseModel):
    id: int
    kind: str
    subject: str
    detail: str
    data: dict[str, Any]
    created_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_note: str | None


class AlertPage(ResponseModel):
    items: list[AlertOut]
    next_cursor: str | None
