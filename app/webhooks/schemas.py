"""What the webhook endpoint answers. Bakkt only looks at the status code; the body helps a human
reading delivery logs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class WebhookReceipt(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    received: bool = True
    request_id: str = Field(alias="requestId", description="Bakkt's requestId of the event")
    duplicate: bool = Field(description="The event was already stored; nothing changed")
    status: str = Field(
        description="What became of the event: APPLIED, IGNORED, PARKED, HELD, MALFORMED, "
        "UNMATCHED, CONFLICT (a redelivery whose body differs from the stored one: kept for an "
        "operator, not applied), or RECEIVED while it is still being applied"
    )
