"""The public JSON of the funding API: camelCase, amounts as decimal strings, nothing secret."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyUrl,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    SecretStr,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from app.funding.models import (
    BankAccountStatus,
    HistorySource,
    TransactionMethod,
    TransactionStatus,
    TransactionType,
)

CENT = Decimal("0.01")
# Far above any limit; only keeps nonsense (and integer overflow of cents) out.
MAX_AMOUNT = Decimal("999999999.99")
_AMOUNT_SYNTAX = re.compile(r"^(0|[1-9][0-9]*)(?:\.([0-9]+))?$")
AMOUNT_PATTERN = r"^(0|[1-9][0-9]{0,8})(\.[0-9]{1,2})?$"


def _parse_amount(value: object) -> Decimal:
    # Errors name the rule, never the value: a body may hold other people's data.
    if not isinstance(value, str):
        raise PydanticCustomError(
            "amount_not_string",
            'amount must be a string of dollars such as "25.00"; JSON numbers are refused '
            "because binary floats cannot hold every amount exactly",
        )
    if value.startswith("-"):
        raise PydanticCustomError("amount_not_positive", "amount must be greater than 0")
    if len(value) > 32:
        raise PydanticCustomError("amount_too_large", "amount is too large")
    match = _AMOUNT_SYNTAX.match(value)
    if match is None:
        raise PydanticCustomError(
            "amount_format", 'amount must be digits with an optional decimal point, like "25.00"'
        )
    if match.group(2) is not None and len(match.group(2)) > 2:
        raise PydanticCustomError(
            "amount_too_precise", "amount must have at most 2 decimal places (whole cents)"
        )
    amount = Decimal(value)
    if amount <= 0:
        raise PydanticCustomError("amount_not_positive", "amount must be greater than 0")
    if amount > MAX_AMOUNT:
        raise PydanticCustomError("amount_too_large", "amount is too large")
    return amount.quantize(CENT)


Amount = Annotated[
    Decimal,
    BeforeValidator(_parse_amount),
    PlainSerializer(lambda d: f"{d:.2f}", return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": AMOUNT_PATTERN,
            "description": "US dollars as a decimal string: greater than 0, at most 2 places.",
            "examples": ["25.00"],
        }
    ),
]


def _aba_checksum(value: str) -> str:
    digits = [int(c) for c in value]
    weighted = 3 * sum(digits[0::3]) + 7 * sum(digits[1::3]) + sum(digits[2::3])
    if weighted % 10:
        raise PydanticCustomError(
            "routing_number_checksum", "routingNumber is not a valid ABA number"
        )
    return value


def _account_digits(value: SecretStr) -> SecretStr:
    if not re.fullmatch(r"[0-9]{4,17}", value.get_secret_value()):
        raise PydanticCustomError("account_number_format", "accountNumber must be 4-17 digits")
    return value


class RequestModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", hide_input_in_errors=True
    )


class ResponseModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


# --- requests ---------------------------------------------------------------------------------


# Schemes a browser runs, reads locally or treats as something other than a place to land:
# a redirect to one of them would run script or open a file in the consumer's browser. Every
# other scheme is allowed, because partner apps come back through their own deep links
# (`myapp://bank-linked`).
_REFUSED_REDIRECT_SCHEMES = frozenset(
    {
        "javascript",
        "vbscript",
        "data",
        "file",
        "blob",
        "filesystem",
        "about",
        "view-source",
        "jar",
        "ftp",
        "ws",
        "wss",
    }
)


def _safe_redirect(value: AnyUrl) -> AnyUrl:
    if value.scheme in _REFUSED_REDIRECT_SCHEMES:
        raise PydanticCustomError(
            "redirect_scheme_refused",
            "redirectUri must be an http(s) URL or an app's own deep link (myapp://...); "
            "{scheme}: is refused",
            {"scheme": value.scheme},
        )
    return value


class LinkSessionRequest(RequestModel):
    redirect_uri: (
        Annotated[AnyUrl, Field(max_length=2048), AfterValidator(_safe_redirect)] | None
    ) = Field(
        default=None,
        description="Where Bakkt's hosted page sends the browser when the consumer is done: "
        "an https URL or the app's own deep link (`myapp://bank-linked`). Bakkt adds "
        "`partnerTransactionRef` and `status` to its query. `javascript:`, `data:`, "
        "`vbscript:`, `file:` and similar schemes are refused.",
        examples=["myapp://bank-linked"],
    )


class PlaidLinkRequest(RequestModel):
    processor_token: Annotated[SecretStr, Field(min_length=1, max_length=1024)] = Field(
        description="A Plaid processor token created with `processor: bakkt`. Used once, "
        "never stored or returned."
    )


RoutingNumber = Annotated[
    str,
    Field(pattern=r"^[0-9]{9}$", description="9-digit ABA routing number (checksum checked)."),
    AfterValidator(_aba_checksum),
]
AccountNumber = Annotated[
    SecretStr,
    AfterValidator(_account_digits),
    WithJsonSchema({"type": "string", "pattern": r"^[0-9]{4,17}$", "writeOnly": True}),
]


AccountType = Literal["CHECKING", "SAVINGS"]


class AccountDetailsLinkRequest(RequestModel):
    """Linking by the account's routing and account number (Bakkt's bankAccountLinking/ach)."""

    routing_number: RoutingNumber
    account_number: AccountNumber = Field(
        description="Sent to Bakkt once; only its last 4 digits are kept or shown."
    )
    account_type: AccountType


_LINK_SHAPES = (
    "send either `processorToken` alone (Plaid), or `routingNumber`, `accountNumber` and "
    "`accountType` (account details)"
)


def _link_request_schema(schema: dict[str, Any]) -> None:
    # Shown as what it accepts, the two shapes, rather than as the flat model that reads them.
    schema.clear()
    schema.update(
        {
            "title": "BankAccountLinkRequest",
            "oneOf": [
                PlaidLinkRequest.model_json_schema(by_alias=True),
                AccountDetailsLinkRequest.model_json_schema(by_alias=True),
            ],
        }
    )


class BankAccountLinkRequest(RequestModel):
    """The body of POST .../bank-accounts: one of two shapes, told apart by their fields. One
    flat model (rather than a pydantic union) so that an error names the field as sent, never
    a union member; the OpenAPI document shows the two shapes as `oneOf`."""

    model_config = ConfigDict(json_schema_extra=_link_request_schema)

    processor_token: Annotated[SecretStr, Field(min_length=1, max_length=1024)] | None = None
    routing_number: RoutingNumber | None = None
    account_number: AccountNumber | None = None
    account_type: AccountType | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> BankAccountLinkRequest:
        details = (self.routing_number, self.account_number, self.account_type)
        if self.processor_token is not None:
            if any(v is not None for v in details):
                raise PydanticCustomError("link_body_shape", _LINK_SHAPES)
        elif any(v is None for v in details) and any(v is not None for v in details):
            raise PydanticCustomError("link_body_shape", _LINK_SHAPES)
        return self

    def shape(self) -> PlaidLinkRequest | AccountDetailsLinkRequest | None:
        """The request as one of its two shapes; None when it carries neither."""
        if self.processor_token is not None:
            return PlaidLinkRequest(processor_token=self.processor_token)
        if self.routing_number and self.account_number and self.account_type:
            return AccountDetailsLinkRequest(
                routing_number=self.routing_number,
                account_number=self.account_number,
                account_type=self.account_type,
            )
        return None


class DepositRequest(RequestModel):
    amount: Amount
    currency: Literal["USD"] = "USD"
    method: Literal["ACH"] = Field(
        default="ACH",
        description="ACH from the linked bank account. Wire deposits are sent by the consumer "
        "to the wire instructions and appear as transactions by themselves.",
    )
    bank_account_id: uuid.UUID | None = Field(
        default=None,
        description="Optional. Bakkt pulls from the party's current (LINKED) account whatever "
        "is named; naming any other account answers 409.",
    )


class WireDestination(RequestModel):
    routing_number: Annotated[str, Field(pattern=r"^[0-9]{9}$"), AfterValidator(_aba_checksum)]
    account_number: Annotated[
        SecretStr,
        AfterValidator(_account_digits),
        WithJsonSchema({"type": "string", "pattern": r"^[0-9]{4,17}$", "writeOnly": True}),
    ] = Field(description="Sent to Bakkt once; only its last 4 digits are kept.")
    bank_name: str = Field(min_length=1, max_length=255)
    bank_address: str | None = Field(default=None, min_length=1, max_length=255)
    swift_code: str | None = Field(default=None, pattern=r"^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$")


class AchWithdrawalRequest(RequestModel):
    method: Literal["ACH"] = Field(
        default="ACH",
        description="ACH to the linked bank account; the default, as for a deposit.",
    )
    amount: Amount
    currency: Literal["USD"] = "USD"
    bank_account_id: uuid.UUID | None = Field(
        default=None,
        description="Optional. Bakkt pays into the party's current (LINKED) account whatever "
        "is named; naming any other account answers 409.",
    )


class WireWithdrawalRequest(RequestModel):
    method: Literal["WIRE"]
    amount: Amount
    currency: Literal["USD"] = "USD"
    destination: WireDestination


def _withdrawal_method(value: object) -> object:
    # `method` picks the body's shape, so a missing one would be a 422 about a discriminator.
    # Without it a withdrawal is ACH, like a deposit; a wire's destination without its method
    # is refused by name rather than guessed into a wire.
    if isinstance(value, dict) and "method" not in value:
        if "destination" in value:
            raise PydanticCustomError(
                "method_required",
                'method: "WIRE" is required with a destination; without method a withdrawal '
                "is ACH to the linked bank account",
            )
        return {**value, "method": "ACH"}
    return value


WithdrawalRequest = Annotated[
    AchWithdrawalRequest | WireWithdrawalRequest,
    # Discriminator, not Field(discriminator=...): FastAPI's body field drops the latter once a
    # validator sits beside it, and the union would then report both shapes' errors.
    Discriminator("method"),
    BeforeValidator(_withdrawal_method),
]


# --- responses --------------------------------------------------------------------------------


class LinkSession(ResponseModel):
    bank_account_id: uuid.UUID = Field(
        description="The bank account this link will become (PENDING until Bakkt reports it)."
    )
    link_url: str
    expires_at: datetime


class BankAccountOut(ResponseModel):
    id: uuid.UUID
    status: BankAccountStatus = Field(
        description="PENDING until Bakkt's link webhook; LINKED is the party's one current "
        "account (every ACH transfer uses it); REPLACED once a later link succeeded; FAILED, "
        "UNLINKED, DISABLED (after an ACH return) are final."
    )
    current: bool = Field(
        description="The account Bakkt moves ACH money through now (at most one per party)."
    )
    link_method: str
    bank_name: str | None
    account_mask: str | None = Field(description="The last 4 digits of the account number.")
    account_type: str | None
    reason_code: str | None
    needs_review: bool
    created_at: datetime
    updated_at: datetime


class BankAccountList(ResponseModel):
    items: list[BankAccountOut]


class BankAccountHistoryEntryOut(ResponseModel):
    from_status: BankAccountStatus | None = Field(alias="from")
    to: BankAccountStatus
    source: str = Field(description="api, webhook, sync, admin or migration")
    reason_code: str | None
    event_id: str | None
    note: str | None
    at: datetime


class BankAccountDetail(BankAccountOut):
    history: list[BankAccountHistoryEntryOut]


class PartyActions(ResponseModel):
    deposit: bool = Field(description="ACH (from the current account) and wire deposits.")
    withdraw: bool
    link_bank_account: bool


class PartyOut(ResponseModel):
    party_ref: str
    status: str = Field(
        description="ACTIVE, INACTIVE, SUSPENDED, LIQUIDATED, UNDER_REVIEW or CLOSED (Bakkt's "
        "PARTY_EVENT); ACTIVE for a party Bakkt has told nothing about yet."
    )
    reason_code: str | None = Field(description="Bakkt's code, as sent (also an unknown one).")
    reason_meaning: str | None = Field(description="null for a code Bakkt's guide lacks.")
    reason_effect: str | None
    status_changed_at: datetime | None = Field(description="Bakkt's time of the status event.")
    allowed: PartyActions = Field(description="What the party may do now, by its status.")
    verification_url: str | None = Field(
        description="DOCUMENT_VERIFICATION only: where the consumer uploads the documents."
    )
    verification_url_expires_at: datetime | None
    current_bank_account: BankAccountOut | None = Field(
        description="The LINKED account every ACH transfer uses; null when there is none."
    )


class TransactionOut(ResponseModel):
    id: uuid.UUID
    type: TransactionType
    method: TransactionMethod | None
    status: TransactionStatus
    amount: str = Field(examples=["25.00"])
    currency: str
    reason_code: str | None
    created_at: datetime
    updated_at: datetime


class HistoryEntryOut(ResponseModel):
    from_status: TransactionStatus | None = Field(alias="from")
    to: TransactionStatus
    source: HistorySource
    reason_code: str | None
    event_id: str | None
    applied: bool
    at: datetime


class TransactionDetail(TransactionOut):
    history: list[HistoryEntryOut]


class TransactionPage(ResponseModel):
    items: list[TransactionOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


class BalanceOut(ResponseModel):
    currency: str
    settled: str = Field(description="Available to the consumer.")
    unsettled: str = Field(description="Pending, not settled yet.")


class WireInstructionsOut(ResponseModel):
    reference_number: str = Field(
        description="The consumer's own code: put it in the wire's beneficiary instructions."
    )
    routing_number: str
    account_number: str = Field(description="Bakkt's receiving account (not the consumer's).")
    swift_code: str
    bank_name: str
    bank_address: str
    beneficiary_name: str
    beneficiary_address: str


def _in_utc(value: datetime) -> datetime:
    # `9999-12-31T23:59:59-23:59` is a valid ISO time past the year 9999 in UTC, and
    # `0001-01-01T00:00:00+23:59` one before the year 1: neither is a time we can compare.
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("time_out_of_range", "the time is out of range in UTC") from None


InRangeTime = Annotated[AwareDatetime, AfterValidator(_in_utc)]


class TransactionQuery(BaseModel):
    """Filters of the transaction list, parsed from the query string."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)
    status: list[TransactionStatus] = Field(default_factory=list)
    type: list[TransactionType] = Field(default_factory=list)
    created_from: InRangeTime | None = Field(default=None, alias="createdFrom")
    created_to: InRangeTime | None = Field(default=None, alias="createdTo")


def dump(model: BaseModel) -> Any:
    """The JSON a response model becomes (what is stored for an idempotent replay)."""
    return model.model_dump(mode="json", by_alias=True)
