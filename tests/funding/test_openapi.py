"""`/openapi.json` tells the truth: every route, its body, its errors (with their codes) and its
headers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

PREFIX = "/v1/parties/{partyRef}"
IDEMPOTENT = {
    ("post", f"{PREFIX}/link-sessions"): "201",
    ("post", f"{PREFIX}/bank-accounts"): "202",
    ("delete", f"{PREFIX}/bank-accounts/{{bankAccountId}}"): "200",
    ("post", f"{PREFIX}/deposits"): "202",
    ("post", f"{PREFIX}/withdrawals"): "202",
}
READS = {
    ("get", f"{PREFIX}/bank-accounts"): "200",
    ("get", f"{PREFIX}/bank-accounts/{{bankAccountId}}"): "200",
    ("get", PREFIX): "200",
    ("get", f"{PREFIX}/transactions"): "200",
    ("get", f"{PREFIX}/transactions/{{transactionId}}"): "200",
    ("get", f"{PREFIX}/balance"): "200",
    ("get", f"{PREFIX}/wire-instructions"): "200",
}
ROUTES = {**IDEMPOTENT, **READS}
ROUTE_IDS = [f"{m.upper()} {p.removeprefix(PREFIX)}" for m, p in ROUTES]

# Codes each route must declare, beyond the ones every route declares.
ROUTE_CODES: dict[tuple[str, str], set[str]] = {
    ("post", f"{PREFIX}/link-sessions"): {"party_suspended", "bakkt_unavailable"},
    ("post", f"{PREFIX}/bank-accounts"): {
        "invalid_processor_token",
        "relink_required",
        "unsupported_bank",
        "bakkt_unavailable",
    },
    ("delete", f"{PREFIX}/bank-accounts/{{bankAccountId}}"): {
        "bank_account_not_found",
        "bank_account_link_pending",
        "bakkt_unavailable",
    },
    ("post", f"{PREFIX}/deposits"): {
        "party_suspended",
        "party_not_active",
        "limit_exceeded",
        "no_linked_bank_account",
        "bank_account_link_pending",
        "bank_account_replaced",
        "bank_account_disabled",
        "bank_account_not_linked",
        "bank_account_under_review",
        "unknown_bank_account",
        "insufficient_balance",
        "below_minimum",
        "payload_too_large",
    },
    ("post", f"{PREFIX}/withdrawals"): {
        "party_not_active",
        "limit_exceeded",
        "insufficient_balance",
        "below_minimum",
        "payload_too_large",
    },
    ("get", f"{PREFIX}/bank-accounts"): set(),
    ("get", f"{PREFIX}/bank-accounts/{{bankAccountId}}"): {"bank_account_not_found"},
    ("get", PREFIX): set(),
    ("get", f"{PREFIX}/transactions"): {"invalid_cursor"},
    ("get", f"{PREFIX}/transactions/{{transactionId}}"): {"transaction_not_found"},
    ("get", f"{PREFIX}/balance"): {"bakkt_unavailable", "party_account_not_found"},
    ("get", f"{PREFIX}/wire-instructions"): {"bakkt_unavailable", "party_suspended"},
}
EVERY_ROUTE = {
    "authentication_required",
    "invalid_token",
    "token_expired",
    "not_found",
    "validation_failed",
    "auth_keys_unavailable",
}
IDEMPOTENCY_CODES = {
    "idempotency_key_missing",
    "idempotency_key_invalid",
    "idempotency_key_reused",
    "idempotency_request_in_progress",
}


@pytest.fixture(scope="module")
async def spec(api_settings: Any) -> dict[str, Any]:
    from app.main import create_app

    app = create_app(api_settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def declared_codes(operation: dict[str, Any]) -> set[str]:
    codes: set[str] = set()
    for status, response in operation["responses"].items():
        if status.startswith(("4", "5")):
            codes.update(
                part.strip(" `") for part in response["description"].split(":")[1].split(",")
            )
    return codes


def test_every_funding_route_is_documented(spec: dict[str, Any]) -> None:
    documented = {
        (method, path)
        for path, operations in spec["paths"].items()
        if path.startswith("/v1/")
        for method, operation in operations.items()
        if "funding" in operation["tags"]
    }
    assert documented == set(ROUTES)


@pytest.mark.parametrize("route", list(ROUTES), ids=ROUTE_IDS)
def test_each_route_declares_its_errors_with_their_codes(
    spec: dict[str, Any], route: tuple[str, str]
) -> None:
    method, path = route
    operation = spec["paths"][path][method]
    expected = EVERY_ROUTE | ROUTE_CODES[route]
    if route in IDEMPOTENT:
        expected |= IDEMPOTENCY_CODES
    assert expected <= declared_codes(operation)
    for status, response in operation["responses"].items():
        if status.startswith(("4", "5")):
            schema = response["content"]["application/problem+json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}


@pytest.mark.parametrize("route", list(ROUTES), ids=ROUTE_IDS)
def test_each_route_declares_its_headers(spec: dict[str, Any], route: tuple[str, str]) -> None:
    method, path = route
    operation = spec["paths"][path][method]
    responses = operation["responses"]
    assert operation["security"] == [{"HTTPBearer": []}]
    assert "WWW-Authenticate" in responses["401"]["headers"]
    assert "Retry-After" in responses["503"]["headers"]
    if "409" in responses:
        assert "Retry-After" in responses["409"]["headers"]
    header_params = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "header"}
    success = responses[ROUTES[route]]
    if route in IDEMPOTENT:
        assert header_params["Idempotency-Key"]["required"] is True
        assert header_params["Idempotency-Key"]["schema"]["maxLength"] == 255
        assert "Idempotent-Replayed" in success["headers"]
    else:
        assert "Idempotency-Key" not in header_params
    if path.endswith(("/balance", "/wire-instructions")):
        assert "Cache-Control" in success["headers"]


def test_bodies_forbid_unknown_fields_and_amounts_are_decimal_strings(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for name in (
        "DepositRequest",
        "AchWithdrawalRequest",
        "WireWithdrawalRequest",
        "WireDestination",
        "LinkSessionRequest",
    ):
        assert schemas[name]["additionalProperties"] is False, name
    # One body, two shapes: a Plaid token, or an account's routing and account number.
    link = schemas["BankAccountLinkRequest"]["oneOf"]
    assert [shape["title"] for shape in link] == ["PlaidLinkRequest", "AccountDetailsLinkRequest"]
    assert all(shape["additionalProperties"] is False for shape in link)
    assert link[1]["required"] == ["routingNumber", "accountNumber", "accountType"]
    assert link[1]["properties"]["accountNumber"]["writeOnly"] is True
    amount = schemas["DepositRequest"]["properties"]["amount"]
    assert amount["type"] == "string"
    assert "pattern" in amount
    withdrawal = spec["paths"][f"{PREFIX}/withdrawals"]["post"]["requestBody"]
    union = withdrawal["content"]["application/json"]["schema"]
    assert union["discriminator"]["propertyName"] == "method"
    assert "accountNumber" in schemas["WireDestination"]["required"]


def test_fastapis_generic_validation_schema_is_nowhere(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
