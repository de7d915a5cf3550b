"""Every kind of change writes its event: driven through the real API, the Bakkt sandbox and its
webhooks, read back through the catch-up routes (what a partner's back end would see)."""

from __future__ import annotations

import uuid
from typing import Any

from bakkt_sandbox.testing import RunningSandbox
from tests.events.conftest import Feed, eventually


def plaid() -> dict[str, str]:
    return {"processorToken": f"processor-sandbox-{uuid.uuid4().hex}"}


async def wait_for_types(feed: Feed, party: str, *wanted: str, within: float = 10.0) -> None:
    async def arrived() -> bool:
        seen = await feed.types(party)
        return all(seen.count(t) >= wanted.count(t) for t in wanted)

    try:
        await eventually(arrived, within)
    except TimeoutError:
        raise AssertionError(f"{wanted} not all in {await feed.types(party)}") from None


async def link(feed: Feed, party: str) -> str:
    response = await feed.post(party, "/bank-accounts", plaid())
    assert response.status_code == 202, response.text
    account_id = str(response.json()["id"])
    await wait_for_types(feed, party, "bank_account.pending", "bank_account.linked")
    return account_id


def of_subject(events: list[dict[str, Any]], subject: str) -> list[dict[str, Any]]:
    return [e for e in events if e["data"].get("id") == subject]


async def test_a_deposit_announces_each_state_with_the_transaction_as_the_api_shows_it(
    feed: Feed, sandbox: RunningSandbox, party: str
) -> None:
    account_id = await link(feed, party)
    response = await feed.post(party, "/deposits", {"amount": "25.00"})
    assert response.status_code == 202, response.text
    txn_id = response.json()["id"]
    await wait_for_types(feed, party, "transaction.created", "transaction.pending")
    await sandbox.settle(txn_id, party)
    await wait_for_types(feed, party, "transaction.completed")

    events = await feed.events(party)
    assert [e["type"] for e in of_subject(events, txn_id)] == [
        "transaction.created",
        "transaction.pending",
        "transaction.completed",
    ]
    assert [e["data"]["status"] for e in of_subject(events, txn_id)] == [
        "SUBMITTING",
        "PENDING",
        "COMPLETED",
    ]
    linked = of_subject(events, account_id)
    assert [e["type"] for e in linked] == ["bank_account.pending", "bank_account.linked"]
    # The account's item in the list, exactly.
    listed = (await feed.get(party, "/bank-accounts"))["items"]
    assert linked[-1]["data"] == next(a for a in listed if a["id"] == account_id)
    # The transaction's own route, less its history (the events are the history).
    shown = await feed.get(party, f"/transactions/{txn_id}")
    shown.pop("history")
    completed = of_subject(events, txn_id)[-1]
    assert completed["data"] == shown
    assert completed["partyRef"] == party
    assert completed["version"] == 1
    assert completed["id"].startswith("evt_")
    assert completed["createdAt"].endswith("Z")
    assert len({e["id"] for e in events}) == len(events)


async def test_a_return_announces_the_return_the_fee_and_the_disabled_account(
    feed: Feed, sandbox: RunningSandbox, party: str
) -> None:
    account_id = await link(feed, party)
    response = await feed.post(party, "/deposits", {"amount": "30.00"})
    txn_id = response.json()["id"]
    await sandbox.settle(txn_id, party)
    await wait_for_types(feed, party, "transaction.completed")
    # R02: account closed, so the account is unusable from now on.
    await sandbox.return_transfer(txn_id, party, reason_code="R02", fee="5.00")
    await wait_for_types(feed, party, "transaction.returned", "bank_account.disabled")

    events = await feed.events(party)
    returned = [e for e in of_subject(events, txn_id) if e["type"] == "transaction.returned"]
    assert returned[0]["data"]["status"] == "RETURNED"
    assert returned[0]["data"]["reasonCode"] == "R02"
    disabled = [e for e in of_subject(events, account_id) if e["type"] == "bank_account.disabled"]
    assert disabled[0]["data"]["status"] == "DISABLED"
    assert disabled[0]["data"]["current"] is False

    async def fee_announced() -> bool:
        fees = [
            e
            for e in await feed.events(party)
            if e["type"] == "transaction.created" and e["data"]["type"] == "RETURN_FEE"
        ]
        return bool(fees)

    await eventually(fee_announced)


async def test_an_unauthorized_return_puts_the_account_under_review(
    feed: Feed, sandbox: RunningSandbox, party: str
) -> None:
    account_id = await link(feed, party)
    response = await feed.post(party, "/deposits", {"amount": "11.00"})
    txn_id = response.json()["id"]
    await sandbox.return_transfer(txn_id, party, reason_code="R10")
    await wait_for_types(feed, party, "transaction.returned", "bank_account.under_review")
    review = [
        e
        for e in of_subject(await feed.events(party), account_id)
        if e["type"] == "bank_account.under_review"
    ]
    assert review[0]["data"]["needsReview"] is True
    assert review[0]["data"]["status"] == "LINKED"


async def test_declined_and_cancelled_transfers_are_announced(
    feed: Feed, sandbox: RunningSandbox, party: str
) -> None:
    await link(feed, party)
    first = (await feed.post(party, "/deposits", {"amount": "12.00"})).json()["id"]
    second = (await feed.post(party, "/deposits", {"amount": "13.00"})).json()["id"]
    await sandbox.decline(first, party, reason_code="INSUFFICIENT_FUNDS")
    await sandbox.cancel(second, party)
    await wait_for_types(feed, party, "transaction.declined", "transaction.cancelled")
    events = await feed.events(party)
    assert of_subject(events, first)[-1]["type"] == "transaction.declined"
    assert of_subject(events, second)[-1]["type"] == "transaction.cancelled"


async def test_a_refused_withdrawal_is_created_then_failed(
    feed: Feed, sandbox: RunningSandbox, party: str
) -> None:
    await link(feed, party)
    # Nothing settled: Bakkt refuses the withdrawal for lack of balance.
    response = await feed.post(party, "/withdrawals", {"amount": "50.00"})
    assert response.status_code == 422, response.text
    txn_id = response.json()["transactionId"]
    await wait_for_types(feed, party, "transaction.failed")
    events = of_subject(await feed.events(party), txn_id)
    assert [e["type"] for e in events] == ["transaction.created", "transaction.failed"]
    assert events[-1]["data"]["reasonCode"] == response.json()["code"]


async def test_a_lost_answer_is_announced_as_unknown(
    feed: Feed, sandbox: RunningSandbox, party: str
) -> None:
    await link(feed, party)
    await sandbox.set_fault("transferFiatCurrency", "error", status=503, count=2)
    try:
        response = await feed.post(party, "/deposits", {"amount": "14.00"})
    finally:
        await sandbox.clear_faults()
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "UNKNOWN"
    await wait_for_types(feed, party, "transaction.unknown")


async def test_an_inbound_wire_is_announced_created_and_in_its_state(
    feed: Feed, sandbox: RunningSandbox, party: str
) -> None:
    await link(feed, party)
    await sandbox.inbound_wire("1000.00", party)
    await wait_for_types(feed, party, "transaction.created")
    wires = [e for e in await feed.events(party) if e["data"].get("method") == "WIRE"]
    status = wires[0]["data"]["status"]
    # Bakkt started it in a state of its own: that state's event follows its creation.
    assert [e["type"] for e in wires[:2]] == [
        "transaction.created",
        f"transaction.{status.lower()}",
    ]


async def test_unlink_and_a_second_link_are_announced(
    feed: Feed, sandbox: RunningSandbox, party: str
) -> None:
    first = await link(feed, party)
    second_response = await feed.post(party, "/bank-accounts", plaid())
    second = str(second_response.json()["id"])
    await wait_for_types(feed, party, "bank_account.replaced")
    unlinked = await feed.http.delete(
        f"/v1/parties/{party}/bank-accounts/{second}",
        headers={**feed.auth(party), "Idempotency-Key": f"key-{uuid.uuid4().hex}"},
    )
    assert unlinked.status_code == 200, unlinked.text
    await wait_for_types(feed, party, "bank_account.unlinked")
    events = await feed.events(party)
    assert [e["type"] for e in of_subject(events, first)] == [
        "bank_account.pending",
        "bank_account.linked",
        "bank_account.replaced",
    ]
    assert of_subject(events, second)[-1]["type"] == "bank_account.unlinked"


async def test_a_link_bakkt_never_received_ends_with_a_failed_event(
    feed: Feed, sandbox: RunningSandbox, party: str
) -> None:
    await sandbox.set_fault("generateLinkUrl", "error", status=503)
    try:
        response = await feed.post(party, "/link-sessions", {})
    finally:
        await sandbox.clear_faults()
    assert response.status_code == 503, response.text
    await wait_for_types(feed, party, "bank_account.pending", "bank_account.failed")
    pending, failed = await feed.events(party)
    assert pending["data"]["id"] == failed["data"]["id"]
    assert failed["data"]["reasonCode"] == "link_not_sent"
    # The row itself is gone, as before: the API knows no such account.
    assert (await feed.get(party, "/bank-accounts"))["items"] == []


async def test_a_party_status_change_is_announced_with_the_party_as_the_api_shows_it(
    feed: Feed, sandbox: RunningSandbox, party: str
) -> None:
    await link(feed, party)
    await sandbox.set_party_status(party, "SUSPENDED", "FRAUD_RISK")
    await wait_for_types(feed, party, "party.suspended")
    await sandbox.set_party_status(party, "ACTIVE", "ENROLLMENT")
    await wait_for_types(feed, party, "party.active")
    parties = [e for e in await feed.events(party) if e["type"].startswith("party.")]
    assert [e["type"] for e in parties] == ["party.suspended", "party.active"]
    assert parties[0]["data"]["status"] == "SUSPENDED"
    assert parties[0]["data"]["allowed"]["deposit"] is False
    assert parties[-1]["data"] == await feed.get(party, "")
