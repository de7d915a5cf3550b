"""Bakkt's rejections reach the caller as BakktRejected with the error table's entry.

Produced by the real sandbox where it can; the rest of the table through respx.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal

import pytest
import respx
from pydantic import SecretStr

from app.bakkt import (
    ERROR_TABLE,
    BakktClient,
    BakktConfig,
    BakktRejected,
    TransferDirection,
    TransferMethod,
    TransferRequest,
)
from bakkt_sandbox.testing import RunningSandbox
from tests.bakkt.conftest import make_client
from tests.bakkt.test_operations import deposit, linked_party

Scenario = Callable[[BakktClient, RunningSandbox], Awaitable[None]]


def _ref(prefix: str = "") -> str:
    return f"{prefix}p-{uuid.uuid4().hex[:10]}"


def _withdraw(party_ref: str, amount: str) -> TransferRequest:
    ref = f"w-{uuid.uuid4().hex}"
    return TransferRequest(
        party_ref=party_ref,
        transaction_ref=ref,
        idempotency_key=f"k-{ref}",
        direction=TransferDirection.WITHDRAW,
        method=TransferMethod.ACH,
        amount=Decimal(amount),
    )


async def _suspended(c: BakktClient, _: RunningSandbox) -> None:
    await c.transfer(deposit(_ref("suspended-")))


async def _inactive(c: BakktClient, _: RunningSandbox) -> None:
    await c.transfer(deposit(_ref("inactive-")))


async def _unknown_party(c: BakktClient, _: RunningSandbox) -> None:
    await c.balance(_ref("unknown-"))


async def _no_bank(c: BakktClient, _: RunningSandbox) -> None:
    await c.transfer(deposit(_ref()))


async def _unlink_nothing(c: BakktClient, _: RunningSandbox) -> None:
    await c.unlink(_ref(), "l-1")


async def _plaid_invalid(c: BakktClient, _: RunningSandbox) -> None:
    await c.link_plaid(_ref(), "l-1", "processor-invalid-1")


async def _plaid_expired(c: BakktClient, _: RunningSandbox) -> None:
    await c.link_plaid(_ref(), "l-1", "processor-expired-1")


async def _plaid_unsupported(c: BakktClient, _: RunningSandbox) -> None:
    await c.link_plaid(_ref(), "l-1", "processor-unsupported-sync-1")


async def _below_minimum(c: BakktClient, sb: RunningSandbox) -> None:
    ref = await linked_party(c)
    await sb.credit(ref, "100")
    await c.transfer(_withdraw(ref, "5.00"))


async def _insufficient(c: BakktClient, _: RunningSandbox) -> None:
    await c.transfer(_withdraw(await linked_party(c), "50.00"))


async def _bad_routing(c: BakktClient, _: RunningSandbox) -> None:
    await c.link_ach(_ref(), "l-1", "12345678", "12", "CHECKING")


@pytest.mark.parametrize(
    ("scenario", "bakkt_type", "code", "http_status"),
    [
        (_suspended, "PARTY_SUSPENDED", "party_suspended", 403),
        (_inactive, "PARTY_INVALID_OPERATION", "party_not_active", 403),
        (_unknown_party, "PARTY_ACCOUNT_NOT_FOUND", "party_account_not_found", 403),
        (_no_bank, "BANK_ACCOUNT_NOT_FOUND", "no_linked_bank_account", 409),
        (_unlink_nothing, "LINKED_BANK_ACCOUNT_NOT_FOUND", "no_linked_bank_account", 409),
        (_plaid_invalid, "BANK_LINK_ITEM_NOT_FOUND", "relink_required", 409),
        (_plaid_expired, "STORED_AUTH_INVALID", "relink_required", 409),
        (_plaid_unsupported, "UNSUPPORTED_FINANCIAL_INSTITUTION", "unsupported_bank", 422),
        (_below_minimum, "INVALID_FIELD_VALUE", "below_minimum", 422),
        (_insufficient, "INSUFFICIENT_BALANCE", "insufficient_balance", 422),
        (_bad_routing, "INVALID_FIELD_VALUE", "invalid_request", 422),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
async def test_sandbox_rejection_maps_through_the_error_table(
    client: BakktClient,
    sandbox: RunningSandbox,
    scenario: Scenario,
    bakkt_type: str,
    code: str,
    http_status: int,
) -> None:
    with pytest.raises(BakktRejected) as caught:
        await scenario(client, sandbox)
    error = caught.value
    assert (error.bakkt_type, error.code, error.http_status) == (bakkt_type, code, http_status)
    assert error.consumer_message == ERROR_TABLE[bakkt_type].message or code == "below_minimum"


async def test_wrong_partner_id_is_our_misconfiguration(
    sandbox: RunningSandbox, transport: str
) -> None:
    async with make_client(sandbox, transport, partner_id=str(uuid.uuid4())) as c:
        with pytest.raises(BakktRejected) as caught:
            await c.balance(_ref())
    assert (caught.value.code, caught.value.http_status) == ("bakkt_misconfigured", 502)


@pytest.mark.parametrize("bakkt_type", sorted(ERROR_TABLE))
async def test_every_table_type_reaches_the_caller_with_its_entry(bakkt_type: str) -> None:
    config = BakktConfig(
        base_url="https://bakkt.test",
        partner_id="p",
        client_id="c",
        client_secret=SecretStr("s"),
        transport="httpx",
    )
    with respx.mock(base_url="https://bakkt.test") as router:
        router.post("/partner/v1/oauth2/token").respond(
            json={"accessToken": "t", "expiresIn": "3600"}
        )
        router.post("/partner/v1/partner/p/party/a/bankAccountLinking/ach").respond(
            400, json={"type": bakkt_type, "description": "d", "detail": "x", "details": []}
        )
        async with BakktClient(config) as c:
            with pytest.raises(BakktRejected) as caught:
                await c.link_ach("a", "l", "123456789", "021000021", "CHECKING")
    assert caught.value.entry == ERROR_TABLE[bakkt_type]
