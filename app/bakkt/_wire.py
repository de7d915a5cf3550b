"""Bakkt's wire format: the only module that knows Bakkt's JSON field names.

Parse leniently (both spellings where sources disagree, unknown enum values kept raw and logged,
extra fields ignored); emit exactly the documented shapes. Shapes not published by Bakkt follow
docs/bakkt-contract.md, the item named beside each.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, TypeVar

from app.bakkt.errors import FieldError
from app.bakkt.types import (
    BakktTransaction,
    Balance,
    BankLinkEvent,
    FiatEvent,
    LinkStatus,
    LinkUrl,
    PartyEvent,
    PartyStatus,
    TransactionKind,
    TransactionStatus,
    TransferRequest,
    UnknownEvent,
    WebhookEvent,
    WireInstructions,
)

log = logging.getLogger("app.bakkt")

E = TypeVar("E", bound=StrEnum)

# Values Bakkt may echo back in error details that must never reach a log or an exception text.
_SENSITIVE_FIELDS = frozenset(
    name.lower()
    for name in (
        "accountNumber",
        "wireAccountNumber",
        "processorToken",
        "routingNumber",
        "wireRoutingNumber",
        "accessToken",
        "clientSecret",
    )
)


_SURROGATE = re.compile("[\ud800-\udfff]")


class BadShape(ValueError):
    """A Bakkt body that lacks what we need or carries the wrong types."""


def loads(raw: bytes) -> Any:
    # Decimal, never float: amounts must survive parsing exactly.
    try:
        return json.loads(raw, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadShape(f"not JSON: {exc}") from None
    except RecursionError:
        # A body nested deeper than the interpreter's stack: verified or not, it is no event.
        raise BadShape("not JSON we can read: nested too deep") from None


def dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _pick(obj: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = obj.get(name)
        if value is not None:
            return value
    return None


def _storable(value: str) -> bool:
    """Postgres text holds neither NUL nor a lone surrogate (which UTF-8 cannot encode)."""
    return "\x00" not in value and not _SURROGATE.search(value)


def text(obj: Mapping[str, Any], *names: str) -> str:
    """A required identifier or code: refused when it could not be stored or matched as sent."""
    value = _pick(obj, *names)
    if not isinstance(value, str) or not value:
        raise BadShape(f"{names[0]} missing or not a string")
    if not _storable(value):
        raise BadShape(f"{names[0]} holds NUL or a lone surrogate")
    return value


def opt_text(obj: Mapping[str, Any], *names: str) -> str | None:
    """Descriptive text: what Postgres cannot hold becomes U+FFFD, so a stray byte in a bank's
    name never blocks the event it comes with."""
    value = _pick(obj, *names)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise BadShape(f"{names[0]} is not a string")
    value = str(value)
    return value if _storable(value) else _SURROGATE.sub("\ufffd", value.replace("\x00", "\ufffd"))


def decimal(obj: Mapping[str, Any], *names: str) -> Decimal:
    value = _pick(obj, *names)
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise BadShape(f"{names[0]} missing or not a number")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise BadShape(f"{names[0]} is not a number") from None
    if not result.is_finite():
        raise BadShape(f"{names[0]} is not a finite number")
    return result


def parse_time(value: Any, name: str) -> datetime:
    """An aware UTC time. Out of range (`1e20`, `9999-12-31T23:59:59-23:59`, which is past the
    year 9999 in UTC) is a BadShape, never an OverflowError further on."""
    try:
        if isinstance(value, str) and value:
            parsed = datetime.fromisoformat(value)
        elif isinstance(value, int | Decimal) and not isinstance(value, bool):
            # docs/bakkt-contract.md §1 mentions epoch times; milliseconds when the number is
            # too big for seconds.
            seconds = float(value) / 1000 if value > 10**11 else float(value)
            parsed = datetime.fromtimestamp(seconds, tz=UTC)
        else:
            raise BadShape(f"{name} missing or not a time")
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError, OSError) as exc:
        if isinstance(exc, BadShape):
            raise
        raise BadShape(f"{name} is not an ISO-8601 time in range") from None


def time(obj: Mapping[str, Any], *names: str) -> datetime:
    return parse_time(_pick(obj, *names), names[0])


def opt_time(obj: Mapping[str, Any], *names: str) -> datetime | None:
    value = _pick(obj, *names)
    return None if value is None else parse_time(value, names[0])


def _lenient_time(obj: Mapping[str, Any], *names: str) -> datetime | None:
    """A time nothing is decided by: unreadable is as good as absent."""
    try:
        return opt_time(obj, *names)
    except BadShape:
        log.warning("unreadable Bakkt %s ignored", names[0])
        return None


def enum_or_raw(cls: type[E], value: Any, name: str) -> E | str:
    if not isinstance(value, str) or not value:
        raise BadShape(f"{name} missing or not a string")
    try:
        return cls(value)
    except ValueError:
        log.warning("unknown Bakkt %s value %r kept as is", name, value)
        return value


def mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadShape(f"{what} is not a JSON object")
    return value


# --- responses -----------------------------------------------------------------------------


def token(body: Any) -> tuple[str, float | None]:
    """(access token, lifetime in seconds if stated). docs/bakkt-contract.md §2.1 and A1."""
    obj = mapping(body, "token response")
    access = text(obj, "accessToken", "access_token")
    raw_expiry = _pick(obj, "expiresIn", "expires_in")
    if raw_expiry is None:
        return access, None
    try:
        return access, float(raw_expiry)
    except (TypeError, ValueError):
        raise BadShape("expiresIn is not a number of seconds") from None


def transaction(
    obj: Mapping[str, Any], *, fallback_time: datetime | None = None
) -> BakktTransaction:
    # The whole object is assumed: docs/bakkt-contract.md A5. The request spelling
    # `fiatTransactType` and `instrumentType` are accepted for the kind because
    # docs/bakkt-contract.md §4.4 leaves open which field carries it. `createdAt` and
    # `updatedAt` were never published: each stands in for the other, then `fallback_time`
    # (a webhook's `eventTime`); the names filled in are in `missing`.
    created = opt_time(obj, "createdAt")
    updated = opt_time(obj, "updatedAt")
    missing = tuple(n for n, v in (("createdAt", created), ("updatedAt", updated)) if v is None)
    created = created or updated or fallback_time
    updated = updated or created
    if created is None or updated is None:
        raise BadShape("createdAt missing or not a time")
    return BakktTransaction(
        transaction_ref=text(obj, "partnerTransactionRef"),
        related_transaction_ref=opt_text(obj, "relatedPartnerTransactionRef"),
        party_ref=text(obj, "partnerPartyRef"),
        kind=enum_or_raw(
            TransactionKind,
            _pick(obj, "fiatTransactionType", "fiatTransactType", "instrumentType"),
            "fiatTransactionType",
        ),
        status=enum_or_raw(TransactionStatus, obj.get("transactionStatus"), "transactionStatus"),
        amount=decimal(obj, "amount"),
        currency=opt_text(obj, "currency") or "USD",
        reason_code=opt_text(obj, "reasonCode"),
        reason_description=opt_text(obj, "reasonDescription"),
        created_at=created,
        updated_at=updated,
        missing=missing,
    )


def transaction_page(body: Any) -> tuple[list[BakktTransaction], str | None]:
    # docs/bakkt-contract.md A4.
    obj = mapping(body, "transaction page")
    items = obj.get("transactions")
    if not isinstance(items, list):
        raise BadShape("transactions is not a list")
    return [transaction(mapping(item, "transaction")) for item in items], opt_text(
        obj, "nextPageToken"
    )


def link_url(body: Any) -> LinkUrl:
    # docs/bakkt-contract.md A2.
    obj = mapping(body, "link URL response")
    return LinkUrl(url=text(obj, "linkUrl"), expires_at=time(obj, "expiresAt"))


def balance(body: Any, currency: str) -> Balance:
    # Documented as an array of per-currency rows (docs/bakkt-contract.md §2.10); a single object
    # is taken too.
    rows = body if isinstance(body, list) else [mapping(body, "balance")]
    for row in rows:
        row = mapping(row, "balance row")
        if (opt_text(row, "currency") or "USD") == currency:
            return Balance(
                currency=currency,
                settled=decimal(row, "settledAmount"),
                unsettled=decimal(row, "unsettledAmount"),
            )
    # No row for the currency: Bakkt holds nothing for the party in it.
    return Balance(currency=currency, settled=Decimal(0), unsettled=Decimal(0))


def wire_instructions(body: Any) -> WireInstructions:
    obj = mapping(body, "wire instructions")
    return WireInstructions(
        reference_number=text(obj, "wireReferenceNumber"),
        routing_number=text(obj, "wireRoutingNumber"),
        account_number=text(obj, "wireAccountNumber"),
        swift_code=text(obj, "wireSwiftCode"),
        bank_name=text(obj, "wireBankName"),
        bank_address=text(obj, "wireBankAddress"),
        beneficiary_name=text(obj, "wireBeneficiaryName"),
        beneficiary_address=text(obj, "wireBeneficiaryAddress"),
    )


def reports_failure(body: Any) -> bool:
    """`{"success": false}` on a 2xx: the link/unlink schemas' own way of saying no."""
    return isinstance(body, Mapping) and body.get("success") is False


def heartbeat(body: Any) -> str:
    return text(mapping(body, "heartbeat response"), "result")


class ApiError:
    """A `PublicApiError` body (docs/bakkt-contract.md §5.1), read as far as it can be."""

    __slots__ = ("bakkt_type", "description", "detail", "details", "original")

    def __init__(self, body: Any, redact: Iterable[str] = ()) -> None:
        obj: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
        secrets = tuple(redact)
        self.bakkt_type = _str_or_none(obj.get("type"))
        self.description = _scrub(_str_or_none(obj.get("description")), secrets)
        self.detail = _scrub(_str_or_none(obj.get("detail")), secrets)
        raw_details = obj.get("details")
        self.details = tuple(
            _field_error(item, secrets)
            for item in (raw_details if isinstance(raw_details, list) else [])
            if isinstance(item, Mapping)
        )
        # docs/bakkt-contract.md A7: a 409 carries {"status": int, "body": any}.
        original = obj.get("originalResponse")
        self.original: tuple[int, Any] | None = None
        if isinstance(original, Mapping):
            status = original.get("status")
            if isinstance(status, int) and not isinstance(status, bool):
                self.original = (status, original.get("body"))


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _field_error(item: Mapping[str, Any], secrets: tuple[str, ...]) -> FieldError:
    field_name = _str_or_none(item.get("field"))
    rejected = item.get("rejectedValue")
    sensitive = field_name and field_name.rsplit(".", 1)[-1].lower() in _SENSITIVE_FIELDS
    if sensitive and rejected is not None:
        rejected = "***"
    elif isinstance(rejected, str):
        rejected = _scrub(rejected, secrets)
    elif isinstance(rejected, Decimal):
        rejected = str(rejected)
    return FieldError(
        type=_str_or_none(item.get("type")),
        description=_scrub(_str_or_none(item.get("description")), secrets),
        field=field_name,
        rejected_value=rejected,
    )


def _scrub(text: str | None, secrets: tuple[str, ...]) -> str | None:
    if text is None:
        return None
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def sensitive_values(body: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The secret strings in a request body we send, to be scrubbed from Bakkt's answer."""
    if body is None:
        return ()
    found: list[str] = []
    for name, value in body.items():
        if isinstance(value, Mapping):
            found.extend(sensitive_values(value))
        elif isinstance(value, str) and name.lower() in _SENSITIVE_FIELDS and len(value) >= 4:
            found.append(value)
    return tuple(found)


# --- requests ------------------------------------------------------------------------------


def transfer_body(req: TransferRequest) -> dict[str, Any]:
    # Exact for amounts with at most 2 places: the shortest float repr round-trips to them.
    amount = float(req.amount)
    if Decimal(repr(amount)) != req.amount:
        raise ValueError("amount has too many digits to send exactly")
    body: dict[str, Any] = {
        "partnerTransactionRef": req.transaction_ref,
        "idempotencyKey": req.idempotency_key,
        "fiatTransactType": req.direction.value,
        "instrumentType": req.method.value,
        "amount": amount,
        "currency": req.currency,
    }
    if req.wire is not None:
        details = {
            "wireRoutingNumber": req.wire.routing_number,
            "wireAccountNumber": req.wire.account_number,
            "wireBankName": req.wire.bank_name,
            "wireBankAddress": req.wire.bank_address,
            "wireSwiftCode": req.wire.swift_code,
        }
        body["wireWithdrawDetails"] = {k: v for k, v in details.items() if v is not None}
    return body


def link_url_body(link_ref: str, redirect_uri: str | None) -> dict[str, Any]:
    return {"partnerTransactionRef": link_ref, "redirectUri": redirect_uri}


def plaid_link_body(link_ref: str, processor_token: str) -> dict[str, Any]:
    return {"processorToken": processor_token, "partnerTransactionRef": link_ref}


def ach_link_body(
    link_ref: str, account_number: str, routing_number: str, account_type: str
) -> dict[str, Any]:
    return {
        "accountNumber": account_number,
        "routingNumber": routing_number,
        "accountType": account_type,
        "partnerTransactionRef": link_ref,
    }


def unlink_body(link_ref: str, instrument: str) -> dict[str, Any]:
    return {"instrumentType": instrument, "partnerTransactionRef": link_ref}


def heartbeat_body(request_id: str) -> dict[str, Any]:
    return {"requestId": request_id}


# --- listing transactions (docs/bakkt-contract.md A3, A4) ---------------------------------------

TRANSACTION_NOT_FOUND = "TRANSACTION_NOT_FOUND"


def transactions_query(
    page_size: int,
    updated_since: datetime | None,
    statuses: Iterable[TransactionStatus | str],
    page_token: str | None,
) -> list[tuple[str, str]]:
    params = [("pageSize", str(page_size))]
    if updated_since is not None:
        stamp = updated_since.astimezone(UTC).isoformat().replace("+00:00", "Z")
        params.append(("updatedSince", stamp))
    params += [("status", str(status)) for status in statuses]
    if page_token is not None:
        params.append(("pageToken", page_token))
    return params


# --- webhooks (docs/bakkt-contract.md A6) -------------------------------------------------------

FIAT_EVENT = "FIAT_EVENT"
PARTY_EVENT = "PARTY_EVENT"
BANK_ACCOUNT_LINK = "BANK_ACCOUNT_LINK"
# Standard Webhooks' headers, and the static token a partner may configure instead or as well.
WEBHOOK_ID_HEADER = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
WEBHOOK_TOKEN_HEADER = "x-webhook-token"  # noqa: S105 - a header name, not a secret


def webhook_type(event: WebhookEvent) -> str:
    """Bakkt's `partnerWebhookType` of a parsed event."""
    if isinstance(event, FiatEvent):
        return FIAT_EVENT
    if isinstance(event, PartyEvent):
        return PARTY_EVENT
    if isinstance(event, BankLinkEvent):
        return BANK_ACCOUNT_LINK
    return event.webhook_type


def webhook(obj: Mapping[str, Any], *, received_at: datetime | None = None) -> WebhookEvent:
    """Only what applying needs is required (docs/bakkt-contract.md A6 is our assumption, not
    Bakkt's word): the event id, type, the reference, the status, and for FIAT_EVENT the amount.
    A missing `eventTime` is taken from the transaction's times, then from `received_at`; each
    field filled in so is named in the event's `missing`."""
    event_id = text(obj, "requestId")
    kind = text(obj, "partnerWebhookType")
    stated = opt_time(obj, "eventTime")
    if kind == FIAT_EVENT:
        fiat = transaction(obj, fallback_time=stated or received_at)
        at = stated or (fiat.updated_at if "updatedAt" not in fiat.missing else None)
        return FiatEvent(
            event_id=event_id,
            party_ref=fiat.party_ref,
            event_time=at or fiat.created_at,
            transaction=fiat,
            missing=(() if stated else ("eventTime",)) + fiat.missing,
        )
    event_time = stated or received_at
    missing = () if stated else ("eventTime",)
    if kind in (PARTY_EVENT, BANK_ACCOUNT_LINK) and event_time is None:
        raise BadShape("eventTime missing or not a time")
    if kind == PARTY_EVENT and event_time is not None:
        return PartyEvent(
            event_id=event_id,
            party_ref=text(obj, "partnerPartyRef"),
            event_time=event_time,
            status=enum_or_raw(PartyStatus, obj.get("partyStatus"), "partyStatus"),
            reason_code=opt_text(obj, "reasonCode"),
            # docs/bakkt-contract.md §4.3: the casing of these two differs between Bakkt's pages.
            verification_url=opt_text(obj, "verificationURL", "verificationUrl"),
            verification_url_expiry=_lenient_time(
                obj, "verificationURLExpiry", "verificationUrlExpiry"
            ),
            missing=missing,
        )
    if kind == BANK_ACCOUNT_LINK and event_time is not None:
        return BankLinkEvent(
            event_id=event_id,
            party_ref=text(obj, "partnerPartyRef"),
            event_time=event_time,
            link_ref=text(obj, "partnerTransactionRef"),
            status=enum_or_raw(LinkStatus, obj.get("linkStatus"), "linkStatus"),
            reason_code=opt_text(obj, "reasonCode"),
            bank_name=opt_text(obj, "bankName"),
            account_mask=opt_text(obj, "accountMask"),
            account_type=opt_text(obj, "accountType"),
            missing=missing,
        )
    log.warning("unknown Bakkt webhook type %r (event %s) kept as is", kind, event_id)
    party_ref = obj.get("partnerPartyRef")
    return UnknownEvent(
        event_id=event_id,
        party_ref=party_ref if isinstance(party_ref, str) and _storable(party_ref) else None,
        event_time=event_time,
        webhook_type=kind,
        body=obj,
    )
