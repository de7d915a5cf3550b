"""The public event format, version 1 (README "Events"): what the catch-up routes page, what the
SSE stream carries, and what the partner's webhook endpoints receive."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from app.funding.schemas import BankAccountOut, PartyOut, ResponseModel, TransactionOut

EVENT_ID_PATTERN = r"^evt_[0-9A-HJKMNP-TV-Z]{26}$"
CURSOR_DESCRIPTION = (
    "Opaque position in the event order (today the decimal digits of a number): pass back the "
    "`next` of a page, or an event's SSE `id`, unchanged."
)

TransactionEventType = Literal[
    "transaction.created",
    "transaction.pending",
    "transaction.completed",
    "transaction.failed",
    "transaction.declined",
    "transaction.cancelled",
    "transaction.returned",
    "transaction.unknown",
    "transaction.held_for_review",
    "transaction.released",
]
BankAccountEventType = Literal[
    "bank_account.pending",
    "bank_account.linked",
    "bank_account.failed",
    "bank_account.disabled",
    "bank_account.under_review",
    "bank_account.unlinked",
    "bank_account.replaced",
]
PartyEventType = Literal[
    "party.active",
    "party.inactive",
    "party.suspended",
    "party.liquidated",
    "party.under_review",
    "party.closed",
]


class EventBase(ResponseModel):
    id: str = Field(
        pattern=EVENT_ID_PATTERN,
        description="Stable and unique: the same event always has this id, on every route, in "
        "the stream and in webhook deliveries (`webhook-id`). Deduplicate on it.",
        examples=["evt_01JF3Z8Q4W6X2V9K7B5N3M1P0R"],
    )
    version: Literal[1] = Field(description="The format of `data` and of this envelope.")
    created_at: datetime = Field(
        description="When the change was made (the database transaction that made it)."
    )
    party_ref: str = Field(description="The party the change concerns.")


class TransactionEvent(EventBase):
    type: TransactionEventType
    data: TransactionOut = Field(
        description="The transaction as `GET /v1/parties/{partyRef}/transactions/{id}` shows "
        "it right after the change, without its `history` (the events are the history)."
    )


class BankAccountEvent(EventBase):
    type: BankAccountEventType
    data: BankAccountOut = Field(
        description="The bank account as `GET /v1/parties/{partyRef}/bank-accounts` lists it "
        "once the change committed. A link Bakkt never received is removed (404 from then on); "
        "its last event is `bank_account.failed` with `reasonCode` `link_not_sent`."
    )


class PartyEvent(EventBase):
    type: PartyEventType
    data: PartyOut = Field(
        description="The party as `GET /v1/parties/{partyRef}` shows it after the change."
    )


Event = Annotated[TransactionEvent | BankAccountEvent | PartyEvent, Field(discriminator="type")]


class EventPage(ResponseModel):
    data: list[Event] = Field(description="In the event order, oldest first.")
    next: str = Field(
        description="Pass as `after` for the next page: the cursor of the last event here, or "
        "the `after` given when there is none (poll again with it later). " + CURSOR_DESCRIPTION
    )
    has_more: bool = Field(description="More events follow at once: ask for the next page now.")
