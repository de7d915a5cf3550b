"""HTTP only: parse, authorize, pick the status code. The rules live in the service, which answers
in the domain's words (`app/idempotency/answers.py`); `render` turns an answer into HTTP."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.dependencies import party_access
from app.auth.tokens import AuthenticationRequired, AuthKeysUnavailable, InvalidToken, TokenExpired
from app.bakkt import BakktClient
from app.config import Settings
from app.core.json_body import DuplicateField, UnstorableText, sound_json_body
from app.db import get_session
from app.errors import PROBLEM_JSON, AppError, NotFound, PayloadTooLarge, Unprocessable
from app.errors import problem_responses as _problem_responses
from app.funding import schemas
from app.funding import service as funding
from app.funding.errors import (
    BAKKT_REJECTIONS,
    BakktUnavailableProblem,
    BankAccountDisabled,
    BankAccountLinkPending,
    BankAccountNotFound,
    BankAccountNotLinked,
    BankAccountReplaced,
    BankAccountUnderReview,
    InvalidCursor,
    InvalidProcessorToken,
    LimitExceeded,
    NoLinkedBankAccount,
    PartyNotActive,
    PartySuspended,
    TransactionNotFound,
    UnknownBankAccount,
)
from app.funding.models import TransactionMethod
from app.funding.party_status import REASONS
from app.funding.service import Direction, TransferIntent
from app.idempotency.http import HEADER, REPLAYED_HEADER, render
from app.idempotency.service import (
    ClaimTerms,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    IdempotencyRequestInProgress,
    IdempotentRequest,
    fingerprint,
    parse_key,
    terms_for,
)

router = APIRouter(prefix="/v1/parties/{partyRef}", tags=["funding"])


class ValidationFailed(Unprocessable):
    """Declared so the OpenAPI document shows the problem body FastAPI's 422 really has."""

    code = "validation_failed"
    title = "The request is not valid"


# --- dependencies -------------------------------------------------------------------------------
# All `async def`: FastAPI runs a plain `def` dependency in its thread pool, a hand-off to a worker
# thread and back (a queue, a condition, the GIL) on every request for a few attribute reads.


async def _bakkt(request: Request) -> BakktClient:
    bakkt: BakktClient = request.app.state.bakkt
    return bakkt


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _claim_terms(request: Request) -> ClaimTerms:
    state = request.app.state
    heartbeat = state.heartbeat
    return terms_for(state.settings, heartbeat.id if heartbeat is not None else None)


async def idempotency_key(
    request: Request, _sound_body: Annotated[None, Depends(sound_json_body)]
) -> str:
    # Read by hand rather than as a Header parameter: a missing key is our 400 with its own
    # code, not FastAPI's generic 422. The OpenAPI entry is added by IDEMPOTENT below.
    return parse_key(request.headers.get(HEADER))


PartyRef = Annotated[str, Depends(party_access)]
IdempotencyKeyValue = Annotated[str, Depends(idempotency_key)]
Session = Annotated[AsyncSession, Depends(get_session)]
Bakkt = Annotated[BakktClient, Depends(_bakkt)]
AppSettings = Annotated[Settings, Depends(_settings)]
Terms = Annotated[ClaimTerms, Depends(_claim_terms)]


def _idempotent(request: Request, party_ref: str, key: str, body: Any) -> IdempotentRequest:
    path = request.url.path
    return IdempotentRequest(
        party_ref=party_ref,
        key=key,
        method=request.method,
        path=path,
        fingerprint=fingerprint(request.method, path, body),
    )


# --- OpenAPI declarations -----------------------------------------------------------------------

IDEMPOTENT: dict[str, Any] = {
    "parameters": [
        {
            "name": HEADER,
            "in": "header",
            "required": True,
            "description": "8-255 printable ASCII characters, unique per intended request (a "
            "UUID is fine). Kept 10 days, per party: a retry with the same key and the same "
            "request gets the first response again; with another request, 422.",
            "schema": {"type": "string", "minLength": 8, "maxLength": 255},
        }
    ]
}

_HEADER_DOCS: dict[str, dict[str, Any]] = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer"},
    },
    "WWW-Authenticate": {"description": "`Bearer`, with the error", "schema": {"type": "string"}},
    REPLAYED_HEADER: {
        "description": "`true` when this is the stored response of an earlier request with the "
        "same Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Cache-Control": {"description": "`no-store`: live data", "schema": {"type": "string"}},
}

_COMMON_ERRORS: tuple[type[AppError], ...] = (
    AuthenticationRequired,
    InvalidToken,
    TokenExpired,
    AuthKeysUnavailable,
    NotFound,
    ValidationFailed,
)
_IDEMPOTENCY_ERRORS: tuple[type[AppError], ...] = (
    IdempotencyKeyMissing,
    IdempotencyKeyInvalid,
    IdempotencyKeyReused,
    IdempotencyRequestInProgress,
)
_BODY_ERRORS: tuple[type[AppError], ...] = (PayloadTooLarge, DuplicateField, UnstorableText)
_ALL_BAKKT_REJECTIONS = tuple(BAKKT_REJECTIONS.values())


def _responses(
    *errors: type[AppError],
    success: int,
    description: str,
    idempotent: bool = False,
    success_headers: tuple[str, ...] = (),
) -> dict[int | str, dict[str, Any]]:
    unique: dict[str, type[AppError]] = {}
    for error in (*_COMMON_ERRORS, *errors):
        unique.setdefault(error.code, error)
    declared = _problem_responses(*unique.values())
    for status, entry in declared.items():
        # The body is application/problem+json; `model` alone would only describe it as JSON.
        entry["content"] = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        headers: dict[str, Any] = {}
        if status == 401:
            headers["WWW-Authenticate"] = _HEADER_DOCS["WWW-Authenticate"]
        if status in (409, 503):
            headers["Retry-After"] = _HEADER_DOCS["Retry-After"]
        # Stored (and so replayed) are the outcomes a request reached after it was accepted.
        if idempotent and status not in (400, 401, 404, 413):
            headers[REPLAYED_HEADER] = _HEADER_DOCS[REPLAYED_HEADER]
        if headers:
            entry["headers"] = headers
    headers = {name: _HEADER_DOCS[name] for name in success_headers}
    if idempotent:
        headers[REPLAYED_HEADER] = _HEADER_DOCS[REPLAYED_HEADER]
    declared[success] = {"description": description, **({"headers": headers} if headers else {})}
    return declared


_GATE_ERRORS = (PartySuspended, PartyNotActive)
_ACH_ERRORS = (
    UnknownBankAccount,
    NoLinkedBankAccount,
    BankAccountLinkPending,
    BankAccountReplaced,
    BankAccountNotLinked,
    BankAccountDisabled,
    BankAccountUnderReview,
)

# --- routes -------------------------------------------------------------------------------------


@router.post(
    "/link-sessions",
    status_code=201,
    response_model=schemas.LinkSession,
    summary="Start linking a bank account on Bakkt's hosted page",
    description="Asks Bakkt for a link URL (valid until `expiresAt`) and records a PENDING bank "
    "account that Bakkt's link webhook later completes.",
    openapi_extra=IDEMPOTENT,
    responses=_responses(
        *_IDEMPOTENCY_ERRORS,
        *_BODY_ERRORS,
        *_GATE_ERRORS,
        *_ALL_BAKKT_REJECTIONS,
        BakktUnavailableProblem,
        success=201,
        description="The link URL",
        idempotent=True,
    ),
)
async def create_link_session(
    request: Request,
    party_ref: PartyRef,
    key: IdempotencyKeyValue,
    session: Session,
    bakkt: Bakkt,
    terms: Terms,
    body: Annotated[schemas.LinkSessionRequest | None, Body()] = None,
) -> JSONResponse:
    payload = body or schemas.LinkSessionRequest()
    idem = _idempotent(request, party_ref, key, payload)
    return render(
        await funding.create_link_session(session, bakkt, terms, party_ref, payload, idem)
    )


@router.post(
    "/bank-accounts",
    status_code=202,
    response_model=schemas.BankAccountOut,
    summary="Link a bank account: a Plaid processor token, or routing and account number",
    description="Two bodies, told apart by their fields: `{processorToken}` (Plaid) or "
    "`{routingNumber, accountNumber, accountType}` (account details; the routing number's ABA "
    "checksum is checked, 422 `validation_failed` with `routing_number_checksum`). Either is "
    "passed to Bakkt once and never stored (of an account number, only the last 4 digits). "
    "The account is PENDING until Bakkt's link webhook says LINKED (with its bank name and "
    "mask) or FAILED. Bakkt keeps **one** bank account per party: once this link succeeds it "
    "becomes the party's current account and the one before it is REPLACED (kept in the list "
    "and its history, no longer usable).",
    openapi_extra=IDEMPOTENT,
    responses=_responses(
        *_IDEMPOTENCY_ERRORS,
        *_BODY_ERRORS,
        *_GATE_ERRORS,
        InvalidProcessorToken,
        *_ALL_BAKKT_REJECTIONS,
        BakktUnavailableProblem,
        success=202,
        description="The bank account, PENDING",
        idempotent=True,
    ),
)
async def link_bank_account(
    request: Request,
    party_ref: PartyRef,
    key: IdempotencyKeyValue,
    session: Session,
    bakkt: Bakkt,
    terms: Terms,
    body: schemas.BankAccountLinkRequest,
) -> JSONResponse:
    shape = body.shape()
    if shape is None:
        # Neither shape: name the field of the simpler one, as a missing field would be.
        missing = {"type": "missing", "loc": ("body", "processorToken"), "msg": "Field required"}
        raise RequestValidationError([missing])
    idem = _idempotent(request, party_ref, key, shape)
    return render(await funding.link_bank_account(session, bakkt, terms, party_ref, shape, idem))


@router.get(
    "/bank-accounts",
    response_model=schemas.BankAccountList,
    summary="The party's bank accounts and their link status, newest first",
    responses=_responses(success=200, description="The bank accounts"),
)
async def list_bank_accounts(party_ref: PartyRef, session: Session) -> schemas.BankAccountList:
    return await funding.list_bank_accounts(session, party_ref)


@router.get(
    "/bank-accounts/{bankAccountId}",
    response_model=schemas.BankAccountDetail,
    summary="One bank account with its full status history",
    responses=_responses(BankAccountNotFound, success=200, description="The bank account"),
)
async def get_bank_account(
    party_ref: PartyRef,
    session: Session,
    bank_account_id: Annotated[uuid.UUID, Path(alias="bankAccountId")],
) -> schemas.BankAccountDetail:
    return await funding.get_bank_account(session, party_ref, bank_account_id)


@router.delete(
    "/bank-accounts/{bankAccountId}",
    status_code=200,
    response_model=schemas.BankAccountOut,
    summary="Unlink the party's current bank account at Bakkt",
    description="Bakkt's unlink acts on the party's current account, so only that one (LINKED, "
    "or DISABLED with nothing linked since) is unlinked at Bakkt. Any other account (REPLACED, "
    "FAILED, UNLINKED) is already unusable: it is answered as it is and Bakkt is not called.",
    openapi_extra=IDEMPOTENT,
    responses=_responses(
        *_IDEMPOTENCY_ERRORS,
        BankAccountNotFound,
        BankAccountLinkPending,
        *_ALL_BAKKT_REJECTIONS,
        BakktUnavailableProblem,
        success=200,
        description="The bank account: UNLINKED, or as it was when it was not the current one",
        idempotent=True,
    ),
)
async def unlink_bank_account(
    request: Request,
    party_ref: PartyRef,
    key: IdempotencyKeyValue,
    session: Session,
    bakkt: Bakkt,
    terms: Terms,
    bank_account_id: Annotated[uuid.UUID, Path(alias="bankAccountId")],
) -> JSONResponse:
    idem = _idempotent(request, party_ref, key, None)
    return render(await funding.unlink(session, bakkt, terms, party_ref, bank_account_id, idem))


_TRANSFER_RESPONSES = (
    *_IDEMPOTENCY_ERRORS,
    *_BODY_ERRORS,
    *_GATE_ERRORS,
    LimitExceeded,
    *_ACH_ERRORS,
    *_ALL_BAKKT_REJECTIONS,
)
_TRANSFER_ACCEPTED = (
    "The transaction. PENDING once Bakkt accepted it; UNKNOWN when Bakkt's answer was lost or "
    "Bakkt could not be reached (the service settles it by itself, with the same Bakkt "
    "idempotency key: poll the transaction). Never waits for settlement."
)


@router.post(
    "/deposits",
    status_code=202,
    response_model=schemas.TransactionOut,
    summary="Deposit by ACH from the linked bank account",
    openapi_extra=IDEMPOTENT,
    responses=_responses(
        *_TRANSFER_RESPONSES, success=202, description=_TRANSFER_ACCEPTED, idempotent=True
    ),
)
async def deposit(
    request: Request,
    party_ref: PartyRef,
    key: IdempotencyKeyValue,
    session: Session,
    bakkt: Bakkt,
    settings: AppSettings,
    terms: Terms,
    body: schemas.DepositRequest,
) -> JSONResponse:
    idem = _idempotent(request, party_ref, key, body)
    intent = TransferIntent(
        direction=Direction.DEPOSIT,
        method=TransactionMethod.ACH,
        amount=body.amount,
        bank_account_id=body.bank_account_id,
    )
    return render(await funding.transfer(session, bakkt, settings, terms, party_ref, intent, idem))


@router.post(
    "/withdrawals",
    status_code=202,
    response_model=schemas.TransactionOut,
    summary="Withdraw by ACH to the linked bank account, or by wire to the given destination",
    description="A wire's destination is sent to Bakkt once; only the bank name and the last 4 "
    "digits of the account number are kept.",
    openapi_extra=IDEMPOTENT,
    responses=_responses(
        *_TRANSFER_RESPONSES, success=202, description=_TRANSFER_ACCEPTED, idempotent=True
    ),
)
async def withdraw(
    request: Request,
    party_ref: PartyRef,
    key: IdempotencyKeyValue,
    session: Session,
    bakkt: Bakkt,
    settings: AppSettings,
    terms: Terms,
    body: Annotated[schemas.WithdrawalRequest, Body()],
) -> JSONResponse:
    idem = _idempotent(request, party_ref, key, body)
    if isinstance(body, schemas.WireWithdrawalRequest):
        intent = TransferIntent(
            direction=Direction.WITHDRAWAL,
            method=TransactionMethod.WIRE,
            amount=body.amount,
            wire=body.destination,
        )
    else:
        intent = TransferIntent(
            direction=Direction.WITHDRAWAL,
            method=TransactionMethod.ACH,
            amount=body.amount,
            bank_account_id=body.bank_account_id,
        )
    return render(await funding.transfer(session, bakkt, settings, terms, party_ref, intent, idem))


@router.get(
    "/transactions",
    response_model=schemas.TransactionPage,
    summary="The party's transactions, newest first",
    description="Keyset pagination: pass `nextCursor` back as `cursor`. Filters combine; "
    "`status` and `type` may repeat; `createdFrom` is inclusive, `createdTo` exclusive.",
    responses=_responses(InvalidCursor, success=200, description="One page"),
)
async def list_transactions(
    party_ref: PartyRef, session: Session, query: Annotated[schemas.TransactionQuery, Query()]
) -> schemas.TransactionPage:
    return await funding.list_transactions(session, party_ref, query)


@router.get(
    "/transactions/{transactionId}",
    response_model=schemas.TransactionDetail,
    summary="One transaction with its full status history",
    responses=_responses(TransactionNotFound, success=200, description="The transaction"),
)
async def get_transaction(
    party_ref: PartyRef,
    session: Session,
    transaction_id: Annotated[uuid.UUID, Path(alias="transactionId")],
) -> schemas.TransactionDetail:
    return await funding.get_transaction(session, party_ref, transaction_id)


@router.get(
    "/balance",
    response_model=schemas.BalanceOut,
    summary="Settled and unsettled balance, live from Bakkt",
    responses=_responses(
        *_ALL_BAKKT_REJECTIONS,
        BakktUnavailableProblem,
        success=200,
        description="The balance",
        success_headers=("Cache-Control",),
    ),
)
async def balance(party_ref: PartyRef, bakkt: Bakkt, response: Response) -> schemas.BalanceOut:
    result = await funding.balance(bakkt, party_ref)
    response.headers["Cache-Control"] = "no-store"
    return result


@router.get(
    "/wire-instructions",
    response_model=schemas.WireInstructionsOut,
    summary="Where to send a wire deposit, live from Bakkt (never cache it)",
    description="Bakkt's bank details can change: fetch them every time the consumer opens "
    "the wire screen. The consumer must put `referenceNumber` in the wire's beneficiary "
    "instructions.",
    responses=_responses(
        *_GATE_ERRORS,
        *_ALL_BAKKT_REJECTIONS,
        BakktUnavailableProblem,
        success=200,
        description="The wire instructions",
        success_headers=("Cache-Control",),
    ),
)
async def wire_instructions(
    party_ref: PartyRef, session: Session, bakkt: Bakkt, response: Response
) -> schemas.WireInstructionsOut:
    result = await funding.wire_instructions(session, bakkt, party_ref)
    response.headers["Cache-Control"] = "no-store"
    return result


_REASON_TABLE = "\n".join(f"| `{r.code}` | {r.meaning} | {r.effect} |" for r in REASONS.values())


@router.get(
    "",
    response_model=schemas.PartyOut,
    summary="The party's status at Bakkt, its reason, and what it may do now",
    description="From Bakkt's PARTY_EVENT webhooks. `allowed` follows the status: ACTIVE may "
    "do everything, LIQUIDATED may only withdraw, every other status nothing. ACH also needs "
    "`currentBankAccount`. For `DOCUMENT_VERIFICATION`, `verificationUrl` is where the "
    "consumer uploads documents before `verificationUrlExpiresAt`. A reason code not listed "
    "below is shown as Bakkt sent it, with null meaning and effect.\n\n"
    "| reasonCode | meaning | effect |\n|---|---|---|\n" + _REASON_TABLE,
    responses=_responses(success=200, description="The party"),
)
async def get_party(party_ref: PartyRef, session: Session) -> schemas.PartyOut:
    return await funding.get_party(session, party_ref)
