"""Bank accounts and party status as Bakkt keeps them: one current account per party, linking by
account details with its magic values, and every PARTY_EVENT reason code."""

import json
from typing import Any

import pytest

from bakkt_sandbox import magic
from bakkt_sandbox.testing import RunningSandbox, running_sandbox
from tests.sandbox.conftest import Partner, http_client, make_partner

ROUTING = "021000021"


async def link_ach(partner: Partner, party: str, account_number: str, ref: str) -> None:
    resp = await partner.post(
        party,
        "/bankAccountLinking/ach",
        {
            "routingNumber": ROUTING,
            "accountNumber": account_number,
            "accountType": "CHECKING",
            "partnerTransactionRef": ref,
        },
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"success": True}


async def link_events(sandbox: RunningSandbox, party: str) -> list[dict[str, Any]]:
    return [w["event"] for w in await sandbox.webhooks("BANK_ACCOUNT_LINK", party_ref=party)]


# -- linking by account details ---------------------------------------------------------------


async def test_an_ach_link_answers_200_and_its_webhook_says_linked(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    await link_ach(partner, party, "99990000", "ach-ok")
    [event] = await link_events(bakkt_sandbox, party)
    assert (event["partnerTransactionRef"], event["linkStatus"], event["accountMask"]) == (
        "ach-ok",
        "LINKED",
        "0000",
    )
    # Only the last four digits ever leave Bakkt's side.
    assert "99990000" not in json.dumps(event)
    account = (await bakkt_sandbox.party(party))["bankAccount"]
    assert account is not None
    assert (account["partnerTransactionRef"], account["source"]) == ("ach-ok", "ach")
    assert (await partner.transfer(party, 20, ref="ach-dep")).status_code == 200


async def test_the_failing_account_number_links_nothing(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    await link_ach(partner, party, "99990001", "ach-fail")
    [event] = await link_events(bakkt_sandbox, party)
    assert (event["linkStatus"], event["reasonCode"]) == ("FAILED", "ACCOUNT_VERIFICATION_FAILED")
    assert (await bakkt_sandbox.party(party))["bankAccount"] is None
    refused = await partner.transfer(party, 20, ref="no-account")
    assert refused.json()["type"] == "BANK_ACCOUNT_NOT_FOUND"


async def test_the_r03_account_links_and_its_first_deposit_returns_and_unlinks_it() -> None:
    async with running_sandbox(time_scale=0, webhook_url="") as sb, http_client() as http:
        partner = await make_partner(sb, http)
        await link_ach(partner, "r03", "99990003", "ach-r03")
        assert (await partner.transfer("r03", 30, ref="first")).status_code == 200
        await sb.advance_clock(3)
        first = await partner.transaction("r03", "first")
        assert (first["transactionStatus"], first["reasonCode"]) == ("RETURNED", "R03")
        assert [e["linkStatus"] for e in await link_events(sb, "r03")] == ["LINKED", "UNLINKED"]
        assert (await sb.party("r03"))["bankAccount"] is None
        # Linked again, the same number behaves like any account: only the first deposit returns.
        await link_ach(partner, "r03", "99990000", "ach-again")
        assert (await partner.transfer("r03", 30, ref="second")).status_code == 200
        await sb.advance_clock(3)
        assert (await partner.transaction("r03", "second"))["transactionStatus"] == "COMPLETE"


async def test_an_unsupported_routing_number_still_fails_the_ach_link(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    resp = await partner.post(
        party,
        "/bankAccountLinking/ach",
        {
            "routingNumber": magic.UNSUPPORTED_ROUTING_NUMBER,
            "accountNumber": "12345678",
            "accountType": "SAVINGS",
            "partnerTransactionRef": "ach-unsupported",
        },
    )
    assert resp.status_code == 200
    [event] = await link_events(bakkt_sandbox, party)
    assert (event["linkStatus"], event["reasonCode"]) == (
        "FAILED",
        "UNSUPPORTED_FINANCIAL_INSTITUTION",
    )


# -- one current bank account per party ---------------------------------------------------------


async def test_a_second_link_supersedes_the_first_and_transfers_use_the_new_one(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    await link_ach(partner, party, "11112222", "first-link")
    assert (await partner.transfer(party, 20, ref="on-first")).status_code == 200
    await link_ach(partner, party, "33334444", "second-link")
    assert (await partner.transfer(party, 20, ref="on-second")).status_code == 200
    record = await bakkt_sandbox.party(party)
    assert record["bankAccount"] is not None
    assert record["bankAccount"]["partnerTransactionRef"] == "second-link"
    assert [a["partnerTransactionRef"] for a in record["replacedBankAccounts"]] == ["first-link"]
    ledger = {
        t["partnerTransactionRef"]: t["bankAccountRef"]
        for t in await bakkt_sandbox.transfers(party)
    }
    assert ledger == {"on-first": "first-link", "on-second": "second-link"}


async def test_unlink_acts_on_the_current_account_whatever_ref_it_names(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    await link_ach(partner, party, "11112222", "old-link")
    await link_ach(partner, party, "33334444", "new-link")
    resp = await partner.post(
        party,
        "/bankAccountLinking/unlink",
        {"instrumentType": "ACH", "partnerTransactionRef": "unlink-1"},
    )
    assert resp.status_code == 200
    record = await bakkt_sandbox.party(party)
    assert record["bankAccount"] is None
    unlinked = [e for e in await link_events(bakkt_sandbox, party) if e["linkStatus"] == "UNLINKED"]
    assert [e["accountMask"] for e in unlinked] == ["4444"]
    again = await partner.post(
        party,
        "/bankAccountLinking/unlink",
        {"instrumentType": "ACH", "partnerTransactionRef": "unlink-2"},
    )
    assert again.json()["type"] == "LINKED_BANK_ACCOUNT_NOT_FOUND"
    assert (await partner.transfer(party, 20)).json()["type"] == "BANK_ACCOUNT_NOT_FOUND"


# -- party status and reason --------------------------------------------------------------------

GUIDE_REASON_CODES = [
    ("ACCOUNT_CLOSURE_REQUESTED", "CLOSED"),
    ("MAX_ACH_RETURNS", "SUSPENDED"),
    ("COMPLIANCE_LOCKED", "SUSPENDED"),
    ("LIQUIDATE_ACCOUNT", "LIQUIDATED"),
    ("OTHER", "SUSPENDED"),
    ("TAX_ID_MAX_RETRIES", "SUSPENDED"),
    ("CLOSED", "CLOSED"),
    ("ENROLLMENT", "ACTIVE"),
    ("RISK_KYC", "UNDER_REVIEW"),
    ("RISK_OFAC", "UNDER_REVIEW"),
    ("PENDING_REVIEW", "UNDER_REVIEW"),
    ("DOCUMENT_VERIFICATION", "UNDER_REVIEW"),
]


async def party_events(sandbox: RunningSandbox, party: str) -> list[dict[str, Any]]:
    return [w["event"] for w in await sandbox.webhooks("PARTY_EVENT", party_ref=party)]


@pytest.mark.parametrize(("reason", "status"), GUIDE_REASON_CODES)
async def test_each_guide_reason_code_sets_its_status_and_sends_a_party_event(
    bakkt_sandbox: RunningSandbox, party: str, reason: str, status: str
) -> None:
    record = await bakkt_sandbox.set_party_status(party, reason_code=reason)
    assert (record["partyStatus"], record["reasonCode"]) == (status, reason)
    [event] = await party_events(bakkt_sandbox, party)
    assert (event["partyStatus"], event["reasonCode"]) == (status, reason)
    assert set(event) >= {"requestId", "partnerPartyRef", "eventTime", "verificationURL"}
    has_url = reason == "DOCUMENT_VERIFICATION"
    assert (event["verificationURL"] is not None) is has_url
    assert (event["verificationURLExpiry"] is not None) is has_url


async def test_an_explicit_status_overrides_the_reasons_usual_one(
    bakkt_sandbox: RunningSandbox, party: str
) -> None:
    record = await bakkt_sandbox.set_party_status(party, "INACTIVE", "RISK_KYC")
    assert (record["partyStatus"], record["reasonCode"]) == ("INACTIVE", "RISK_KYC")


async def test_document_verification_carries_the_given_url_and_expiry_everywhere(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    url = "https://verify.example.test/abc"
    record = await bakkt_sandbox.set_party_status(
        party,
        reason_code="DOCUMENT_VERIFICATION",
        verification_url=url,
        verification_url_expiry="2099-01-02T03:04:05Z",
    )
    assert (record["verificationURL"], record["verificationURLExpiry"]) == (
        url,
        "2099-01-02T03:04:05.000Z",
    )
    [event] = await party_events(bakkt_sandbox, party)
    assert (event["verificationURL"], event["verificationURLExpiry"]) == (
        url,
        "2099-01-02T03:04:05.000Z",
    )
    details = (await partner.get(party, "/kyc/documentVerificationDetails")).json()
    assert details == {"verificationURL": url, "verificationURLExpiry": "2099-01-02T03:04:05.000Z"}
    # Another reason clears the URL: it belonged to that verification only.
    cleared = await bakkt_sandbox.set_party_status(party, reason_code="ENROLLMENT")
    assert (cleared["partyStatus"], cleared["verificationURL"]) == ("ACTIVE", None)


async def test_an_unknown_reason_code_is_sent_as_given_with_the_status_named(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    record = await bakkt_sandbox.set_party_status(party, "SUSPENDED", "NEW_BAKKT_CODE_2027")
    assert (record["partyStatus"], record["reasonCode"]) == ("SUSPENDED", "NEW_BAKKT_CODE_2027")
    [event] = await party_events(bakkt_sandbox, party)
    assert event["reasonCode"] == "NEW_BAKKT_CODE_2027"
    assert (await partner.transfer(party, 20)).json()["type"] == "PARTY_SUSPENDED"


@pytest.mark.parametrize(
    "body",
    [
        {"reasonCode": "NEW_BAKKT_CODE"},  # unknown code: the status must be named
        {"status": "ACTIVE", "reasonCode": ""},
        {"status": "ACTIVE", "reasonCode": "TWO WORDS"},
        {"status": "ACTIVE", "reasonCode": ["ENROLLMENT"]},
        {"status": "ACTIVE", "verificationURL": "https://x.test/"},
        {"reasonCode": "DOCUMENT_VERIFICATION", "verificationURL": "javascript:alert(1)"},
        {"reasonCode": "DOCUMENT_VERIFICATION", "verificationURLExpiry": "2099-01-01T00:00:00"},
        {"reasonCode": "DOCUMENT_VERIFICATION", "verificationURLExpiry": "soon"},
        {"status": "DORMANT"},
    ],
)
async def test_a_bad_status_request_is_a_400_and_sends_nothing(
    bakkt_sandbox: RunningSandbox, http: Any, party: str, body: dict[str, Any]
) -> None:
    resp = await http.post(f"{bakkt_sandbox.base_url}/sandbox/parties/{party}/status", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["type"] == "INVALID_REQUEST"
    assert await party_events(bakkt_sandbox, party) == []
