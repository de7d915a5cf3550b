"""The public JSON of each funding object, built from its row: the one code the routes, the
stored idempotent answers and the events (`app.events`) all render with, so they cannot differ."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row

from app.core.money import format_dollars
from app.funding import schemas
from app.funding.models import (
    BankAccount,
    BankAccountStatus,
    HistorySource,
    Party,
    PartyStatus,
    Transaction,
    TransactionMethod,
    TransactionStatus,
    TransactionType,
)
from app.funding.party_status import REASONS, allowed


def _transaction_fields(txn: Transaction | Row[Any]) -> dict[str, Any]:
    # A row of the same columns (the detail read's, by hand) renders exactly as the entity.
    return {
        "id": txn.id,
        "type": TransactionType(txn.type),
        "method": TransactionMethod(txn.method) if txn.method else None,
        "status": TransactionStatus(txn.status),
        "amount": format_dollars(txn.amount_cents),
        "currency": txn.currency,
        "reason_code": txn.reason_code,
        "created_at": txn.created_at,
        "updated_at": txn.updated_at,
    }


def transaction_out(txn: Transaction) -> schemas.TransactionOut:
    return schemas.TransactionOut(**_transaction_fields(txn))


def transaction_detail(rows: Sequence[Row[Any]]) -> schemas.TransactionDetail:
    """From `repository.transaction_with_history`'s rows: the transaction (on each row) and a
    history entry per row, if it has any."""
    return schemas.TransactionDetail(
        **_transaction_fields(rows[0]),
        history=[
            schemas.HistoryEntryOut(
                from_status=TransactionStatus(h.h_from_status) if h.h_from_status else None,
                to=TransactionStatus(h.h_to_status),
                source=HistorySource(h.h_source),
                reason_code=h.h_reason_code,
                event_id=h.h_event_id,
                applied=h.h_applied,
                at=h.h_recorded_at,
            )
            for h in rows
            if h.h_to_status is not None
        ],
    )


def bank_account_out(account: BankAccount | Row[Any]) -> schemas.BankAccountOut:
    # Also from a row of the same columns (the list read's, by hand).
    return schemas.BankAccountOut(
        id=account.id,
        status=BankAccountStatus(account.status),
        link_method=account.link_method,
        bank_name=account.bank_name,
        account_mask=account.account_mask,
        account_type=account.account_type,
        reason_code=account.reason_code,
        needs_review=account.needs_review,
        current=account.status == BankAccountStatus.LINKED,
        created_at=account.created_at,
        updated_at=account.updated_at,
    )


def party_out(party_ref: str, party: Party | None, account: BankAccount | None) -> schemas.PartyOut:
    # A party Bakkt has said nothing about is ACTIVE: that is how the money path treats it.
    status = party.status if party is not None else PartyStatus.ACTIVE
    code = party.status_reason if party is not None else None
    reason = REASONS.get(code) if code else None
    may = allowed(status)
    return schemas.PartyOut(
        party_ref=party_ref,
        status=status,
        reason_code=code,
        reason_meaning=reason.meaning if reason else None,
        reason_effect=reason.effect if reason else None,
        status_changed_at=party.status_event_time if party is not None else None,
        allowed=schemas.PartyActions(
            deposit=may.deposit, withdraw=may.withdraw, link_bank_account=may.link
        ),
        verification_url=party.verification_url if party is not None else None,
        verification_url_expires_at=(
            party.verification_url_expires_at if party is not None else None
        ),
        current_bank_account=bank_account_out(account) if account is not None else None,
    )
