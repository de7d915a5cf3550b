"""Lifecycle (docs/bakkt-contract.md A5) on the business clock, magic amounts, control-API moves."""

import asyncio

import httpx
import pytest

from bakkt_sandbox.testing import RunningSandbox, SandboxError, running_sandbox
from tests.sandbox.conftest import Partner, http_client, make_partner


async def statuses(sb: RunningSandbox, ref: str) -> list[str]:
    """The transactionStatus of every FIAT_EVENT sent for `ref`, in order."""
    return [d["event"]["transactionStatus"] for d in await sb.webhooks(transaction_ref=ref)]


async def test_ach_deposit_completes_after_three_business_days(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await partner.transfer(linked_party, 100, ref="d-1")
    await bakkt_sandbox.advance_clock(2.9)
    assert (await partner.transaction(linked_party, "d-1"))["transactionStatus"] == "PENDING"
    assert await partner.balance(linked_party) == {
        "partnerPartyRef": linked_party,
        "currency": "USD",
        "settledAmount": 0,
        "unsettledAmount": 100,
    }
    await bakkt_sandbox.advance_clock(0.1)
    tx = await partner.transaction(linked_party, "d-1")
    assert tx["transactionStatus"] == "COMPLETE"
    assert tx["updatedAt"] >= tx["createdAt"]
    balance = await partner.balance(linked_party)
    assert (balance["settledAmount"], balance["unsettledAmount"]) == (100, 0)
    assert await statuses(bakkt_sandbox, "d-1") == ["PENDING", "COMPLETE"]


async def test_ach_withdraw_debits_on_acceptance_and_completes_shortly_after(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await bakkt_sandbox.credit(linked_party, 60)
    await partner.transfer(linked_party, 25, "WITHDRAW", ref="w-1")
    assert (await partner.balance(linked_party))["settledAmount"] == 35
    tx = await partner.transaction(linked_party, "w-1")
    assert (tx["fiatTransactionType"], tx["transactionStatus"]) == ("ACH_WITHDRAW", "PENDING")
    await bakkt_sandbox.advance_clock(0.05)
    assert (await partner.transaction(linked_party, "w-1"))["transactionStatus"] == "COMPLETE"
    assert (await partner.balance(linked_party))["settledAmount"] == 35


@pytest.mark.parametrize("direction", ["DEPOSIT", "WITHDRAW"])
async def test_wires_complete_when_processed_after_the_configured_delay(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str, direction: str
) -> None:
    await bakkt_sandbox.credit(party, 500)
    details = {
        "wireRoutingNumber": "021000021",
        "wireAccountNumber": "12345678",
        "wireBankName": "Big Bank",
    }
    resp = await partner.transfer(
        party, 300, direction, "WIRE", ref="wire-1", wireWithdrawDetails=details
    )
    assert resp.status_code == 200, resp.text
    assert (await partner.transaction(party, "wire-1"))[
        "fiatTransactionType"
    ] == f"WIRE_{direction}"
    await bakkt_sandbox.advance_clock(0.2)
    assert (await partner.transaction(party, "wire-1"))["transactionStatus"] == "PENDING"
    await bakkt_sandbox.advance_clock(0.05)
    assert (await partner.transaction(party, "wire-1"))["transactionStatus"] == "COMPLETE"
    expected = 800 if direction == "DEPOSIT" else 200
    assert (await partner.balance(party))["settledAmount"] == expected


async def test_a_compressed_clock_settles_on_its_own() -> None:
    async with running_sandbox(time_scale=0.02, webhook_url="") as sb, http_client() as http:
        partner = await make_partner(sb, http)
        await partner.link("party-fast")
        await partner.transfer("party-fast", 10, ref="fast-1")
        for _ in range(100):
            if (await partner.transaction("party-fast", "fast-1"))[
                "transactionStatus"
            ] != "PENDING":
                break
            await asyncio.sleep(0.02)
        assert (await partner.transaction("party-fast", "fast-1"))[
            "transactionStatus"
        ] == "COMPLETE"


async def test_time_scale_can_be_changed_at_run_time(fresh_bakkt_sandbox: RunningSandbox) -> None:
    clock = await fresh_bakkt_sandbox.set_time_scale(0.01)
    assert clock["frozen"] is False
    await asyncio.sleep(0.1)
    clock = await fresh_bakkt_sandbox.set_time_scale(0)
    assert clock["frozen"] is True
    assert clock["businessDays"] >= 5
    assert (await fresh_bakkt_sandbox.clock())["businessDays"] == clock["businessDays"]


async def test_amount_ending_01_is_declined_at_once(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await partner.transfer(linked_party, 25.01, ref="m-01")
    await bakkt_sandbox.advance_clock(0)
    tx = await partner.transaction(linked_party, "m-01")
    assert (tx["transactionStatus"], tx["reasonCode"]) == ("DECLINED", "RISK_DECLINED")
    assert (await partner.balance(linked_party))["unsettledAmount"] == 0
    assert await statuses(bakkt_sandbox, "m-01") == ["PENDING", "DECLINED"]


async def test_amount_ending_02_is_cancelled(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await partner.transfer(linked_party, 25.02, ref="m-02")
    await bakkt_sandbox.advance_clock(0)
    assert (await partner.transaction(linked_party, "m-02"))["transactionStatus"] == "CANCELLED"


async def test_amount_ending_03_is_returned_before_completion(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await partner.transfer(linked_party, 25.03, ref="m-03")
    await bakkt_sandbox.advance_clock(10)
    tx = await partner.transaction(linked_party, "m-03")
    assert (tx["transactionStatus"], tx["reasonCode"]) == ("RETURNED", "R01")
    assert await statuses(bakkt_sandbox, "m-03") == ["PENDING", "RETURNED"]
    balance = await partner.balance(linked_party)
    assert (balance["settledAmount"], balance["unsettledAmount"]) == (0, 0)


async def test_amount_ending_04_completes_then_returns_with_a_fee(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await partner.transfer(linked_party, 25.04, ref="m-04")
    await bakkt_sandbox.advance_clock(3)
    assert (await partner.transaction(linked_party, "m-04"))["transactionStatus"] == "COMPLETE"
    assert (await partner.balance(linked_party))["settledAmount"] == 25.04
    await bakkt_sandbox.advance_clock(2)
    tx = await partner.transaction(linked_party, "m-04")
    assert (tx["transactionStatus"], tx["reasonCode"]) == ("RETURNED", "R10")
    [fee] = [
        t
        for t in (await partner.get(linked_party, "/transactions")).json()["transactions"]
        if t["fiatTransactionType"] == "ACH_RETURN_FEE"
    ]
    assert fee["relatedPartnerTransactionRef"] == "m-04"
    assert (fee["transactionStatus"], fee["amount"], fee["reasonCode"]) == ("COMPLETE", 15, "R10")
    assert (await partner.balance(linked_party))["settledAmount"] == -15
    fee_events = await bakkt_sandbox.webhooks(transaction_ref=fee["partnerTransactionRef"])
    assert [d["event"]["fiatTransactionType"] for d in fee_events] == ["ACH_RETURN_FEE"]
    assert await statuses(bakkt_sandbox, "m-04") == ["PENDING", "COMPLETE", "RETURNED"]


async def test_amount_ending_05_stays_pending(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await partner.transfer(linked_party, 25.05, ref="m-05")
    await bakkt_sandbox.advance_clock(100)
    assert (await partner.transaction(linked_party, "m-05"))["transactionStatus"] == "PENDING"


async def test_a_declined_withdrawal_gives_the_money_back(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await bakkt_sandbox.credit(linked_party, 100)
    await partner.transfer(linked_party, 50.01, "WITHDRAW", ref="wd-01")
    await bakkt_sandbox.advance_clock(0)
    assert (await partner.transaction(linked_party, "wd-01"))["transactionStatus"] == "DECLINED"
    assert (await partner.balance(linked_party))["settledAmount"] == 100


async def test_a_withdrawal_returned_after_completion_is_credited_back_less_the_fee(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await bakkt_sandbox.credit(linked_party, 100)
    await partner.transfer(linked_party, 40, "WITHDRAW", ref="wr-1")
    await bakkt_sandbox.settle("wr-1")
    assert (await partner.balance(linked_party))["settledAmount"] == 60
    await bakkt_sandbox.return_transfer("wr-1", reason_code="R23", fee=2.5)
    assert (await partner.balance(linked_party))["settledAmount"] == 97.5


async def test_magic_amounts_can_be_switched_off() -> None:
    async with running_sandbox(time_scale=0, webhook_url="", magic_values=False) as sb:
        async with http_client() as http:
            partner = await make_partner(sb, http)
            await partner.link("party-plain")
            await partner.transfer("party-plain", 25.01, ref="plain")
            await sb.advance_clock(3)
            assert (await partner.transaction("party-plain", "plain"))[
                "transactionStatus"
            ] == "COMPLETE"


async def test_control_settle_decline_and_cancel_move_pending_transfers(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    for ref in ("c-s", "c-d", "c-c"):
        await partner.transfer(linked_party, 10, ref=ref)
    assert (await bakkt_sandbox.settle("c-s"))["transactionStatus"] == "COMPLETE"
    declined = await bakkt_sandbox.decline("c-d", reason_code="LIMIT_EXCEEDED")
    assert (declined["transactionStatus"], declined["reasonCode"]) == ("DECLINED", "LIMIT_EXCEEDED")
    assert (await bakkt_sandbox.cancel("c-c"))["transactionStatus"] == "CANCELLED"
    balance = await partner.balance(linked_party)
    assert (balance["settledAmount"], balance["unsettledAmount"]) == (10, 0)
    ledger = {
        t["partnerTransactionRef"]: t["status"] for t in await bakkt_sandbox.transfers(linked_party)
    }
    assert ledger == {"c-s": "COMPLETE", "c-d": "DECLINED", "c-c": "CANCELLED"}


async def test_an_explicit_move_replaces_the_planned_one(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await partner.transfer(linked_party, 25.04, ref="plan-1")
    await bakkt_sandbox.settle("plan-1")
    await bakkt_sandbox.advance_clock(30)
    assert (await partner.transaction(linked_party, "plan-1"))["transactionStatus"] == "COMPLETE"


async def test_control_return_before_completion_has_no_fee(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await partner.transfer(linked_party, 10, ref="rb-1")
    tx = await bakkt_sandbox.return_transfer("rb-1", reason_code="R08")
    assert (tx["transactionStatus"], tx["reasonCode"]) == ("RETURNED", "R08")
    assert tx["reasonDescription"] == "Payment stopped"
    kinds = [t["fiatTransactionType"] for t in await bakkt_sandbox.transactions(linked_party)]
    assert kinds == ["ACH_DEPOSIT"]


async def test_a_return_for_a_closed_account_unlinks_the_bank_account(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await partner.transfer(linked_party, 10, ref="r02")
    await bakkt_sandbox.return_transfer("r02", reason_code="R02")
    [unlink] = [
        d["event"]
        for d in await bakkt_sandbox.webhooks("BANK_ACCOUNT_LINK", party_ref=linked_party)
        if d["event"]["linkStatus"] == "UNLINKED"
    ]
    assert unlink["reasonCode"] == "R02"
    resp = await partner.transfer(linked_party, 10, ref="after-r02")
    assert resp.json()["type"] == "BANK_ACCOUNT_NOT_FOUND"


@pytest.mark.parametrize(("first", "then"), [("settle", "settle"), ("cancel", "return")])
async def test_moves_out_of_a_final_state_are_refused(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str, first: str, then: str
) -> None:
    await partner.transfer(linked_party, 10, ref="fin-1")
    await getattr(bakkt_sandbox, first)("fin-1", linked_party)
    action = bakkt_sandbox.return_transfer if then == "return" else getattr(bakkt_sandbox, then)
    with pytest.raises(SandboxError) as err:
        await action("fin-1", linked_party)
    assert err.value.status == 409
    assert err.value.body["type"] == "INVALID_TRANSITION"


async def test_control_moves_on_an_unknown_or_ambiguous_ref_are_refused(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    with pytest.raises(SandboxError) as missing:
        await bakkt_sandbox.settle("no-such-ref")
    assert missing.value.status == 404
    await partner.link(party)
    await partner.link(party + "-b")
    await partner.transfer(party, 10, ref="shared-ref")
    await partner.transfer(party + "-b", 10, ref="shared-ref")
    with pytest.raises(SandboxError) as ambiguous:
        await bakkt_sandbox.settle("shared-ref")
    assert ambiguous.value.status == 409
    assert (await bakkt_sandbox.settle("shared-ref", party))["partnerPartyRef"] == party


async def test_inbound_wire_creates_a_bakkt_referenced_deposit_that_completes(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    wire = await bakkt_sandbox.inbound_wire(1000, party)
    assert wire["fiatTransactionType"] == "WIRE_DEPOSIT"
    assert wire["partnerTransactionRef"].startswith("bakkt-wire-")
    assert wire["transactionStatus"] == "PENDING"
    assert (await partner.balance(party))["unsettledAmount"] == 1000
    await bakkt_sandbox.advance_clock(0.25)
    ref = wire["partnerTransactionRef"]
    assert (await partner.transaction(party, ref))["transactionStatus"] == "COMPLETE"
    assert await statuses(bakkt_sandbox, ref) == ["PENDING", "COMPLETE"]


async def test_inbound_wire_is_matched_by_the_party_wire_reference(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    reference = (await partner.get(party, "/wire-instructions")).json()["wireReferenceNumber"]
    wire = await bakkt_sandbox.inbound_wire(75, wire_reference_number=reference)
    assert wire["partnerPartyRef"] == party


async def test_inbound_wire_with_another_party_reference_is_declined(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    other = (await partner.get(party + "-x", "/wire-instructions")).json()["wireReferenceNumber"]
    wire = await bakkt_sandbox.inbound_wire(75, party, wire_reference_number=other)
    await bakkt_sandbox.advance_clock(0.25)
    tx = await partner.transaction(party, wire["partnerTransactionRef"])
    assert tx["transactionStatus"] == "DECLINED"


async def test_inbound_wire_for_a_party_that_cannot_deposit_is_declined(
    bakkt_sandbox: RunningSandbox, partner: Partner
) -> None:
    wire = await bakkt_sandbox.inbound_wire(75, "suspended-wire")
    await bakkt_sandbox.advance_clock(0.25)
    tx = await partner.transaction("suspended-wire", wire["partnerTransactionRef"])
    assert tx["transactionStatus"] == "DECLINED"


async def test_inbound_wire_without_a_known_party_is_refused(
    bakkt_sandbox: RunningSandbox,
) -> None:
    with pytest.raises(SandboxError) as err:
        await bakkt_sandbox.inbound_wire(75, wire_reference_number="BKTNOPE")
    assert err.value.status == 404


async def test_setting_a_party_status_sends_a_party_event_and_applies(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    record = await bakkt_sandbox.set_party_status(
        linked_party, "UNDER_REVIEW", "DOCUMENT_VERIFICATION"
    )
    assert record["partyStatus"] == "UNDER_REVIEW"
    [event] = [
        d["event"] for d in await bakkt_sandbox.webhooks("PARTY_EVENT", party_ref=linked_party)
    ]
    assert event["reasonCode"] == "DOCUMENT_VERIFICATION"
    assert event["verificationURL"].startswith("https://")
    assert event["verificationURLExpiry"].endswith("Z")
    resp = await partner.transfer(linked_party, 10)
    assert resp.json()["type"] == "PARTY_INVALID_OPERATION"
    await bakkt_sandbox.set_party_status(linked_party, "ACTIVE")
    assert (await partner.transfer(linked_party, 10)).status_code == 200


async def test_credit_adds_to_the_settled_balance(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    record = await bakkt_sandbox.credit(party, "12.34")
    assert record["settledAmount"] == 12.34
    assert (await partner.balance(party))["settledAmount"] == 12.34
    with pytest.raises(SandboxError):
        await bakkt_sandbox.credit(party, "1.001")


async def test_a_control_move_posted_with_no_body_uses_its_defaults(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    # README's `curl -X POST .../settle` sends neither a body nor a content type.
    await partner.transfer(linked_party, 10, ref="bare-1")
    async with httpx.AsyncClient(base_url=bakkt_sandbox.base_url) as http:
        response = await http.post("/sandbox/transactions/bare-1/settle")
    assert response.status_code == 200, response.text
    assert response.json()["transactionStatus"] == "COMPLETE"
