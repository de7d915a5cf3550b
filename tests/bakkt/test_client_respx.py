"""Client behaviour the sandbox cannot be made to show, driven with respx.

The sandbox answers idempotency reuse before anything else and always sends the 409's original
response, so the rarer answers below exist only here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
import respx
from pydantic import SecretStr

from app.bakkt import (
    BakktClient,
    BakktConfig,
    BakktOutcomeUnknown,
    BakktRateLimited,
    BakktRejected,
    TransferDirection,
    TransferMethod,
    TransferRequest,
)

BASE = "https://bakkt.test"
PARTY = "/partner/v1/partner/p-1/party/alice"
TXN = {
    "partnerTransactionRef": "t-1",
    "partnerPartyRef": "alice",
    "fiatTransactionType": "ACH_WITHDRAW",
    "transactionStatus": "PENDING",
    "amount": 20,
    "currency": "USD",
    "createdAt": "2024-05-04T12:00:00Z",
    "updatedAt": "2024-05-04T12:00:00Z",
}
REQ = TransferRequest(
    party_ref="alice",
    transaction_ref="t-1",
    idempotency_key="k-1",
    direction=TransferDirection.WITHDRAW,
    method=TransferMethod.ACH,
    amount=Decimal(20),
)


@pytest.fixture
async def mocked() -> AsyncIterator[tuple[respx.MockRouter, BakktClient]]:
    config = BakktConfig(
        base_url=BASE,
        partner_id="p-1",
        client_id="c",
        client_secret=SecretStr("s"),
        transport="httpx",
        backoff_base=0.0,
        max_retry_after=1.0,
    )
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        router.post("/partner/v1/oauth2/token").respond(
            json={"accessToken": "tok", "expiresIn": "3600", "tokenType": "Bearer"}
        )
        async with BakktClient(config) as client:
            yield router, client


def _rejection(bakkt_type: str, description: str = "no") -> dict[str, object]:
    return {"type": bakkt_type, "description": description, "detail": "d", "details": []}


async def test_409_without_original_response_is_outcome_unknown(
    mocked: tuple[respx.MockRouter, BakktClient],
) -> None:
    router, client = mocked
    router.post(f"{PARTY}/transfer").respond(409, json=_rejection("IDEMPOTENCY_KEY_IN_USE"))
    with pytest.raises(BakktOutcomeUnknown):
        await client.transfer(REQ)


async def test_409_replaying_a_rejection_raises_the_original_rejection(
    mocked: tuple[respx.MockRouter, BakktClient],
) -> None:
    router, client = mocked
    body = {
        **_rejection("IDEMPOTENCY_KEY_IN_USE"),
        "originalResponse": {"status": 400, "body": _rejection("INSUFFICIENT_BALANCE")},
    }
    router.post(f"{PARTY}/transfer").respond(409, json=body)
    with pytest.raises(BakktRejected) as caught:
        await client.transfer(REQ)
    assert (caught.value.status, caught.value.code) == (400, "insufficient_balance")


async def test_rejection_after_a_lost_attempt_is_success_when_bakkt_holds_the_transfer(
    mocked: tuple[respx.MockRouter, BakktClient],
) -> None:
    router, client = mocked
    transfer = router.post(f"{PARTY}/transfer").mock(
        side_effect=[
            httpx.ReadTimeout("lost"),
            httpx.Response(400, json=_rejection("INSUFFICIENT_BALANCE")),
        ]
    )
    lookup = router.get(f"{PARTY}/transactions/t-1").respond(json=TXN)
    # Returning at all is the success: a rejection that stood would raise BakktRejected.
    await client.transfer(REQ)
    # The rejection came to a resend of the same request, and Bakkt's record was asked once.
    first, resent = (json.loads(call.request.content) for call in transfer.calls)
    assert first == resent
    assert (first["idempotencyKey"], first["partnerTransactionRef"]) == ("k-1", "t-1")
    assert lookup.call_count == 1


async def test_rejection_after_a_lost_attempt_stands_when_bakkt_never_saw_the_transfer(
    mocked: tuple[respx.MockRouter, BakktClient],
) -> None:
    router, client = mocked
    router.post(f"{PARTY}/transfer").mock(
        side_effect=[
            httpx.ReadTimeout("lost"),
            httpx.Response(400, json=_rejection("INSUFFICIENT_BALANCE")),
        ]
    )
    router.get(f"{PARTY}/transactions/t-1").respond(400, json=_rejection("TRANSACTION_NOT_FOUND"))
    with pytest.raises(BakktRejected) as caught:
        await client.transfer(REQ)
    assert caught.value.code == "insufficient_balance"


async def test_unlink_resent_after_a_lost_attempt_takes_not_found_as_done(
    mocked: tuple[respx.MockRouter, BakktClient],
) -> None:
    router, client = mocked
    route = router.post(f"{PARTY}/bankAccountLinking/unlink").mock(
        side_effect=[
            httpx.RemoteProtocolError("dropped"),
            httpx.Response(400, json=_rejection("LINKED_BANK_ACCOUNT_NOT_FOUND")),
        ]
    )
    await client.unlink("alice", "link-1")
    assert route.call_count == 2


async def test_unlink_of_nothing_on_first_attempt_is_rejected(
    mocked: tuple[respx.MockRouter, BakktClient],
) -> None:
    router, client = mocked
    router.post(f"{PARTY}/bankAccountLinking/unlink").respond(
        400, json=_rejection("LINKED_BANK_ACCOUNT_NOT_FOUND")
    )
    with pytest.raises(BakktRejected) as caught:
        await client.unlink("alice", "link-1")
    assert caught.value.code == "no_linked_bank_account"


async def test_retry_after_as_http_date_is_honoured(
    mocked: tuple[respx.MockRouter, BakktClient],
) -> None:
    router, client = mocked
    route = router.get(f"{PARTY}/fiatAccount/balance").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
            httpx.Response(
                200, json=[{"currency": "USD", "settledAmount": 1, "unsettledAmount": 0}]
            ),
        ]
    )
    balance = await client.balance("alice")
    assert balance.settled == Decimal(1)
    assert route.call_count == 2


async def test_retry_after_beyond_the_budget_is_not_waited_out(
    mocked: tuple[respx.MockRouter, BakktClient],
) -> None:
    router, client = mocked
    route = router.get(f"{PARTY}/fiatAccount/balance").respond(429, headers={"Retry-After": "30"})
    with pytest.raises(BakktRateLimited) as caught:
        await client.balance("alice")
    assert caught.value.retry_after == 30.0
    assert route.call_count == 1


async def test_snake_case_token_response_is_accepted(
    mocked: tuple[respx.MockRouter, BakktClient],
) -> None:
    router, client = mocked
    router.post("/partner/v1/oauth2/token").respond(
        json={"access_token": "snake", "expires_in": 3600, "token_type": "Bearer"}
    )
    route = router.get(f"{PARTY}/fiatAccount/balance").respond(json=[])
    await client.balance("alice")
    assert route.calls.last.request.headers["authorization"] == "Bearer snake"


async def test_unknown_rejection_type_reaches_the_caller_as_generic_rejection(
    mocked: tuple[respx.MockRouter, BakktClient],
) -> None:
    router, client = mocked
    router.get(f"{PARTY}/wire-instructions").respond(400, json=_rejection("NEW_THING"))
    with pytest.raises(BakktRejected) as caught:
        await client.wire_instructions("alice")
    assert (caught.value.bakkt_type, caught.value.code) == ("NEW_THING", "bakkt_rejected")


async def test_token_unavailable_for_a_resend_after_a_lost_attempt_is_outcome_unknown() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += 7200  # the token expires while the client backs off

    config = BakktConfig(
        base_url=BASE,
        partner_id="p-1",
        client_id="c",
        client_secret=SecretStr("s"),
        transport="httpx",
        backoff_base=0.0,
    )
    with respx.mock(base_url=BASE) as router:
        router.post("/partner/v1/oauth2/token").mock(
            side_effect=[
                httpx.Response(200, json={"accessToken": "tok", "expiresIn": "3600"}),
                *[httpx.Response(503)] * 10,
            ]
        )
        router.post(f"{PARTY}/transfer").mock(side_effect=httpx.ReadTimeout("lost"))
        async with BakktClient(config, clock=lambda: now[0], sleep=sleep) as client:
            with pytest.raises(BakktOutcomeUnknown):
                await client.transfer(REQ)


@pytest.mark.parametrize("operation", ["link_plaid", "unlink"])
async def test_success_false_on_a_2xx_is_a_rejection(
    mocked: tuple[respx.MockRouter, BakktClient], operation: str
) -> None:
    router, client = mocked
    router.post(f"{PARTY}/plaidAccount/link").respond(200, json={"success": False})
    router.post(f"{PARTY}/bankAccountLinking/unlink").respond(200, json={"success": False})
    call = (
        client.link_plaid("alice", "link-1", "processor-sandbox-abc")
        if operation == "link_plaid"
        else client.unlink("alice", "link-1")
    )
    with pytest.raises(BakktRejected) as caught:
        await call
    assert caught.value.code == "bakkt_rejected"


async def test_success_true_on_a_2xx_is_accepted(
    mocked: tuple[respx.MockRouter, BakktClient],
) -> None:
    router, client = mocked
    router.post(f"{PARTY}/plaidAccount/link").respond(200, json={"success": True})
    await client.link_plaid("alice", "link-1", "processor-sandbox-abc")
