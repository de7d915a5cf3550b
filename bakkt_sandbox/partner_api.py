"""The `/partner/v1` API: Bakkt's paths, bodies and status codes (docs/bakkt-contract.md §2)."""

import asyncio
import hashlib
import json
from decimal import Decimal
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from bakkt_sandbox.faults import Fault
from bakkt_sandbox.model import (
    ApiError,
    TxStatus,
    invalid_field,
    iso_ms,
    json_default,
    now_ms,
    parse_iso,
)
from bakkt_sandbox.runtime import SANDBOX, Sandbox

PREFIX = "/partner/v1"
PARTY = PREFIX + "/partner/{partnerId}/party/{partnerPartyRef}"
UNAUTHENTICATED_OPERATION = "generateAccessToken"
JSON_TYPE = "application/json"

_SERVER_ERROR_TYPES = {
    500: "INTERNAL_SERVER_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":"), default=json_default).encode(),
        status=status,
        headers=headers,
        content_type=JSON_TYPE,
        charset="utf-8",
    )


def error_response(exc: ApiError) -> web.Response:
    return json_response(exc.body(), exc.status, exc.headers or None)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Deeper than any of Bakkt's bodies (two levels) by far; bounds the walk below and the decoder.
MAX_DEPTH = 32


def _bad_body(description: str, field: str = "", rejected: Any = None) -> ApiError:
    details = []
    if field:
        details.append(
            {
                "type": "VALIDATION_ERROR",
                "description": description,
                "field": field,
                "rejectedValue": rejected,
            }
        )
    return ApiError(400, "INVALID_FIELD_VALUE", description, "validation error", details)


def _check_strings(data: Any) -> None:
    """Refuse what no field of Bakkt's can hold and nothing downstream can encode.

    Lone surrogates (`\\ud800`) are valid JSON escapes but not Unicode text, and NUL is no
    character of any identifier, name or number: both are a 400 naming the field, here, once,
    rather than a crash wherever the string is first encoded or hashed.
    """
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _bad_body(f"The request body is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, path or "$", key)
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, path, value)


def _check_text(text: str, field: str, rejected: str) -> None:
    if "\x00" in text:
        raise _bad_body(f"{field} must not contain NUL characters.", field, _printable(rejected))
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise _bad_body(
            f"{field} is not valid Unicode text (lone surrogate).", field, _printable(rejected)
        ) from exc


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\u0000")[:256]


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        # Decimal, not float: 10.005 must be seen as three places, not rounded away.
        data = json.loads(raw or b"null", parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        # ValueError also covers bad UTF-8 and integers longer than Python's 4300-digit limit.
        raise _bad_body("Malformed JSON request body") from exc
    if not isinstance(data, dict):
        raise _bad_body("The request body must be a JSON object")
    _check_strings(data)
    return data


def _sandbox(request: web.Request) -> Sandbox:
    return request.app[SANDBOX]


def _party_ref(request: web.Request) -> str:
    return request.match_info["partnerPartyRef"]


# -- middleware: faults, bearer auth, partner id ------------------------------------------------


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without a single response byte; aiohttp then writes nothing."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


async def _apply_fault(request: web.Request, sandbox: Sandbox, fault: Fault) -> web.StreamResponse:
    spec = fault.spec
    if spec.mode == "error":
        kind = _SERVER_ERROR_TYPES.get(spec.status, "INTERNAL_SERVER_ERROR")
        return error_response(ApiError(spec.status, kind, "Injected fault: server error"))
    if spec.mode == "rate_limit":
        return error_response(
            ApiError(
                429,
                "RATE_LIMITED",
                "Too many requests",
                headers={"Retry-After": str(spec.retry_after)},
            )
        )
    if spec.mode == "timeout":
        try:
            await asyncio.wait_for(sandbox.closing.wait(), timeout=spec.hold_seconds)
        except TimeoutError:
            pass
    return _drop(request)


@web.middleware
async def partner_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/partner/"):
        return await handler(request)
    operation = request.match_info.route.name
    if operation is None:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            kind = "NOT_FOUND" if exc.status == 404 else "METHOD_NOT_ALLOWED"
            return error_response(ApiError(exc.status, kind, exc.reason))
    sandbox = _sandbox(request)
    decision = sandbox.faults.decide(operation)
    if decision.latency_ms:
        await asyncio.sleep(decision.latency_ms / 1000)
    if decision.before is not None:
        return await _apply_fault(request, sandbox, decision.before)
    try:
        if operation != UNAUTHENTICATED_OPERATION:
            sandbox.tokens.check_bearer(request.headers.get("Authorization"))
        partner_id = request.match_info.get("partnerId")
        if partner_id is not None and partner_id != sandbox.settings.partner_id:
            raise ApiError(400, "INVALID_PARTNER_ID", "The Partner Id is not valid")
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc)
    if decision.after is not None:
        return await _apply_fault(request, sandbox, decision.after)
    return response


# -- operations -------------------------------------------------------------------------------


async def generate_access_token(request: web.Request) -> web.StreamResponse:
    sandbox = _sandbox(request)
    sandbox.tokens.check_basic(request.headers.get("Authorization"))
    # docs/bakkt-contract.md A1: grant_type as a form field (the guide) or query (Postman).
    grant = request.query.get("grant_type")
    if grant is None and request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        value = form.get("grant_type")
        grant = value if isinstance(value, str) else None
    if grant is not None and grant != "client_credentials":
        raise invalid_field("grant_type", grant, "grant_type must be client_credentials.")
    return json_response(sandbox.tokens.issue())


async def heartbeat(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    answer: dict[str, Any] = {"result": "PONG: heartbeat received"}
    request_id = body.get("requestId")
    if request_id is not None:
        answer["requestId"] = str(request_id)
    return json_response(answer)


async def generate_link_url(request: web.Request) -> web.StreamResponse:
    # Assumed operation: docs/bakkt-contract.md A2.
    sandbox = _sandbox(request)
    body = await read_json(request)
    session = sandbox.bank.create_link_session(_party_ref(request), body)
    base = sandbox.settings.public_url.rstrip("/") or f"{request.scheme}://{request.host}"
    return json_response(
        {"linkUrl": f"{base}/link/{session.id}", "expiresAt": iso_ms(session.expires_ms)}
    )


async def add_bank_account(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    _sandbox(request).bank.plaid_link(_party_ref(request), body)
    return json_response({"success": True})


async def add_manual_bank_account(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    _sandbox(request).bank.manual_link(_party_ref(request), body)
    return json_response({"success": True})


async def link_bank_account_ach(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    _sandbox(request).bank.ach_link(_party_ref(request), body)
    return json_response({"success": True})


async def unlink_bank_account(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    instrument = body.get("instrumentType")
    if instrument not in ("ACH", "DEBIT", "TPJ", "WIRE"):
        raise invalid_field(
            "instrumentType", instrument, "instrumentType must be one of ACH, DEBIT, TPJ, WIRE."
        )
    link_ref = body.get("partnerTransactionRef")
    if not isinstance(link_ref, str) or not link_ref or len(link_ref) > 255:
        raise invalid_field(
            "partnerTransactionRef", link_ref, "partnerTransactionRef must be 1-255 characters."
        )
    bank = _sandbox(request).bank
    bank.unlink(bank.party(_party_ref(request)), instrument, link_ref)
    return json_response({"success": True})


async def remove_fiat_account(request: web.Request) -> web.StreamResponse:
    # Deprecated endpoint: instrumentType is optional (ACH|DEBIT) and success is 201.
    body = await read_json(request)
    instrument = body.get("instrumentType", "ACH")
    if instrument not in ("ACH", "DEBIT"):
        raise invalid_field("instrumentType", instrument, "instrumentType must be ACH or DEBIT.")
    bank = _sandbox(request).bank
    bank.unlink(bank.party(_party_ref(request)), instrument, None)
    return json_response({"success": True}, status=201)


async def transfer_fiat_currency(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    _sandbox(request).bank.transfer(_party_ref(request), body)
    # "Request Accepted" has no body (docs/bakkt-contract.md §2.8; Postman's example: text/plain).
    return web.Response(status=200, content_type="text/plain")


async def get_transaction(request: web.Request) -> web.StreamResponse:
    # Assumed operation: docs/bakkt-contract.md A3.
    tx = _sandbox(request).bank.get_transaction(
        _party_ref(request), request.match_info["partnerTransactionRef"]
    )
    return json_response(tx.to_json())


async def get_transactions(request: web.Request) -> web.StreamResponse:
    # Assumed operation: docs/bakkt-contract.md A4.
    query = request.query
    since: int | None = None
    if "updatedSince" in query:
        try:
            since = parse_iso(query["updatedSince"])
        except ValueError as exc:
            raise invalid_field(
                "updatedSince", query["updatedSince"], "updatedSince must be ISO-8601."
            ) from exc
    statuses = {s for raw in query.getall("status", []) for s in raw.split(",") if s}
    unknown = statuses - {s.value for s in TxStatus}
    if unknown:
        raise invalid_field("status", sorted(unknown), "Unknown transactionStatus value.")
    raw_size = query.get("pageSize", "100")
    # isascii: str.isdigit() also passes other scripts' digits and superscripts.
    if not (raw_size.isascii() and raw_size.isdigit() and len(raw_size) <= 3) or not (
        1 <= int(raw_size) <= 500
    ):
        raise invalid_field("pageSize", raw_size, "pageSize must be between 1 and 500.")
    page, next_token = _sandbox(request).bank.list_transactions(
        _party_ref(request), since, statuses, int(raw_size), query.get("pageToken") or None
    )
    return json_response(
        {"transactions": [tx.to_json() for tx in page], "nextPageToken": next_token}
    )


async def generate_wire_instructions(request: web.Request) -> web.StreamResponse:
    bank = _sandbox(request).bank
    party = bank.active_party(_party_ref(request))
    return json_response(
        {
            "wireReferenceNumber": bank.wire_reference(party.ref),
            "wireRoutingNumber": "123456780",
            "wireAccountNumber": "9876543210",
            "wireSwiftCode": "SNDBUS33XXX",
            "wireBankName": "Sandbox Trust Bank",
            "wireBankAddress": "1 Sandbox Plaza, New York, NY 10004",
            "wireBeneficiaryName": "Bakkt Crypto Solutions LLC (sandbox)",
            "wireBeneficiaryAddress": "10000 Avalon Blvd, Alpharetta, GA 30009",
        }
    )


async def get_fiat_account_balance(request: web.Request) -> web.StreamResponse:
    party = _sandbox(request).bank.party(_party_ref(request))
    return json_response([party.balance_json()])


async def get_kyc_document_verification_details(request: web.Request) -> web.StreamResponse:
    party = _sandbox(request).bank.party(_party_ref(request))
    if party.verification_url is not None and party.verification_expiry_ms is not None:
        # The URL the last DOCUMENT_VERIFICATION PARTY_EVENT carried, as long as it is valid.
        if party.verification_expiry_ms > now_ms():
            return json_response(
                {
                    "verificationURL": party.verification_url,
                    "verificationURLExpiry": iso_ms(party.verification_expiry_ms),
                }
            )
    token = hashlib.sha256(party.ref.encode()).hexdigest()[:24]
    return json_response(
        {
            "verificationURL": f"https://verify.sandbox.bakkt.invalid/{token}",
            "verificationURLExpiry": iso_ms(now_ms() + 24 * 3600 * 1000),
        }
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(PREFIX + "/oauth2/token", generate_access_token, name="generateAccessToken")
    r.add_post(PREFIX + "/heartbeat", heartbeat, name="heartbeat")
    r.add_post(PARTY + "/bankAccountLinking/linkUrl", generate_link_url, name="generateLinkUrl")
    r.add_post(PARTY + "/plaidAccount/link", add_bank_account, name="addBankAccount")
    r.add_post(PARTY + "/bankAccount", add_manual_bank_account, name="addManualBankAccount")
    r.add_post(
        PARTY + "/bankAccountLinking/ach", link_bank_account_ach, name="linkBankAccountAchAsync"
    )
    r.add_post(PARTY + "/bankAccountLinking/unlink", unlink_bank_account, name="unlinkBankAccount")
    r.add_post(PARTY + "/fiatAccount/unlink", remove_fiat_account, name="removeFiatAccount")
    r.add_post(PARTY + "/transfer", transfer_fiat_currency, name="transferFiatCurrency")
    r.add_get(
        PARTY + "/transactions/{partnerTransactionRef}", get_transaction, name="getTransaction"
    )
    r.add_get(PARTY + "/transactions", get_transactions, name="getTransactions")
    r.add_get(
        PARTY + "/wire-instructions", generate_wire_instructions, name="generateWireInstructions"
    )
    r.add_get(
        PARTY + "/fiatAccount/balance", get_fiat_account_balance, name="getFiatAccountBalance"
    )
    r.add_get(
        PARTY + "/kyc/documentVerificationDetails",
        get_kyc_document_verification_details,
        name="getKycDocumentVerificationDetails",
    )
