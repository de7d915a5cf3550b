"""Every operation of the client against the real sandbox over HTTP, on both transports."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from app.bakkt import (
    BakktClient,
    BakktRejected,
    TransactionKind,
    TransactionStatus,
    TransferDirection,
    TransferMethod,
    TransferRequest,
    WireDestination,
)
from app.core.context import request_id_var
from bakkt_sandbox.testing import RunningSandbox
from tests.bakkt.conftest import Traffic


def party() -> str:
    return f"alice-{uuid.uuid4().hex[:10]}"


def deposit(party_ref: str, amount: str = "25.00", ref: str | None = None) -> TransferRequest:
    ref = ref or f"t-{uuid.uuid4().hex}"
    return TransferRequest(
        party_ref=party_ref,
        transaction_ref=ref,
        idempotency_key=f"k-{ref}",
        direction=TransferDirection.DEPOSIT,
        method=TransferMethod.ACH,
        amount=Decimal(amount),
    )


async def linked_party(client: BakktClient) -> str:
    ref = party()
    await client.link_ach(ref, f"l-{ref}", "123456789", "021000021", "CHECKING")
    return ref


async def test_heartbeat_answers_pong(client: BakktClient) -> None:
    assert (await client.heartbeat()).startswith("PONG")


async def test_create_link_url_returns_a_url_with_an_aware_expiry(client: BakktClient) -> None:
    link = await client.create_link_url(party(), "link-1", redirect_uri="https://app.test/done")
    assert link.url.startswith("http")
    assert link.expires_at.tzinfo is not None
    assert link.expires_at > datetime.now(UTC)


async def test_link_plaid_links_the_account(client: BakktClient, sandbox: RunningSandbox) -> None:
    ref = party()
    await client.link_plaid(ref, "link-1", "processor-sandbox-ok")
    account = (await sandbox.party(ref))["bankAccount"]
    assert account is not None


async def test_link_ach_links_the_account(client: BakktClient, sandbox: RunningSandbox) -> None:
    ref = await linked_party(client)
    account = (await sandbox.party(ref))["bankAccount"]
    assert account is not None


async def test_unlink_removes_the_account(client: BakktClient, sandbox: RunningSandbox) -> None:
    ref = await linked_party(client)
    await client.unlink(ref, f"l-{ref}")
    assert (await sandbox.party(ref))["bankAccount"] is None


async def test_transfer_is_accepted_and_recorded_once(
    client: BakktClient, sandbox: RunningSandbox
) -> None:
    ref = await linked_party(client)
    req = deposit(ref)
    await client.transfer(req)
    ledger = await sandbox.transfers(ref)
    assert [(t["partnerTransactionRef"], t["requestCount"]) for t in ledger] == [
        (req.transaction_ref, 1)
    ]
    assert ledger[0]["idempotencyKey"] == req.idempotency_key
    assert Decimal(str(ledger[0]["amount"])) == Decimal("25.00")


async def test_transfer_sent_again_with_its_key_is_success_without_a_second_transfer(
    client: BakktClient, sandbox: RunningSandbox
) -> None:
    ref = await linked_party(client)
    req = deposit(ref)
    await client.transfer(req)
    await client.transfer(req)  # 409 whose original response was a 200
    ledger = await sandbox.transfers(ref)
    assert [t["requestCount"] for t in ledger] == [2]


async def test_wire_withdrawal_carries_its_destination(
    client: BakktClient, sandbox: RunningSandbox
) -> None:
    ref = party()
    await sandbox.credit(ref, "500")
    req = TransferRequest(
        party_ref=ref,
        transaction_ref=f"w-{ref}",
        idempotency_key=f"k-w-{ref}",
        direction=TransferDirection.WITHDRAW,
        method=TransferMethod.WIRE,
        amount=Decimal("120.50"),
        wire=WireDestination(routing_number="021000021", account_number="55551234", bank_name="B"),
    )
    await client.transfer(req)
    [record] = await sandbox.transfers(ref)
    assert record["fiatTransactionType"] == "WIRE_WITHDRAW"


async def test_get_transaction_returns_our_typed_record(client: BakktClient) -> None:
    ref = await linked_party(client)
    req = deposit(ref, "30.10")
    await client.transfer(req)
    txn = await client.get_transaction(ref, req.transaction_ref)
    assert txn is not None
    assert txn.transaction_ref == req.transaction_ref
    assert txn.party_ref == ref
    assert txn.kind is TransactionKind.ACH_DEPOSIT
    assert txn.status is TransactionStatus.PENDING
    assert txn.amount == Decimal("30.10")
    assert txn.created_at.tzinfo is not None


async def test_get_transaction_is_none_when_bakkt_never_accepted_it(client: BakktClient) -> None:
    ref = await linked_party(client)
    assert await client.get_transaction(ref, "never-sent") is None


async def test_iter_transactions_walks_every_page_in_order(
    client: BakktClient, sandbox: RunningSandbox
) -> None:
    ref = await linked_party(client)
    refs = [f"t{i}-{ref}" for i in range(7)]
    for tx_ref in refs:
        await client.transfer(deposit(ref, ref=tx_ref))
    await sandbox.settle(refs[0], ref)
    seen = [t async for t in client.iter_transactions(ref, page_size=3)]
    assert sorted(t.transaction_ref for t in seen) == sorted(refs)
    assert [t.updated_at for t in seen] == sorted(t.updated_at for t in seen)
    complete = [
        t.transaction_ref
        async for t in client.iter_transactions(ref, statuses=[TransactionStatus.COMPLETE])
    ]
    assert complete == [refs[0]]
    future = datetime.now(UTC) + timedelta(days=1)
    assert [t async for t in client.iter_transactions(ref, updated_since=future)] == []


async def test_wire_instructions_are_all_present(client: BakktClient) -> None:
    wire = await client.wire_instructions(party())
    assert all([wire.reference_number, wire.routing_number, wire.account_number, wire.bank_name])


async def test_balance_reads_settled_and_unsettled(
    client: BakktClient, sandbox: RunningSandbox
) -> None:
    ref = await linked_party(client)
    await sandbox.credit(ref, "100.25")
    await client.transfer(deposit(ref, "40.00"))
    balance = await client.balance(ref)
    assert (balance.currency, balance.settled, balance.unsettled) == (
        "USD",
        Decimal("100.25"),
        Decimal("40.00"),
    )


async def test_every_call_carries_the_request_id_as_tracking_id(
    client: BakktClient, traffic: Traffic
) -> None:
    token = request_id_var.set("req-abc-123")
    try:
        await client.balance(party())
        await client.heartbeat()
    finally:
        request_id_var.reset(token)
    bearer_calls = [r for r in traffic.requests if not r.url.path.endswith("/oauth2/token")]
    assert len(bearer_calls) == 2
    assert {r.headers["x-tracking-id"] for r in traffic.requests} == {"req-abc-123"}


async def test_without_a_request_id_each_call_gets_its_own_uuid(
    client: BakktClient, traffic: Traffic
) -> None:
    await client.heartbeat()
    await client.heartbeat()
    ids = [r.headers["x-tracking-id"] for r in traffic.to("/heartbeat")]
    assert len(set(ids)) == 2
    assert all(uuid.UUID(i) for i in ids)


async def test_rejection_carries_bakkt_type_description_and_field_details(
    client: BakktClient,
) -> None:
    with pytest.raises(BakktRejected) as caught:
        await client.link_ach(party(), "l-1", "12345678", "12", "CHECKING")
    error = caught.value
    assert (error.status, error.bakkt_type, error.code) == (
        400,
        "INVALID_FIELD_VALUE",
        "invalid_request",
    )
    assert error.description
    assert [d.field for d in error.details] == ["routingNumber"]
