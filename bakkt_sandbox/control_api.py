"""The control API under `/sandbox/`: drive Bakkt's side of a scenario and inspect what it saw."""

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from aiohttp import web
from pydantic import AliasChoices, BaseModel, Field, ValidationError, model_validator

from bakkt_sandbox.config import CamelModel, FaultSpec, WebhookModes
from bakkt_sandbox.magic import NACHA_DESCRIPTIONS
from bakkt_sandbox.model import ApiError, PartyStatus, TxStatus, iso_ms, money, parse_amount
from bakkt_sandbox.partner_api import error_response, json_response, read_json
from bakkt_sandbox.runtime import SANDBOX, Sandbox

M = TypeVar("M", bound=BaseModel)
ControlHandler = Callable[[web.Request, Sandbox], Awaitable[web.StreamResponse]]


class AdvanceRequest(CamelModel):
    days: float = Field(ge=0)


class ClockRequest(CamelModel):
    time_scale: float = Field(ge=0)


class MoveRequest(CamelModel):
    partner_party_ref: str | None = None
    reason_code: str | None = None
    reason_description: str | None = None
    fee: Decimal | None = Field(default=None, ge=0, decimal_places=2)


class StatusRequest(CamelModel):
    status: PartyStatus | None = None
    # Any code, known to the guide or not: Bakkt may send codes it has not published.
    reason_code: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^\S+$")
    verification_url: str | None = Field(
        default=None,
        alias="verificationURL",
        validation_alias=AliasChoices("verificationURL", "verificationUrl"),
        pattern=r"^https?://\S+$",
        max_length=2048,
    )
    verification_url_expiry: datetime | None = Field(
        default=None,
        alias="verificationURLExpiry",
        validation_alias=AliasChoices("verificationURLExpiry", "verificationUrlExpiry"),
    )

    @model_validator(mode="after")
    def _url_needs_document_verification(self) -> "StatusRequest":
        wants_url = self.verification_url is not None or self.verification_url_expiry is not None
        if wants_url and self.reason_code != "DOCUMENT_VERIFICATION":
            raise ValueError("verificationURL goes only with reasonCode DOCUMENT_VERIFICATION")
        if self.verification_url_expiry is not None and (
            self.verification_url_expiry.tzinfo is None
        ):
            raise ValueError("verificationURLExpiry needs a UTC offset")
        return self


class WireRequest(CamelModel):
    partner_party_ref: str | None = None
    wire_reference_number: str | None = None
    amount: Decimal
    outcome: TxStatus | None = None


class WebhookSettingsRequest(CamelModel):
    url: str | None = None
    duplicate_rate: float | None = None
    reorder: bool | None = None
    reorder_window_ms: int | None = None
    drop_rate: float | None = None
    seed: int | None = None


class RedeliverRequest(CamelModel):
    ids: list[int] | None = None
    states: list[str] = Field(default_factory=lambda: ["failed", "dropped"])


class DrainRequest(CamelModel):
    timeout: float = Field(default=5.0, ge=0, le=600)


def _bad_request(description: str) -> ApiError:
    return ApiError(400, "INVALID_REQUEST", description, "invalid control request")


async def _parse(request: web.Request, model: type[M]) -> M:
    # A control action whose fields all have defaults is posted bare (`curl -X POST .../settle`):
    # an empty body means `{}` here, unlike on the partner API, which mirrors Bakkt.
    body = await read_json(request) if (await request.read()).strip() else {}
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _bad_request(exc.errors(include_url=False)[0]["msg"]) from exc


def _wrap(handler: ControlHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request, request.app[SANDBOX])
        except ApiError as exc:
            return error_response(exc)

    return wrapped


def _settings_json(sb: Sandbox) -> dict[str, Any]:
    s = sb.settings
    return {
        "partnerId": s.partner_id,
        "clientId": s.client_id,
        "webhookUrl": sb.webhooks.url,
        "timeScale": s.time_scale,
        "tokenTtl": s.token_ttl,
        "idempotencyTtl": s.idempotency_ttl,
        "magicValues": s.magic_values,
    }


async def index(_request: web.Request, sb: Sandbox) -> web.StreamResponse:
    return json_response(
        {
            "sandbox": "bakkt",
            "settings": _settings_json(sb),
            "clock": sb.bank.clock.to_json(),
            "parties": len(sb.bank.parties),
            "transfers": len(sb.bank.ledger),
            "webhooks": len(sb.webhooks.deliveries),
            "faults": len(sb.faults.faults),
        }
    )


async def reset(_request: web.Request, sb: Sandbox) -> web.StreamResponse:
    sb.reset()
    return json_response({"reset": True})


async def get_clock(_request: web.Request, sb: Sandbox) -> web.StreamResponse:
    return json_response(sb.bank.clock.to_json())


async def set_clock(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    body = await _parse(request, ClockRequest)
    sb.bank.clock.set_scale(body.time_scale)
    sb.bank.advance(0)
    return json_response(sb.bank.clock.to_json())


async def advance_clock(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    body = await _parse(request, AdvanceRequest)
    ran = sb.bank.advance(body.days)
    return json_response({**sb.bank.clock.to_json(), "applied": ran})


async def list_faults(_request: web.Request, sb: Sandbox) -> web.StreamResponse:
    return json_response([f.to_json() for f in sb.faults.faults])


async def add_faults(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    raw = await request.read()
    try:
        specs = (
            [FaultSpec.model_validate_json(raw)]
            if raw.lstrip().startswith(b"{")
            else [FaultSpec.model_validate(item) for item in _json_list(raw)]
        )
        added = [sb.faults.add(spec) for spec in specs]
    except (ValidationError, ValueError) as exc:
        raise _bad_request(str(exc)) from exc
    return json_response([f.to_json() for f in added], status=201)


def _json_list(raw: bytes) -> list[Any]:
    data = json.loads(raw)
    if not isinstance(data, list):
        raise ValueError("expected a fault object or a list of them")
    return data


async def clear_faults(_request: web.Request, sb: Sandbox) -> web.StreamResponse:
    sb.faults.clear()
    return json_response([])


async def delete_fault(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    fault_id = request.match_info["faultId"]
    if not fault_id.isdigit() or not sb.faults.remove(int(fault_id)):
        raise ApiError(404, "NOT_FOUND", f"No fault {fault_id}")
    return json_response({"deleted": int(fault_id)})


async def list_transfers(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    q = request.query
    rows = [
        e.to_json()
        for e in sb.bank.ledger
        if q.get("partnerPartyRef", e.transaction.party_ref) == e.transaction.party_ref
        and q.get("partnerTransactionRef", e.transaction.ref) == e.transaction.ref
        and q.get("idempotencyKey", e.idempotency_key) == e.idempotency_key
    ]
    return json_response(rows)


async def list_transactions(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    wanted = request.query.get("partnerPartyRef")
    rows = [
        tx.to_json()
        for party in sb.bank.parties.values()
        if wanted is None or party.ref == wanted
        for tx in party.transactions.values()
    ]
    rows.sort(key=lambda row: (row["createdAt"], row["partnerTransactionRef"]))
    return json_response(rows)


_ACTIONS = {
    "settle": TxStatus.COMPLETE,
    "decline": TxStatus.DECLINED,
    "cancel": TxStatus.CANCELLED,
    "return": TxStatus.RETURNED,
}


async def move_transaction(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    action = request.match_info["action"]
    status = _ACTIONS.get(action)
    if status is None:
        raise ApiError(404, "NOT_FOUND", f"Unknown action {action}; one of {', '.join(_ACTIONS)}")
    body = await _parse(request, MoveRequest)
    tx = sb.bank.find_transaction(
        request.match_info["partnerTransactionRef"],
        body.partner_party_ref or request.query.get("partnerPartyRef"),
    )
    code = body.reason_code
    if status is TxStatus.RETURNED and code is None:
        code = "R01"
    description = body.reason_description
    if description is None and code is not None:
        description = NACHA_DESCRIPTIONS.get(code)
    sb.bank.control_move(tx, status, code, description, body.fee)
    return json_response(tx.to_json())


def _party_json(sb: Sandbox, ref: str) -> dict[str, Any]:
    party = sb.bank.ensure_party(ref)
    account = party.bank_account
    expiry = party.verification_expiry_ms
    return {
        "partnerPartyRef": party.ref,
        "partyStatus": party.status.value,
        "reasonCode": party.reason_code,
        "statusChangedAt": iso_ms(party.status_changed_ms),
        "verificationURL": party.verification_url,
        "verificationURLExpiry": iso_ms(expiry) if expiry is not None else None,
        "settledAmount": money(party.settled),
        "unsettledAmount": money(party.unsettled),
        "wireReferenceNumber": sb.bank.wire_reference(party.ref),
        "bankAccount": None if account is None else account.to_json(),
        "replacedBankAccounts": [a.to_json() for a in party.replaced_accounts],
        "transactions": len(party.transactions),
    }


async def get_party(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    return json_response(_party_json(sb, request.match_info["partnerPartyRef"]))


async def set_party_status(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    body = await _parse(request, StatusRequest)
    ref = request.match_info["partnerPartyRef"]
    expiry = body.verification_url_expiry
    try:
        expiry_ms = None if expiry is None else int(expiry.timestamp() * 1000)
    except (OverflowError, ValueError) as exc:
        raise _bad_request("verificationURLExpiry is out of range") from exc
    sb.bank.set_party_status(ref, body.status, body.reason_code, body.verification_url, expiry_ms)
    return json_response(_party_json(sb, ref))


async def credit_party(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    body = await read_json(request)
    amount = parse_amount(body.get("amount"))
    ref = request.match_info["partnerPartyRef"]
    sb.bank.credit(ref, amount)
    return json_response(_party_json(sb, ref))


async def inbound_wire(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    body = await read_json(request)
    amount = parse_amount(body.get("amount"))
    try:
        wire = WireRequest.model_validate({**body, "amount": amount})
    except ValidationError as exc:
        raise _bad_request(exc.errors(include_url=False)[0]["msg"]) from exc
    party = None
    if wire.wire_reference_number is not None:
        party = sb.bank.party_by_wire_reference(wire.wire_reference_number)
    if wire.partner_party_ref is not None:
        named = sb.bank.ensure_party(wire.partner_party_ref)
        outcome = wire.outcome
        if party is not None and party is not named:
            outcome = TxStatus.DECLINED
        party = named
    else:
        outcome = wire.outcome
    if party is None:
        raise ApiError(404, "NOT_FOUND", "No party for this wire: give partnerPartyRef")
    tx = sb.bank.inbound_wire(party, amount, outcome)
    return json_response(tx.to_json(), status=201)


async def list_webhooks(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    q = request.query
    rows = []
    for d in sb.webhooks.deliveries:
        ev = d.event
        if "partnerWebhookType" in q and ev.get("partnerWebhookType") != q["partnerWebhookType"]:
            continue
        if "partnerPartyRef" in q and ev.get("partnerPartyRef") != q["partnerPartyRef"]:
            continue
        if (
            "partnerTransactionRef" in q
            and ev.get("partnerTransactionRef") != q["partnerTransactionRef"]
        ):
            continue
        if "state" in q and d.state != q["state"]:
            continue
        rows.append(d.to_json())
    return json_response(rows)


def _webhook_settings(sb: Sandbox) -> dict[str, Any]:
    return {"url": sb.webhooks.url, **sb.webhooks.modes.model_dump(by_alias=True)}


async def get_webhook_settings(_request: web.Request, sb: Sandbox) -> web.StreamResponse:
    return json_response(_webhook_settings(sb))


async def set_webhook_settings(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    body = await _parse(request, WebhookSettingsRequest)
    patch = body.model_dump(exclude_none=True, exclude={"url"})
    try:
        modes = WebhookModes.model_validate({**sb.webhooks.modes.model_dump(), **patch})
    except ValidationError as exc:
        raise _bad_request(exc.errors(include_url=False)[0]["msg"]) from exc
    if body.url is not None:
        sb.webhooks.url = body.url
    sb.webhooks.set_modes(modes)
    return json_response(_webhook_settings(sb))


async def redeliver(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    body = await _parse(request, RedeliverRequest)
    count = sb.webhooks.redeliver(body.ids, set(body.states))
    return json_response({"requeued": count})


async def drain(request: web.Request, sb: Sandbox) -> web.StreamResponse:
    body = await _parse(request, DrainRequest)
    left = await sb.webhooks.drain(within=body.timeout)
    return json_response({"pending": left})


async def expire_tokens(_request: web.Request, sb: Sandbox) -> web.StreamResponse:
    sb.tokens.expire_all()
    return json_response({"expired": True})


async def jwks(_request: web.Request, sb: Sandbox) -> web.StreamResponse:
    return json_response(sb.tokens.jwks())


def add_routes(app: web.Application) -> None:
    r = app.router
    routes: list[tuple[str, str, ControlHandler]] = [
        ("GET", "/sandbox", index),
        ("POST", "/sandbox/reset", reset),
        ("GET", "/sandbox/clock", get_clock),
        ("POST", "/sandbox/clock", set_clock),
        ("POST", "/sandbox/clock/advance", advance_clock),
        ("GET", "/sandbox/faults", list_faults),
        ("POST", "/sandbox/faults", add_faults),
        ("DELETE", "/sandbox/faults", clear_faults),
        ("DELETE", "/sandbox/faults/{faultId}", delete_fault),
        ("GET", "/sandbox/transfers", list_transfers),
        ("GET", "/sandbox/transactions", list_transactions),
        ("POST", "/sandbox/transactions/{partnerTransactionRef}/{action}", move_transaction),
        ("GET", "/sandbox/parties/{partnerPartyRef}", get_party),
        ("POST", "/sandbox/parties/{partnerPartyRef}/status", set_party_status),
        ("POST", "/sandbox/parties/{partnerPartyRef}/credit", credit_party),
        ("POST", "/sandbox/wires/inbound", inbound_wire),
        ("GET", "/sandbox/webhooks", list_webhooks),
        ("GET", "/sandbox/webhooks/settings", get_webhook_settings),
        ("POST", "/sandbox/webhooks/settings", set_webhook_settings),
        ("POST", "/sandbox/webhooks/redeliver", redeliver),
        ("POST", "/sandbox/webhooks/drain", drain),
        ("POST", "/sandbox/tokens/expire", expire_tokens),
        ("GET", "/sandbox/jwks.json", jwks),
    ]
    for method, path, handler in routes:
        r.add_route(method, path, _wrap(handler))
