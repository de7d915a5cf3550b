"""Every /partner/v1 operation and every error type it answers with (docs/bakkt-contract.md)."""

import asyncio
import base64
import re
import time
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from bakkt_sandbox.bank import Bank
from bakkt_sandbox.config import SandboxSettings
from bakkt_sandbox.model import Transaction, TxStatus, TxType, now_ms, parse_iso
from bakkt_sandbox.testing import RunningSandbox, running_sandbox
from tests.sandbox.conftest import Partner, http_client, make_partner

TOKEN_PATH = "/partner/v1/oauth2/token"


def error_type(resp: httpx.Response) -> str:
    body: dict[str, Any] = resp.json()
    assert set(body) >= {"type", "description", "detail", "details"}
    return str(body["type"])


# -- token and bearer ------------------------------------------------------------------------


async def test_token_accepts_grant_type_as_query_parameter_or_none(
    bakkt_sandbox: RunningSandbox, http: httpx.AsyncClient
) -> None:
    url = bakkt_sandbox.base_url + TOKEN_PATH
    auth = {"Authorization": bakkt_sandbox.basic_auth()}
    by_query = await http.post(url, params={"grant_type": "client_credentials"}, headers=auth)
    without = await http.post(url, headers=auth)
    assert by_query.status_code == without.status_code == 200


async def test_token_refuses_another_grant_type(
    bakkt_sandbox: RunningSandbox, http: httpx.AsyncClient
) -> None:
    resp = await http.post(
        bakkt_sandbox.base_url + TOKEN_PATH,
        data={"grant_type": "password"},
        headers={"Authorization": bakkt_sandbox.basic_auth()},
    )
    assert resp.status_code == 400
    assert error_type(resp) == "INVALID_FIELD_VALUE"


@pytest.mark.parametrize(
    "header",
    [None, "Bearer abc", "Basic !!!not-base64!!!", "Basic " + base64.b64encode(b"x:y").decode()],
)
async def test_token_without_valid_client_credentials_is_401(
    bakkt_sandbox: RunningSandbox, http: httpx.AsyncClient, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    resp = await http.post(bakkt_sandbox.base_url + TOKEN_PATH, headers=headers)
    assert resp.status_code == 401
    assert error_type(resp) == "UNAUTHORIZED"


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer not.a.jwt", "Basic abc"])
async def test_missing_or_malformed_bearer_is_401(
    bakkt_sandbox: RunningSandbox, http: httpx.AsyncClient, party: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    resp = await http.get(bakkt_sandbox.party_url(party, "/fiatAccount/balance"), headers=headers)
    assert resp.status_code == 401
    assert error_type(resp) == "UNAUTHORIZED"


async def test_a_token_signed_by_another_key_is_401(
    bakkt_sandbox: RunningSandbox, http: httpx.AsyncClient, party: str
) -> None:
    forged = jwt.encode(
        {"exp": 2**40, "iat": 0}, "not-the-sandbox-key-but-long-enough-for-hs256", algorithm="HS256"
    )
    resp = await http.get(
        bakkt_sandbox.party_url(party, "/fiatAccount/balance"),
        headers={"Authorization": f"Bearer {forged}"},
    )
    assert resp.status_code == 401


async def test_an_expired_token_is_401() -> None:
    async with running_sandbox(time_scale=0, webhook_url="", token_ttl=1) as sb:
        async with http_client() as http:
            partner = await make_partner(sb, http)
            assert (await partner.get("p", "/fiatAccount/balance")).status_code == 200
            claims = jwt.decode(partner.token, options={"verify_signature": False})
            assert claims["exp"] - claims["iat"] == 1
            # Sleep past exp (whole seconds) rather than patching the sandbox's clock.
            await asyncio.sleep(max(0.0, claims["exp"] - time.time()) + 0.05)
            resp = await partner.get("p", "/fiatAccount/balance")
            assert resp.status_code == 401
            assert "expired" in resp.json()["description"]


async def test_expire_tokens_invalidates_every_issued_token(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    await bakkt_sandbox.expire_tokens()
    assert (await partner.get(party, "/fiatAccount/balance")).status_code == 401
    fresh = await make_partner(bakkt_sandbox, partner.http)
    assert (await fresh.get(party, "/fiatAccount/balance")).status_code == 200


async def test_tokens_verify_against_the_published_jwks(
    bakkt_sandbox: RunningSandbox, partner: Partner
) -> None:
    jwks = (await partner.http.get(bakkt_sandbox.base_url + "/sandbox/jwks.json")).json()
    key = jwt.PyJWK(jwks["keys"][0])
    claims = jwt.decode(partner.token, key, algorithms=["RS256"], audience=bakkt_sandbox.partner_id)
    assert claims["sub"] == bakkt_sandbox.client_id


# -- heartbeat, partner id, unknown paths -------------------------------------------------------


async def test_heartbeat_echoes_the_request_id(
    bakkt_sandbox: RunningSandbox, partner: Partner
) -> None:
    resp = await partner.http.post(
        bakkt_sandbox.base_url + "/partner/v1/heartbeat",
        json={"requestId": "123e4567-e89b-12d3-a456-426614174000"},
        headers=partner.headers,
    )
    assert resp.json() == {
        "requestId": "123e4567-e89b-12d3-a456-426614174000",
        "result": "PONG: heartbeat received",
    }


async def test_heartbeat_needs_a_json_object_body(
    bakkt_sandbox: RunningSandbox, partner: Partner
) -> None:
    resp = await partner.http.post(
        bakkt_sandbox.base_url + "/partner/v1/heartbeat", content=b"[1,", headers=partner.headers
    )
    assert resp.status_code == 400
    assert error_type(resp) == "INVALID_FIELD_VALUE"


async def test_another_partner_id_is_invalid_partner_id(
    bakkt_sandbox: RunningSandbox, partner: Partner
) -> None:
    url = f"{bakkt_sandbox.base_url}/partner/v1/partner/{uuid.uuid4()}/party/p/fiatAccount/balance"
    resp = await partner.http.get(url, headers=partner.headers)
    assert resp.status_code == 400
    assert error_type(resp) == "INVALID_PARTNER_ID"


async def test_unknown_partner_paths_answer_a_public_api_error(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    missing = await partner.get(party, "/nothing-here")
    assert (missing.status_code, error_type(missing)) == (404, "NOT_FOUND")
    wrong_method = await partner.get(party, "/transfer")
    assert (wrong_method.status_code, error_type(wrong_method)) == (405, "METHOD_NOT_ALLOWED")


async def test_an_unknown_party_prefix_is_party_account_not_found(partner: Partner) -> None:
    resp = await partner.get("unknown-42", "/fiatAccount/balance")
    assert resp.status_code == 400
    assert error_type(resp) == "PARTY_ACCOUNT_NOT_FOUND"


# -- linking -----------------------------------------------------------------------------------


async def test_plaid_link_succeeds_and_links_the_account(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    resp = await partner.post(
        party,
        "/plaidAccount/link",
        {"processorToken": "processor-sandbox-x", "partnerTransactionRef": "l1"},
    )
    assert (resp.status_code, resp.json()) == (200, {"success": True})
    record = await bakkt_sandbox.party(party)
    assert record["bankAccount"] is not None
    assert record["bankAccount"]["partnerTransactionRef"] == "l1"


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("processor-unsupported-sync-1", "UNSUPPORTED_FINANCIAL_INSTITUTION"),
        ("processor-invalid-1", "BANK_LINK_ITEM_NOT_FOUND"),
        ("processor-expired-1", "STORED_AUTH_INVALID"),
    ],
)
async def test_magic_processor_tokens_fail_the_link_synchronously(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str, token: str, expected: str
) -> None:
    resp = await partner.post(
        party, "/plaidAccount/link", {"processorToken": token, "partnerTransactionRef": "l2"}
    )
    assert resp.status_code == 400
    assert error_type(resp) == expected
    assert (await bakkt_sandbox.party(party))["bankAccount"] is None


async def test_unsupported_processor_token_is_accepted_then_fails_by_webhook(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    resp = await partner.post(
        party,
        "/plaidAccount/link",
        {"processorToken": "processor-unsupported-bank", "partnerTransactionRef": "l3"},
    )
    assert resp.status_code == 200
    [event] = [
        d["event"] for d in await bakkt_sandbox.webhooks("BANK_ACCOUNT_LINK", party_ref=party)
    ]
    assert (event["linkStatus"], event["reasonCode"], event["partnerTransactionRef"]) == (
        "FAILED",
        "UNSUPPORTED_FINANCIAL_INSTITUTION",
        "l3",
    )
    assert (await partner.transfer(party, 10)).json()["type"] == "BANK_ACCOUNT_NOT_FOUND"


async def test_plaid_link_validates_its_fields(partner: Partner, party: str) -> None:
    missing = await partner.post(party, "/plaidAccount/link", {"partnerTransactionRef": "l"})
    assert error_type(missing) == "INVALID_FIELD_VALUE"
    assert missing.json()["details"][0]["field"] == "processorToken"
    too_long = await partner.post(
        party, "/plaidAccount/link", {"processorToken": "t", "partnerTransactionRef": "x" * 256}
    )
    assert too_long.json()["details"][0]["field"] == "partnerTransactionRef"


async def test_ach_link_links_the_account_asynchronously(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    body = {
        "accountNumber": "000123456789",
        "accountType": "savings",
        "partnerTransactionRef": "ach-l",
        "routingNumber": "011000015",
    }
    resp = await partner.post(party, "/bankAccountLinking/ach", body)
    assert (resp.status_code, resp.json()) == (200, {"success": True})
    [event] = [
        d["event"] for d in await bakkt_sandbox.webhooks("BANK_ACCOUNT_LINK", party_ref=party)
    ]
    assert (event["linkStatus"], event["accountMask"], event["accountType"]) == (
        "LINKED",
        "6789",
        "SAVINGS",
    )
    assert (await partner.transfer(party, 10)).status_code == 200


async def test_ach_link_with_the_unsupported_routing_number_fails_by_webhook(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    body = {
        "accountNumber": "12345678",
        "accountType": "CHECKING",
        "partnerTransactionRef": "ach-u",
        "routingNumber": "999999999",
    }
    assert (await partner.post(party, "/bankAccountLinking/ach", body)).status_code == 200
    [event] = [
        d["event"] for d in await bakkt_sandbox.webhooks("BANK_ACCOUNT_LINK", party_ref=party)
    ]
    assert (event["linkStatus"], event["reasonCode"]) == (
        "FAILED",
        "UNSUPPORTED_FINANCIAL_INSTITUTION",
    )


@pytest.mark.parametrize(
    ("field", "value"), [("routingNumber", "12345"), ("accountNumber", "12ab"), ("accountType", "")]
)
async def test_ach_link_validates_bank_details(
    partner: Partner, party: str, field: str, value: str
) -> None:
    body = {
        "accountNumber": "12345678",
        "accountType": "CHECKING",
        "partnerTransactionRef": "ach-v",
        "routingNumber": "011000015",
        field: value,
    }
    resp = await partner.post(party, "/bankAccountLinking/ach", body)
    assert resp.status_code == 400
    assert resp.json()["details"][0]["field"] == field


async def test_manual_bank_account_links_with_a_bakkt_assigned_ref(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    resp = await partner.post(
        party,
        "/bankAccount",
        {
            "accountNumber": "99887766",
            "routingNumber": "011000015",
            "accountType": "CHECKING",
            "bankName": "My Bank",
        },
    )
    assert (resp.status_code, resp.json()) == (200, {"success": True})
    account = (await bakkt_sandbox.party(party))["bankAccount"]
    assert account is not None
    assert (account["bankName"], account["accountMask"], account["source"]) == (
        "My Bank",
        "7766",
        "manual",
    )
    assert account["partnerTransactionRef"].startswith("bakkt-manual-")


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("suspended-", "PARTY_SUSPENDED"),
        ("closed-", "PARTY_INVALID_OPERATION"),
        ("review-", "PARTY_INVALID_OPERATION"),
    ],
)
async def test_only_active_parties_may_link(partner: Partner, prefix: str, expected: str) -> None:
    resp = await partner.post(
        prefix + uuid.uuid4().hex[:6],
        "/plaidAccount/link",
        {"processorToken": "processor-sandbox-x", "partnerTransactionRef": "l"},
    )
    assert error_type(resp) == expected


async def test_current_unlink_answers_200_and_sends_unlinked(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    resp = await partner.post(
        linked_party,
        "/bankAccountLinking/unlink",
        {"instrumentType": "ACH", "partnerTransactionRef": "u-1"},
    )
    assert (resp.status_code, resp.json()) == (200, {"success": True})
    events = [
        d["event"]
        for d in await bakkt_sandbox.webhooks("BANK_ACCOUNT_LINK", party_ref=linked_party)
    ]
    assert (events[-1]["linkStatus"], events[-1]["partnerTransactionRef"]) == ("UNLINKED", "u-1")
    again = await partner.post(
        linked_party,
        "/bankAccountLinking/unlink",
        {"instrumentType": "ACH", "partnerTransactionRef": "u-2"},
    )
    assert error_type(again) == "LINKED_BANK_ACCOUNT_NOT_FOUND"


async def test_current_unlink_validates_its_body(partner: Partner, linked_party: str) -> None:
    bad_type = await partner.post(
        linked_party,
        "/bankAccountLinking/unlink",
        {"instrumentType": "CARD", "partnerTransactionRef": "u"},
    )
    assert bad_type.json()["details"][0]["field"] == "instrumentType"
    no_ref = await partner.post(
        linked_party, "/bankAccountLinking/unlink", {"instrumentType": "ACH"}
    )
    assert no_ref.json()["details"][0]["field"] == "partnerTransactionRef"
    wire = await partner.post(
        linked_party,
        "/bankAccountLinking/unlink",
        {"instrumentType": "WIRE", "partnerTransactionRef": "u"},
    )
    assert error_type(wire) == "LINKED_BANK_ACCOUNT_NOT_FOUND"


async def test_deprecated_unlink_answers_201(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    resp = await partner.post(linked_party, "/fiatAccount/unlink", {"instrumentType": "ACH"})
    assert (resp.status_code, resp.json()) == (201, {"success": True})
    assert (await bakkt_sandbox.party(linked_party))["bankAccount"] is None
    bad = await partner.post(linked_party, "/fiatAccount/unlink", {"instrumentType": "TPJ"})
    assert error_type(bad) == "INVALID_FIELD_VALUE"


# -- the hosted link page (A2) -------------------------------------------------------------------


async def create_link_url(partner: Partner, party: str, **body: Any) -> dict[str, Any]:
    resp = await partner.post(
        party, "/bankAccountLinking/linkUrl", {"partnerTransactionRef": "hosted-1", **body}
    )
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def test_link_url_page_links_and_redirects_with_ref_and_status(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    link = await create_link_url(partner, party, redirectUri="https://partner.example/done?x=1")
    assert link["linkUrl"].startswith(bakkt_sandbox.base_url + "/link/")
    assert link["expiresAt"].endswith("Z")
    page = await partner.http.get(link["linkUrl"])
    assert page.status_code == 200
    assert "hosted-1" in page.text
    assert re.search(r"<button name=bank value=checking>", page.text)
    done = await partner.http.post(link["linkUrl"], data={"bank": "checking"})
    assert done.status_code == 303
    location = urlsplit(done.headers["location"])
    assert (location.netloc, location.path) == ("partner.example", "/done")
    assert parse_qs(location.query) == {
        "x": ["1"],
        "partnerTransactionRef": ["hosted-1"],
        "status": ["LINKED"],
    }
    [event] = [
        d["event"] for d in await bakkt_sandbox.webhooks("BANK_ACCOUNT_LINK", party_ref=party)
    ]
    assert (event["linkStatus"], event["partnerTransactionRef"], event["accountMask"]) == (
        "LINKED",
        "hosted-1",
        "6789",
    )
    assert (await partner.transfer(party, 10)).status_code == 200


@pytest.mark.parametrize(
    ("choice", "reason"),
    [("unsupported", "UNSUPPORTED_FINANCIAL_INSTITUTION"), ("cancel", "USER_CANCELLED")],
)
async def test_link_page_failures_send_failed_and_show_a_page_without_redirect(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str, choice: str, reason: str
) -> None:
    link = await create_link_url(partner, party)
    done = await partner.http.post(link["linkUrl"], data={"bank": choice})
    assert done.status_code == 200
    assert "FAILED" in done.text
    [event] = [
        d["event"] for d in await bakkt_sandbox.webhooks("BANK_ACCOUNT_LINK", party_ref=party)
    ]
    assert (event["linkStatus"], event["reasonCode"]) == ("FAILED", reason)


async def test_a_link_url_works_once(partner: Partner, party: str) -> None:
    link = await create_link_url(partner, party)
    assert (await partner.http.post(link["linkUrl"], data={"bank": "savings"})).status_code == 200
    assert (await partner.http.get(link["linkUrl"])).status_code == 410
    assert (await partner.http.post(link["linkUrl"], data={"bank": "savings"})).status_code == 410


async def test_an_expired_link_url_is_gone() -> None:
    async with running_sandbox(time_scale=0, webhook_url="", link_url_ttl=0.01) as sb:
        async with http_client() as http:
            partner = await make_partner(sb, http)
            link = await create_link_url(partner, "p")
            await asyncio.sleep(0.05)
            assert (await http.get(link["linkUrl"])).status_code == 410


async def test_link_page_refuses_unknown_sessions_and_choices(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    assert (await partner.http.get(bakkt_sandbox.base_url + "/link/nope")).status_code == 404
    link = await create_link_url(partner, party)
    assert (await partner.http.post(link["linkUrl"], data={"bank": "piggy"})).status_code == 400


async def test_link_url_uses_the_public_url_setting() -> None:
    async with running_sandbox(
        time_scale=0, webhook_url="", public_url="https://bakkt.example/"
    ) as sb:
        async with http_client() as http:
            link = await create_link_url(await make_partner(sb, http), "p")
            assert link["linkUrl"].startswith("https://bakkt.example/link/")


@pytest.mark.parametrize(
    "redirect", ["javascript:x", "DATA:text/html,x", "vbscript:x", "file:///etc/passwd", "x", 7]
)
async def test_link_url_validates_the_redirect(
    partner: Partner, party: str, redirect: object
) -> None:
    resp = await partner.post(
        party,
        "/bankAccountLinking/linkUrl",
        {"partnerTransactionRef": "r", "redirectUri": redirect},
    )
    assert resp.status_code == 400
    assert resp.json()["details"][0]["field"] == "redirectUri"


async def test_link_url_page_redirects_to_an_apps_deep_link(partner: Partner, party: str) -> None:
    link = await create_link_url(partner, party, redirectUri="myapp://bank-linked")
    done = await partner.http.post(link["linkUrl"], data={"bank": "checking"})
    assert done.status_code == 303
    assert done.headers["location"] == (
        "myapp://bank-linked?partnerTransactionRef=hosted-1&status=LINKED"
    )


# -- transfer rules (A8) --------------------------------------------------------------------------


@pytest.mark.parametrize("amount", ["0", "-5", "10.005", "1e-3", '"10.00"', "true", "null", "NaN"])
async def test_amount_must_be_a_positive_number_with_at_most_two_places(
    partner: Partner, linked_party: str, amount: str
) -> None:
    resp = await partner.transfer(linked_party, amount)
    assert resp.status_code == 400
    assert error_type(resp) == "INVALID_FIELD_VALUE"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("currency", "EUR"),
        ("fiatTransactType", "deposit"),
        ("instrumentType", "CHECK"),
        ("partnerTransactionRef", ""),
        ("idempotencyKey", None),
        ("wireWithdrawDetails", "oops"),
    ],
)
async def test_transfer_fields_are_validated(
    partner: Partner, linked_party: str, field: str, value: Any
) -> None:
    resp = await partner.transfer(linked_party, 10, **{field: value})
    assert resp.status_code == 400
    assert error_type(resp) == "INVALID_FIELD_VALUE"
    assert resp.json()["details"][0]["field"] == field


async def test_ach_withdrawals_have_a_ten_dollar_minimum(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await bakkt_sandbox.credit(linked_party, 100)
    low = await partner.transfer(linked_party, 9.99, "WITHDRAW")
    assert error_type(low) == "INVALID_FIELD_VALUE"
    assert low.json()["description"] == "The amount is below the minimum withdrawal amount of $10."
    assert (await partner.transfer(linked_party, 10, "WITHDRAW")).status_code == 200


async def test_ach_needs_a_linked_bank_account(partner: Partner, party: str) -> None:
    assert error_type(await partner.transfer(party, 10)) == "BANK_ACCOUNT_NOT_FOUND"


@pytest.mark.parametrize("missing", ["wireRoutingNumber", "wireAccountNumber", "wireBankName"])
async def test_wire_withdrawals_need_routing_account_and_bank_name(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str, missing: str
) -> None:
    await bakkt_sandbox.credit(party, 100)
    details = {"wireRoutingNumber": "021000021", "wireAccountNumber": "1234", "wireBankName": "B"}
    del details[missing]
    resp = await partner.transfer(party, 50, "WITHDRAW", "WIRE", wireWithdrawDetails=details)
    assert error_type(resp) == "INVALID_FIELD_VALUE"
    assert resp.json()["details"][0]["field"] == f"wireWithdrawDetails.{missing}"


async def test_debit_transfers_are_not_allowed(partner: Partner, linked_party: str) -> None:
    assert (
        error_type(await partner.transfer(linked_party, 10, instrument="DEBIT"))
        == "OPERATION_NOT_ALLOWED"
    )


async def test_withdrawals_need_enough_settled_balance(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await partner.transfer(linked_party, 100, ref="unsettled")
    resp = await partner.transfer(linked_party, 50, "WITHDRAW")
    assert resp.status_code == 400
    assert error_type(resp) == "INSUFFICIENT_BALANCE"
    assert resp.json()["description"].endswith("for action of value 50 dollars")
    big = await partner.transfer(linked_party, 1234567.5, "WITHDRAW")
    assert big.json()["description"].endswith("for action of value 1234567.5 dollars")
    await bakkt_sandbox.settle("unsettled", linked_party)
    assert (await partner.transfer(linked_party, 50, "WITHDRAW")).status_code == 200


async def test_a_partner_transaction_ref_is_used_once_per_party(
    partner: Partner, linked_party: str
) -> None:
    assert (await partner.transfer(linked_party, 10, ref="once")).status_code == 200
    again = await partner.transfer(linked_party, 10, ref="once")
    assert again.json()["details"][0]["field"] == "partnerTransactionRef"


async def test_a_rejected_transfer_leaves_its_key_free(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    key = str(uuid.uuid4())
    assert (await partner.transfer(linked_party, 5, "WITHDRAW", key=key)).status_code == 400
    assert (await partner.transfer(linked_party, 5, key=key)).status_code == 200
    assert len(await bakkt_sandbox.transfers(idempotency_key=key)) == 1


@pytest.mark.parametrize(
    ("prefix", "direction", "expected"),
    [
        ("suspended-", "DEPOSIT", "PARTY_SUSPENDED"),
        ("suspended-", "WITHDRAW", "PARTY_SUSPENDED"),
        ("closed-", "DEPOSIT", "PARTY_INVALID_OPERATION"),
        ("closed-", "WITHDRAW", "PARTY_INVALID_OPERATION"),
        ("inactive-", "DEPOSIT", "PARTY_INVALID_OPERATION"),
        ("review-", "DEPOSIT", "PARTY_INVALID_OPERATION"),
        ("liquidated-", "DEPOSIT", "PARTY_INVALID_OPERATION"),
        ("unknown-", "DEPOSIT", "PARTY_ACCOUNT_NOT_FOUND"),
    ],
)
async def test_party_status_rules(
    partner: Partner, prefix: str, direction: str, expected: str
) -> None:
    resp = await partner.transfer(prefix + uuid.uuid4().hex[:6], 20, direction, "WIRE")
    assert resp.status_code == 400
    assert error_type(resp) == expected


async def test_a_liquidated_party_may_still_withdraw(
    bakkt_sandbox: RunningSandbox, partner: Partner
) -> None:
    party = "liquidated-" + uuid.uuid4().hex[:6]
    await bakkt_sandbox.credit(party, 100)
    details = {"wireRoutingNumber": "021000021", "wireAccountNumber": "1234", "wireBankName": "B"}
    resp = await partner.transfer(party, 100, "WITHDRAW", "WIRE", wireWithdrawDetails=details)
    assert resp.status_code == 200


# -- transactions (A3, A4), wire instructions, balance, KYC ---------------------------------------


async def test_unknown_transaction_is_transaction_not_found(partner: Partner, party: str) -> None:
    resp = await partner.get(party, "/transactions/never")
    assert resp.status_code == 400
    assert error_type(resp) == "TRANSACTION_NOT_FOUND"


async def test_transactions_are_paged_in_updated_at_then_ref_order(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    for i in range(7):
        await partner.transfer(linked_party, 10 + i, ref=f"pg-{i}")
    await bakkt_sandbox.settle("pg-2", linked_party)
    seen: list[dict[str, Any]] = []
    token = None
    pages = 0
    while True:
        params = {"pageSize": "3", **({"pageToken": token} if token else {})}
        body = (await partner.get(linked_party, "/transactions", params)).json()
        seen += body["transactions"]
        pages += 1
        token = body["nextPageToken"]
        if token is None:
            break
    assert pages == 3
    # updatedAt has millisecond resolution, so transfers made within one millisecond tie: the
    # expected order is computed from each transaction's own record, ties broken by ref
    # (docs/bakkt-contract.md A4), never assumed from the order the test made them in.
    records = [await partner.transaction(linked_party, f"pg-{i}") for i in range(7)]
    expected = sorted((r["updatedAt"], r["partnerTransactionRef"]) for r in records)
    assert [(t["updatedAt"], t["partnerTransactionRef"]) for t in seen] == expected
    settled = next(r for r in records if r["partnerTransactionRef"] == "pg-2")
    assert settled["updatedAt"] >= max(r["createdAt"] for r in records)


def test_equal_updated_at_pages_by_ref_with_nothing_lost_or_repeated() -> None:
    bank = Bank(SandboxSettings(time_scale=0, webhook_url=""), lambda _event: None)
    party = bank.party("tie-party")
    # One millisecond for all of them, in an insertion order that is not the ref order.
    for ref in ("tie-c", "tie-a", "tie-e", "tie-b", "tie-d"):
        party.transactions[ref] = Transaction(
            party.ref, ref, TxType.ACH_DEPOSIT, Decimal(10), TxStatus.PENDING, 1_000, 1_000
        )
    refs: list[str] = []
    token = None
    while True:
        page, token = bank.list_transactions(party.ref, None, set(), 2, token)
        refs += [tx.ref for tx in page]
        if token is None:
            break
    assert refs == ["tie-a", "tie-b", "tie-c", "tie-d", "tie-e"]


async def test_transactions_filter_by_status_and_updated_since(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    for ref in ("fs-1", "fs-2", "fs-3"):
        await partner.transfer(linked_party, 10, ref=ref)
    settled = await bakkt_sandbox.settle("fs-1", linked_party)
    # updatedAt has millisecond resolution and updatedSince is inclusive: the cancel must land in
    # a later millisecond than the settle (the sandbox runs on this machine's clock).
    settled_ms = parse_iso(settled["updatedAt"])
    while now_ms() <= settled_ms:  # noqa: ASYNC110 - no event signals the wall clock
        await asyncio.sleep(0.001)
    await bakkt_sandbox.cancel("fs-2", linked_party)
    by_status = await partner.get(
        linked_party, "/transactions", [("status", "COMPLETE"), ("status", "CANCELLED")]
    )
    assert sorted(t["partnerTransactionRef"] for t in by_status.json()["transactions"]) == [
        "fs-1",
        "fs-2",
    ]
    cancelled = (await partner.transaction(linked_party, "fs-2"))["updatedAt"]
    since = await partner.get(linked_party, "/transactions", {"updatedSince": cancelled})
    assert [t["partnerTransactionRef"] for t in since.json()["transactions"]] == ["fs-2"]


@pytest.mark.parametrize(
    "params",
    [
        {"pageSize": "0"},
        {"pageSize": "501"},
        {"pageSize": "x"},
        {"status": "DONE"},
        {"updatedSince": "yesterday"},
        {"pageToken": "%%%"},
    ],
)
async def test_transaction_list_parameters_are_validated(
    partner: Partner, party: str, params: dict[str, str]
) -> None:
    resp = await partner.get(party, "/transactions", params)
    assert resp.status_code == 400
    assert error_type(resp) == "INVALID_FIELD_VALUE"


async def test_wire_instructions_carry_a_stable_per_party_reference(
    partner: Partner, party: str
) -> None:
    first = (await partner.get(party, "/wire-instructions")).json()
    second = (await partner.get(party, "/wire-instructions")).json()
    other = (await partner.get(party + "-2", "/wire-instructions")).json()
    assert first == second
    assert first["wireReferenceNumber"] != other["wireReferenceNumber"]
    assert all(isinstance(v, str) and v for v in first.values())
    assert len(first) == 8


async def test_wire_instructions_refuse_a_party_that_cannot_deposit(partner: Partner) -> None:
    assert error_type(await partner.get("suspended-w", "/wire-instructions")) == "PARTY_SUSPENDED"


async def test_balance_is_an_array_with_two_place_numbers(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await bakkt_sandbox.credit(linked_party, "0.10")
    await partner.transfer(linked_party, "19.99")
    resp = await partner.get(linked_party, "/fiatAccount/balance")
    assert b'"settledAmount":0.1,' in resp.content
    assert resp.json() == [
        {
            "partnerPartyRef": linked_party,
            "currency": "USD",
            "settledAmount": 0.1,
            "unsettledAmount": 19.99,
        }
    ]


async def test_kyc_document_verification_details(partner: Partner, party: str) -> None:
    body = (await partner.get(party, "/kyc/documentVerificationDetails")).json()
    assert body["verificationURL"].startswith("https://")
    assert body["verificationURLExpiry"].endswith("Z")
