"""`/v1/admin/...`: HTTP only. Admin scope required (403 `admin_scope_required` for a consumer's
token); each action is recorded under the token's subject. The rules live in the service."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request

from app.admin import errors, schemas
from app.admin.service import AdminService
from app.auth.dependencies import AdminScopeRequired, require_admin
from app.auth.tokens import (
    AuthenticationRequired,
    AuthKeysUnavailable,
    InvalidToken,
    Principal,
    TokenExpired,
)
from app.core.json_body import DuplicateField, UnstorableText, sound_json_body
from app.errors import PROBLEM_JSON, AppError, PayloadTooLarge, problem_responses
from app.funding.errors import (
    BAKKT_REJECTIONS,
    BakktUnavailableProblem,
    BankAccountNotFound,
    BankAccountNotLinked,
    InvalidCursor,
    TransactionNotFound,
)
from app.funding.router import ValidationFailed

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])

ACTOR_LENGTH = 255


def get_service(request: Request) -> AdminService:
    state = request.app.state
    return AdminService(state.session_factory, state.bakkt, state.settings)


def actor(principal: Annotated[Principal, Depends(require_admin)]) -> str:
    """Who the history will say acted: the token's subject."""
    name = principal.subject or principal.party_ref
    if not name:
        raise errors.AdminSubjectRequired(
            "Admin actions are recorded under the token's `sub`; this token has none."
        )
    return name[:ACTOR_LENGTH]


Service = Annotated[AdminService, Depends(get_service)]
Actor = Annotated[str, Depends(actor)]
SoundBody = Depends(sound_json_body)
TransactionId = Annotated[uuid.UUID, Path(alias="transactionId")]
BankAccountId = Annotated[uuid.UUID, Path(alias="bankAccountId")]
# Bigint sequences: anything past them is no row (and must not reach the driver).
EventId = Annotated[int, Path(alias="eventId", ge=1, le=2**63 - 1)]
AlertId = Annotated[int, Path(alias="alertId", ge=1, le=2**63 - 1)]

_COMMON: tuple[type[AppError], ...] = (
    AuthenticationRequired,
    InvalidToken,
    TokenExpired,
    AuthKeysUnavailable,
    AdminScopeRequired,
    ValidationFailed,
)
_ACTION: tuple[type[AppError], ...] = (
    errors.AdminSubjectRequired,
    PayloadTooLarge,
    DuplicateField,
    UnstorableText,
)


def _responses(
    *problems: type[AppError], description: str, success: int = 200
) -> dict[int | str, dict[str, Any]]:
    unique: dict[str, type[AppError]] = {}
    for problem in (*_COMMON, *problems):
        unique.setdefault(problem.code, problem)
    declared = problem_responses(*unique.values())
    for status, entry in declared.items():
        entry["content"] = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        if status in (409, 503):
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
            }
    declared[success] = {"description": description}
    return declared


# --- transactions -------------------------------------------------------------------------------


@router.get(
    "/transactions",
    response_model=schemas.AdminTransactionPage,
    summary="Every party's transactions, oldest first, by status and operational bucket",
    description="`bucket`: `stuck` (SUBMITTING, UNKNOWN or PENDING for more than "
    "`stuckAfterHours`), `unknown` (UNKNOWN, or SUBMITTING past the grace period), `held` "
    "(held for review), `overdue` (PENDING past its expected settlement, `expectedBy`). "
    "Filters combine; `status` may repeat. Keyset pagination on (createdAt, id): pass "
    "`nextCursor` back as `cursor`.",
    responses=_responses(InvalidCursor, description="One page"),
)
async def list_transactions(
    service: Service, query: Annotated[schemas.AdminTransactionQuery, Query()]
) -> schemas.AdminTransactionPage:
    return await service.list_transactions(query)


@router.get(
    "/transactions/{transactionId}",
    response_model=schemas.AdminTransactionDetail,
    summary="One transaction of any party, with its history (sources, actors, notes)",
    responses=_responses(TransactionNotFound, description="The transaction"),
)
async def get_transaction(
    service: Service, transaction_id: TransactionId
) -> schemas.AdminTransactionDetail:
    return await service.get_transaction(transaction_id)


@router.post(
    "/transactions/{transactionId}/sync",
    response_model=schemas.TransactionActionOut,
    summary="Ask Bakkt about one transaction now and apply its answer",
    description="As recovery would, now: Bakkt's record is applied through the same rules as a "
    "webhook's; an unknown outcome Bakkt never received is re-sent with its own idempotency key "
    "(never a new one) or failed with the reason. A SUBMITTING transaction inside its grace "
    "period gets 409 `transaction_in_flight`. Always writes a history row (source `admin`).",
    responses=_responses(
        TransactionNotFound,
        errors.TransactionInFlight,
        errors.AdminSubjectRequired,
        BakktUnavailableProblem,
        *BAKKT_REJECTIONS.values(),
        description="What the sync did, and the transaction",
    ),
)
async def sync_transaction(
    service: Service, actor: Actor, transaction_id: TransactionId
) -> schemas.TransactionActionOut:
    return await service.sync_transaction(transaction_id, actor=actor)


@router.post(
    "/transactions/{transactionId}/release",
    response_model=schemas.TransactionActionOut,
    summary="Release a transaction held for review, applying what was withheld",
    description="The operator accepts the disagreement that held it (a later word of Bakkt's "
    "with the same disagreement applies; a different one holds it again). The words withheld "
    "while it was held are applied in Bakkt's order where the state table allows, and its "
    "`transaction_held_for_review` alert is resolved. 409 `transaction_not_held` otherwise.",
    responses=_responses(
        TransactionNotFound,
        errors.TransactionNotHeld,
        *_ACTION,
        description="What the release did, and the transaction",
    ),
    dependencies=[SoundBody],
)
async def release_transaction(
    service: Service,
    actor: Actor,
    transaction_id: TransactionId,
    body: Annotated[schemas.NoteRequest | None, Body()] = None,
) -> schemas.TransactionActionOut:
    note = body.note if body is not None else None
    return await service.release(transaction_id, actor=actor, note=note)


# --- webhook events -----------------------------------------------------------------------------


@router.get(
    "/webhook-events",
    response_model=schemas.WebhookEventPage,
    summary="Stored webhook events, newest first (PARKED, HELD, CONFLICT, ... by `status`)",
    responses=_responses(InvalidCursor, description="One page"),
)
async def list_webhook_events(
    service: Service, query: Annotated[schemas.WebhookEventQuery, Query()]
) -> schemas.WebhookEventPage:
    return await service.list_webhook_events(query)


@router.post(
    "/webhook-events/{eventId}/replay",
    response_model=schemas.ReplayOut,
    summary="Apply a stored webhook event again",
    description="For PARKED and UNMATCHED events (their transaction exists by now), CONFLICT "
    "rows (the other body, applied under the row's own id), events stored RECEIVED, IGNORED "
    "for an unknown type or status, MALFORMED ones a newer release can read. Refused with 409: "
    "`webhook_event_applied`; `webhook_event_recorded` when the transaction's history holds "
    "the event already (a HELD event's word is applied by releasing the hold); "
    "`webhook_event_unreadable`; `webhook_event_body_cleared`.",
    responses=_responses(
        errors.WebhookEventNotFound,
        errors.WebhookEventApplied,
        errors.WebhookEventRecorded,
        errors.WebhookEventUnreadable,
        errors.WebhookEventBodyCleared,
        errors.AdminSubjectRequired,
        description="What applying it did, and the stored event",
    ),
)
async def replay_webhook_event(
    service: Service, actor: Actor, event_id: EventId
) -> schemas.ReplayOut:
    return await service.replay_webhook_event(event_id, actor=actor)


# --- bank accounts ------------------------------------------------------------------------------


@router.get(
    "/bank-accounts/{bankAccountId}",
    response_model=schemas.AdminBankAccountDetail,
    summary="One bank account of any party, with its history (sources, actors, notes)",
    responses=_responses(BankAccountNotFound, description="The bank account"),
)
async def get_bank_account(
    service: Service, bank_account_id: BankAccountId
) -> schemas.AdminBankAccountDetail:
    return await service.get_bank_account(bank_account_id)


@router.post(
    "/bank-accounts/{bankAccountId}/disable",
    response_model=schemas.BankAccountActionOut,
    summary="Stop ACH money through a LINKED bank account (here; Bakkt is not told)",
    description="DISABLED with `reasonCode` `operator_disabled`: ACH deposits and withdrawals "
    "are refused (`bank_account_disabled`) until an operator enables it again. 409 "
    "`bank_account_already_disabled`, or `bank_account_not_linked` for any other status.",
    responses=_responses(
        BankAccountNotFound,
        errors.BankAccountAlreadyDisabled,
        BankAccountNotLinked,
        *_ACTION,
        description="The bank account, DISABLED",
    ),
    dependencies=[SoundBody],
)
async def disable_bank_account(
    service: Service,
    actor: Actor,
    bank_account_id: BankAccountId,
    body: Annotated[schemas.DisableRequest, Body()],
) -> schemas.BankAccountActionOut:
    return await service.disable_bank_account(bank_account_id, actor=actor, reason=body.reason)


@router.post(
    "/bank-accounts/{bankAccountId}/enable",
    response_model=schemas.BankAccountActionOut,
    summary="Enable a bank account an operator disabled",
    description="Only an operator's disable is undone: LINKED again, or REPLACED when the party "
    "linked another account since. An account an ACH return disabled, or one not disabled, "
    "gets 409 `bank_account_not_disabled_by_operator`.",
    responses=_responses(
        BankAccountNotFound,
        errors.BankAccountNotOperatorDisabled,
        *_ACTION,
        description="The bank account",
    ),
    dependencies=[SoundBody],
)
async def enable_bank_account(
    service: Service,
    actor: Actor,
    bank_account_id: BankAccountId,
    body: Annotated[schemas.NoteRequest | None, Body()] = None,
) -> schemas.BankAccountActionOut:
    note = body.note if body is not None else None
    return await service.enable_bank_account(bank_account_id, actor=actor, note=note)


# --- alerts -------------------------------------------------------------------------------------


@router.get(
    "/alerts",
    response_model=schemas.AlertPage,
    summary="Operator alerts, newest first (open ones unless `includeResolved`)",
    responses=_responses(InvalidCursor, description="One page"),
)
async def list_alerts(
    service: Service, query: Annotated[schemas.AlertQuery, Query()]
) -> schemas.AlertPage:
    return await service.list_alerts(query)


@router.post(
    "/alerts/{alertId}/resolve",
    response_model=schemas.AlertOut,
    summary="Mark an alert dealt with",
    responses=_responses(
        errors.AlertNotFound, errors.AlertAlreadyResolved, *_ACTION, description="The alert"
    ),
    dependencies=[SoundBody],
)
async def resolve_alert(
    service: Service,
    actor: Actor,
    alert_id: AlertId,
    body: Annotated[schemas.NoteRequest | None, Body()] = None,
) -> schemas.AlertOut:
    note = body.note if body is not None else None
    return await service.resolve_alert(alert_id, actor=actor, note=note)
