"""The admin routes in `/openapi.json`: each declares the admin scope's 403 and the problems it
answers, by code, as application/problem+json."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.config import Settings
from tests.funding.test_openapi import declared_codes

ADMIN = "/v1/admin"
ROUTES: dict[tuple[str, str], set[str]] = {
    ("get", f"{ADMIN}/transactions"): {"invalid_cursor"},
    ("get", f"{ADMIN}/transactions/{{transactionId}}"): {"transaction_not_found"},
    ("post", f"{ADMIN}/transactions/{{transactionId}}/sync"): {
        "transaction_not_found",
        "transaction_in_flight",
        "bakkt_unavailable",
        "admin_subject_required",
    },
    ("post", f"{ADMIN}/transactions/{{transactionId}}/release"): {
        "transaction_not_found",
        "transaction_not_held",
        "admin_subject_required",
        "duplicate_field",
        "invalid_characters",
    },
    ("get", f"{ADMIN}/webhook-events"): {"invalid_cursor"},
    ("post", f"{ADMIN}/webhook-events/{{eventId}}/replay"): {
        "webhook_event_not_found",
        "webhook_event_applied",
        "webhook_event_recorded",
        "webhook_event_unreadable",
        "webhook_event_body_cleared",
    },
    ("get", f"{ADMIN}/bank-accounts/{{bankAccountId}}"): {"bank_account_not_found"},
    ("post", f"{ADMIN}/bank-accounts/{{bankAccountId}}/disable"): {
        "bank_account_not_found",
        "bank_account_already_disabled",
        "bank_account_not_linked",
    },
    ("post", f"{ADMIN}/bank-accounts/{{bankAccountId}}/enable"): {
        "bank_account_not_found",
        "bank_account_not_disabled_by_operator",
    },
    ("get", f"{ADMIN}/alerts"): {"invalid_cursor"},
    ("post", f"{ADMIN}/alerts/{{alertId}}/resolve"): {"alert_not_found", "alert_already_resolved"},
}
EVERY_ROUTE = {
    "authentication_required",
    "invalid_token",
    "token_expired",
    "admin_scope_required",
    "validation_failed",
}


@pytest.fixture(scope="module")
async def spec(admin_settings: Settings) -> dict[str, Any]:
    from app.main import create_app

    transport = httpx.ASGITransport(app=create_app(admin_settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return dict((await http.get("/openapi.json")).json())


def test_every_admin_route_is_documented(spec: dict[str, Any]) -> None:
    documented = {
        (method, path)
        for path, operations in spec["paths"].items()
        if path.startswith(f"{ADMIN}/")
        for method in operations
    }
    assert documented == set(ROUTES)


@pytest.mark.parametrize("route", list(ROUTES), ids=[f"{m} {p}" for m, p in ROUTES])
def test_each_admin_route_declares_its_problems(
    spec: dict[str, Any], route: tuple[str, str]
) -> None:
    method, path = route
    operation = spec["paths"][path][method]
    assert EVERY_ROUTE | ROUTES[route] <= declared_codes(operation)
    for status, response in operation["responses"].items():
        if status.startswith(("4", "5")):
            schema = response["content"]["application/problem+json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}
