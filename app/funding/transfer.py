"""The Bakkt transfer request for one of our transactions: the API's first send and recovery's
re-send build it here, from the same row, so a re-send is byte-for-byte the same intent."""

from __future__ import annotations

from app.bakkt import TransferDirection, TransferMethod, TransferRequest, WireDestination
from app.core.money import to_dollars
from app.funding.models import TransactionMethod, TransactionType


def transfer_request(
    *,
    party_ref: str,
    bakkt_ref: str,
    idempotency_key: str,
    type_: str,
    method: str | None,
    amount_cents: int,
    currency: str,
    wire: WireDestination | None = None,
) -> TransferRequest:
    return TransferRequest(
        party_ref=party_ref,
        transaction_ref=bakkt_ref,
        idempotency_key=idempotency_key,
        direction=TransferDirection.DEPOSIT
        if type_ == TransactionType.DEPOSIT
        else TransferDirection.WITHDRAW,
        method=TransferMethod(method or TransactionMethod.ACH),
        amount=to_dollars(amount_cents),
        currency=currency,
        wire=wire,
    )
