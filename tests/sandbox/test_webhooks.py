"""Webhook delivery: Standard Webhooks signatures, payloads, retries, misbehaviour switches."""

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bakkt_sandbox.testing import (
    RunningSandbox,
    WebhookReceiver,
    running_sandbox,
    verify_signature,
    webhook_receiver,
)
from tests.sandbox.conftest import Partner, http_client, make_partner

FAST_RETRIES = [0.05, 0.05, 0.1]


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with webhook_receiver(secret="whsec_ZmlhdC1vbnJhbXAtZGV2LXdlYmhvb2stc2VjcmV0ISE=") as r:
        yield r


@pytest.fixture
async def sandbox(receiver: WebhookReceiver) -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(
        time_scale=0, webhook_url=receiver.url, webhook_retry_schedule=FAST_RETRIES
    ) as sb:
        yield sb


@pytest.fixture
async def client(sandbox: RunningSandbox) -> AsyncIterator[Partner]:
    async with http_client() as http:
        yield await make_partner(sandbox, http)


def fiat_events(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    return [e for e in receiver.events if e["partnerWebhookType"] == "FIAT_EVENT"]


async def test_every_webhook_carries_a_valid_standard_webhooks_signature(
    sandbox: RunningSandbox, client: Partner, receiver: WebhookReceiver
) -> None:
    await client.link("party-sig")
    await client.transfer("party-sig", 40, ref="sig-1")
    await receiver.wait_for_count(2)
    for hook in receiver.received:
        assert hook.signature_valid is True
        # Recompute by hand from the A6 recipe, not only through the helper.
        secret = base64.b64decode(sandbox.webhook_secret.removeprefix("whsec_"))
        msg_id, ts = hook.headers["webhook-id"], hook.headers["webhook-timestamp"]
        mac = hmac.new(secret, f"{msg_id}.{ts}.".encode() + hook.body, hashlib.sha256).digest()
        assert hook.headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
        assert msg_id == hook.event["requestId"]
        assert abs(int(ts) - time.time()) < 60


async def test_a_tampered_body_or_wrong_secret_fails_verification(
    sandbox: RunningSandbox, client: Partner, receiver: WebhookReceiver
) -> None:
    await client.link("party-tamper")
    [hook] = await receiver.wait_for_count(1)
    assert verify_signature(sandbox.webhook_secret, hook.headers, hook.body)
    assert not verify_signature(sandbox.webhook_secret, hook.headers, hook.body + b" ")
    other = "whsec_" + base64.b64encode(b"another-secret-of-24-bytes!").decode()
    assert not verify_signature(other, hook.headers, hook.body)


async def test_pending_fiat_event_follows_an_accepted_transfer_with_the_a5_fields(
    client: Partner, receiver: WebhookReceiver
) -> None:
    await client.link("party-pending")
    await client.transfer("party-pending", 12.5, ref="pend-1")
    await receiver.wait_for(lambda _: len(fiat_events(receiver)) == 1)
    [event] = fiat_events(receiver)
    assert set(event) == {
        "requestId",
        "partnerPartyRef",
        "partnerWebhookType",
        "eventTime",
        "partnerTransactionRef",
        "relatedPartnerTransactionRef",
        "fiatTransactionType",
        "transactionStatus",
        "amount",
        "currency",
        "reasonCode",
        "reasonDescription",
        "createdAt",
        "updatedAt",
    }
    assert event["transactionStatus"] == "PENDING"
    assert event["fiatTransactionType"] == "ACH_DEPOSIT"
    assert event["amount"] == 12.5
    assert event["partnerPartyRef"] == "party-pending"
    assert event["eventTime"].endswith("Z")


async def test_bank_account_link_and_party_event_payloads(
    sandbox: RunningSandbox, client: Partner, receiver: WebhookReceiver
) -> None:
    await client.post(
        "party-ev",
        "/plaidAccount/link",
        {"processorToken": "processor-sandbox-1", "partnerTransactionRef": "lnk-9"},
    )
    await sandbox.set_party_status("party-ev", "SUSPENDED")
    await receiver.wait_for_count(2)
    link, party = receiver.events
    assert link["partnerWebhookType"] == "BANK_ACCOUNT_LINK"
    assert link["partnerTransactionRef"] == "lnk-9"
    assert link["linkStatus"] == "LINKED"
    assert link["reasonCode"] is None
    assert len(link["accountMask"]) == 4
    assert link["bankName"]
    assert link["accountType"] == "CHECKING"
    assert party["partnerWebhookType"] == "PARTY_EVENT"
    assert party["partyStatus"] == "SUSPENDED"
    assert party["reasonCode"] == "COMPLIANCE_LOCKED"
    assert {"verificationURL", "verificationURLExpiry"} <= set(party)


async def test_failed_deliveries_are_retried_with_the_same_request_id_until_accepted(
    sandbox: RunningSandbox, client: Partner, receiver: WebhookReceiver
) -> None:
    receiver.fail_next(2, status=503)
    await client.link("party-retry")
    await receiver.wait_for_count(1)
    assert [r.answered for r in receiver.received] == [503, 503, 200]
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    assert len({r.body for r in receiver.received}) == 1
    [delivery] = await sandbox.webhooks()
    assert delivery["state"] == "delivered"
    assert [a["statusCode"] for a in delivery["attempts"]] == [503, 503, 200]


async def test_delivery_is_given_up_after_the_schedule_and_can_be_redelivered(
    receiver: WebhookReceiver,
) -> None:
    # Nothing listens on the first URL: every attempt is a connection error.
    async with running_sandbox(
        time_scale=0, webhook_url="http://127.0.0.1:9/nowhere", webhook_retry_schedule=[0.01, 0.01]
    ) as sb:
        await sb.set_party_status("party-down", "CLOSED")
        assert await sb.drain_webhooks(within=5) == 0
        [delivery] = await sb.webhooks()
        assert delivery["state"] == "failed"
        assert len(delivery["attempts"]) == 3
        assert all(a["error"] for a in delivery["attempts"])

        await sb.set_webhook_mode(url=receiver.url)
        assert await sb.redeliver_webhooks() == 1
        [hook] = await receiver.wait_for_count(1)
        assert hook.event["requestId"] == delivery["requestId"]
        assert (await sb.webhooks())[0]["state"] == "delivered"


async def test_slow_receiver_counts_as_a_failed_attempt(receiver: WebhookReceiver) -> None:
    receiver.delay = 0.5
    async with running_sandbox(
        time_scale=0, webhook_url=receiver.url, webhook_timeout=0.1, webhook_retry_schedule=[0.01]
    ) as sb:
        await sb.set_party_status("party-slow", "CLOSED")
        assert await sb.drain_webhooks(within=5) == 0
        [delivery] = await sb.webhooks()
        assert delivery["state"] == "failed"
        assert all("Timeout" in (a["error"] or "") for a in delivery["attempts"])


async def test_duplicate_mode_delivers_each_event_twice_with_one_request_id(
    sandbox: RunningSandbox, receiver: WebhookReceiver
) -> None:
    await sandbox.set_webhook_mode(duplicate_rate=1.0)
    await sandbox.set_party_status("party-dup", "SUSPENDED")
    await receiver.wait_for_count(2)
    ids = [e["requestId"] for e in receiver.events]
    assert len(ids) == 2
    assert ids[0] == ids[1]
    deliveries = await sandbox.webhooks()
    assert sorted(d["duplicateOf"] is not None for d in deliveries) == [False, True]


async def test_reorder_mode_delivers_a_window_of_events_in_reverse(
    sandbox: RunningSandbox, receiver: WebhookReceiver
) -> None:
    await sandbox.set_webhook_mode(reorder=True, reorder_window_ms=300)
    for status in ("SUSPENDED", "ACTIVE", "CLOSED"):
        await sandbox.set_party_status("party-order", status)
    await receiver.wait_for_count(3)
    assert [e["partyStatus"] for e in receiver.events] == ["CLOSED", "ACTIVE", "SUSPENDED"]


async def test_drop_mode_loses_deliveries_for_good_until_redelivered(
    sandbox: RunningSandbox, receiver: WebhookReceiver
) -> None:
    await sandbox.set_webhook_mode(drop_rate=1.0)
    await sandbox.set_party_status("party-drop", "SUSPENDED")
    await sandbox.set_webhook_mode(drop_rate=0.0)
    await sandbox.set_party_status("party-drop", "ACTIVE")
    await receiver.wait_for_count(1)
    # The drop is decided when the event is published, before ACTIVE's: the sandbox's own record
    # (no attempt) proves SUSPENDED was never sent, without waiting to see nothing arrive.
    assert [e["partyStatus"] for e in receiver.events] == ["ACTIVE"]
    dropped = await sandbox.webhooks(state="dropped")
    assert [d["event"]["partyStatus"] for d in dropped] == ["SUSPENDED"]
    assert dropped[0]["attempts"] == []
    assert await sandbox.redeliver_webhooks(states=["dropped"]) == 1
    await receiver.wait_for_count(2)


async def test_drop_rate_is_deterministic_for_a_seed(receiver: WebhookReceiver) -> None:
    patterns = []
    for _ in range(2):
        async with running_sandbox(time_scale=0, webhook_url="") as sb:
            await sb.set_webhook_mode(drop_rate=0.5, seed=7)
            for i in range(20):
                await sb.set_party_status(f"party-seed-{i}", "SUSPENDED")
            patterns.append([d["state"] for d in await sb.webhooks()])
    assert patterns[0] == patterns[1]
    assert {"dropped", "skipped"} == set(patterns[0])


async def test_no_webhook_url_records_events_without_sending_them(
    fresh_bakkt_sandbox: RunningSandbox,
) -> None:
    await fresh_bakkt_sandbox.set_party_status("party-quiet", "SUSPENDED")
    [delivery] = await fresh_bakkt_sandbox.webhooks(party_ref="party-quiet")
    assert delivery["state"] == "skipped"
    assert delivery["event"]["partyStatus"] == "SUSPENDED"


async def test_webhook_list_filters_by_type_party_and_transaction(
    sandbox: RunningSandbox, client: Partner, receiver: WebhookReceiver
) -> None:
    await client.link("party-f1")
    await client.transfer("party-f1", 30, ref="f-1")
    await sandbox.set_party_status("party-f2", "SUSPENDED")
    assert {d["partnerWebhookType"] for d in await sandbox.webhooks("FIAT_EVENT")} == {"FIAT_EVENT"}
    assert {d["partnerPartyRef"] for d in await sandbox.webhooks(party_ref="party-f2")} == {
        "party-f2"
    }
    [one] = await sandbox.webhooks(transaction_ref="f-1")
    assert one["event"]["transactionStatus"] == "PENDING"


async def test_old_finished_deliveries_are_forgotten_beyond_the_history() -> None:
    async with running_sandbox(time_scale=0, webhook_url="", webhook_history=4) as sb:
        await sb.set_webhook_mode(drop_rate=1.0)
        await sb.set_party_status("party-hist", "SUSPENDED")
        await sb.set_webhook_mode(drop_rate=0.0)
        for _ in range(10):
            await sb.set_party_status("party-hist", "ACTIVE")
        deliveries = await sb.webhooks()
        assert deliveries[0]["state"] == "dropped"
        assert 4 <= sum(d["state"] == "skipped" for d in deliveries) <= 5
        assert deliveries[-1]["id"] == 11
