"""Linking (Bakkt's hosted page, a Plaid processor token), listing and unlinking bank accounts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bakkt_sandbox.testing import RunningSandbox
from tests.funding.conftest import TokenFactory
from tests.funding.helpers import Execute, key, link_account, with_key

ACCOUNT_FIELDS = {
    "id",
    "status",
    "linkMethod",
    "bankName",
    "accountMask",
    "accountType",
    "reasonCode",
    "needsReview",
    "current",
    "createdAt",
    "updatedAt",
}


@pytest.fixture
def headers(auth: TokenFactory, party: str) -> dict[str, str]:
    return auth(party)


async def account_row(sql: Execute, account_id: str) -> Any:
    result = await sql("SELECT * FROM bank_accounts WHERE id = :id", {"id": account_id})
    return result.mappings().one_or_none()


async def link_plaid(
    api: httpx.AsyncClient, party: str, headers: dict[str, str], token: str
) -> httpx.Response:
    return await api.post(
        f"/v1/parties/{party}/bank-accounts",
        json={"processorToken": token},
        headers=with_key(headers),
    )


# --- hosted link page ---------------------------------------------------------------------------


async def test_a_link_session_returns_bakkts_url_and_records_a_pending_account_by_its_ref(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
) -> None:
    response = await api.post(
        f"/v1/parties/{party}/link-sessions",
        json={"redirectUri": "https://app.example.com/linked"},
        headers=with_key(headers),
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"bankAccountId", "linkUrl", "expiresAt"}
    assert body["linkUrl"].startswith(sandbox.base_url + "/link/")
    assert datetime.fromisoformat(body["expiresAt"]) > datetime.now(UTC)
    stored = await account_row(sql, body["bankAccountId"])
    assert stored["status"] == "PENDING"
    assert stored["link_method"] == "HOSTED"
    # What Bakkt's BANK_ACCOUNT_LINK webhook will carry as partnerTransactionRef.
    assert stored["link_ref"] == body["bankAccountId"]


async def test_a_link_session_needs_no_body(
    api: httpx.AsyncClient, party: str, headers: dict[str, str]
) -> None:
    response = await api.post(f"/v1/parties/{party}/link-sessions", headers=with_key(headers))
    assert response.status_code == 201


async def test_a_link_session_replays_the_same_url_for_the_same_key(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    same = with_key(headers)
    first = await api.post(f"/v1/parties/{party}/link-sessions", json={}, headers=same)
    again = await api.post(f"/v1/parties/{party}/link-sessions", json={}, headers=same)
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    rows = await sql("SELECT count(*) FROM bank_accounts WHERE party_ref = :p", {"p": party})
    assert rows.scalar_one() == 1


async def test_a_link_session_takes_an_apps_deep_link_and_bakkt_sends_the_browser_back_to_it(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
) -> None:
    response = await api.post(
        f"/v1/parties/{party}/link-sessions",
        json={"redirectUri": "myapp://bank-linked"},
        headers=with_key(headers),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    async with httpx.AsyncClient() as browser:
        done = await browser.post(body["linkUrl"], data={"bank": "checking"})
    assert done.status_code == 303
    location = urlsplit(done.headers["location"])
    assert (location.scheme, location.netloc) == ("myapp", "bank-linked")
    assert parse_qs(location.query) == {
        "partnerTransactionRef": [body["bankAccountId"]],
        "status": ["LINKED"],
    }


@pytest.mark.parametrize(
    "redirect",
    [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox(1)",
        "file:///etc/passwd",
        "blob:https://x.example/1",
        "about:blank",
        "ftp://files.example/x",
        "not a url",
        "/relative/path",
        42,
    ],
)
async def test_a_link_session_refuses_a_redirect_a_browser_would_run_or_read_locally(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str], redirect: Any
) -> None:
    response = await api.post(
        f"/v1/parties/{party}/link-sessions",
        json={"redirectUri": redirect},
        headers=with_key(headers),
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "validation_failed"
    assert problem["errors"][0]["name"] == "redirectUri"
    if isinstance(redirect, str):
        assert redirect not in response.text
    rows = await sql("SELECT count(*) FROM bank_accounts WHERE party_ref = :p", {"p": party})
    assert rows.scalar_one() == 0


async def test_a_suspended_party_may_not_link(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    await sql("INSERT INTO parties (party_ref, status) VALUES (:p, 'SUSPENDED')", {"p": party})
    for path, body in (("link-sessions", {}), ("bank-accounts", {"processorToken": "processor-x"})):
        response = await api.post(
            f"/v1/parties/{party}/{path}", json=body, headers=with_key(headers)
        )
        assert response.status_code == 403
        assert response.json()["code"] == "party_suspended"
    rows = await sql("SELECT count(*) FROM bank_accounts WHERE party_ref = :p", {"p": party})
    assert rows.scalar_one() == 0


async def test_bakkt_down_for_a_link_session_answers_503_and_leaves_nothing_behind(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
) -> None:
    await sandbox.set_fault("generateLinkUrl", "error", status=503)
    same = with_key(headers)
    response = await api.post(f"/v1/parties/{party}/link-sessions", json={}, headers=same)
    assert response.status_code == 503
    assert response.json()["code"] == "bakkt_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    rows = await sql("SELECT count(*) FROM bank_accounts WHERE party_ref = :p", {"p": party})
    assert rows.scalar_one() == 0
    await sandbox.clear_faults()
    retried = await api.post(f"/v1/parties/{party}/link-sessions", json={}, headers=same)
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers


# --- Plaid processor token ----------------------------------------------------------------------


async def test_a_plaid_link_is_pending_until_bakkts_webhook_and_the_token_is_kept_nowhere(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
) -> None:
    token = f"processor-sandbox-{uuid.uuid4().hex}"
    response = await link_plaid(api, party, headers, token)
    assert response.status_code == 202
    body = response.json()
    assert set(body) == ACCOUNT_FIELDS
    assert (body["status"], body["linkMethod"]) == ("PENDING", "PLAID")
    assert body["bankName"] is None
    assert body["accountMask"] is None
    assert token not in response.text
    sandbox_party = await sandbox.party(party)
    assert sandbox_party["bankAccount"]["partnerTransactionRef"] == body["id"]
    stored = await sql(
        "SELECT concat((SELECT string_agg(b::text, '') FROM bank_accounts b WHERE party_ref = :p),"
        " (SELECT string_agg(k::text, '') FROM idempotency_keys k WHERE party_ref = :p),"
        " (SELECT string_agg(p::text, '') FROM parties p WHERE party_ref = :p))",
        {"p": party},
    )
    assert token not in stored.scalar_one()


@pytest.mark.parametrize(
    ("token", "status", "code"),
    [
        ("processor-invalid-1", 422, "invalid_processor_token"),
        ("processor-expired-1", 422, "invalid_processor_token"),
        ("processor-unsupported-sync-1", 422, "unsupported_bank"),
    ],
)
async def test_bakkts_link_rejections_fail_the_account_with_a_clear_code(
    api: httpx.AsyncClient,
    sql: Execute,
    party: str,
    headers: dict[str, str],
    token: str,
    status: int,
    code: str,
) -> None:
    same = with_key(headers)
    body = {"processorToken": token}
    response = await api.post(f"/v1/parties/{party}/bank-accounts", json=body, headers=same)
    assert response.status_code == status
    problem = response.json()
    assert problem["code"] == code
    assert token not in response.text
    stored = await account_row(sql, problem["bankAccountId"])
    assert (stored["status"], stored["reason_code"]) == ("FAILED", code)
    replay = await api.post(f"/v1/parties/{party}/bank-accounts", json=body, headers=same)
    assert replay.status_code == status
    assert replay.json() == problem
    assert replay.headers["idempotent-replayed"] == "true"


async def test_a_5xx_on_a_plaid_link_keeps_the_account_pending_for_its_webhook(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
) -> None:
    # A link carries no idempotency key at Bakkt, so after a 5xx it is not resent: it may have
    # been carried out, and Bakkt's webhook will say.
    await sandbox.set_fault("addBankAccount", "error", status=502)
    response = await link_plaid(api, party, headers, "processor-5xx")
    assert response.status_code == 202
    assert response.json()["status"] == "PENDING"
    faults = await sandbox.faults()
    assert faults[0]["hits"] == 1


async def test_a_rate_limited_plaid_link_answers_503_and_forgets_the_attempt(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
) -> None:
    await sandbox.set_fault("addBankAccount", "rate_limit", retry_after=60)
    response = await link_plaid(api, party, headers, "processor-429")
    assert response.status_code == 503
    assert response.json()["code"] == "bakkt_unavailable"
    assert response.headers["retry-after"] == "60"
    rows = await sql("SELECT count(*) FROM bank_accounts WHERE party_ref = :p", {"p": party})
    assert rows.scalar_one() == 0


# --- account details ---------------------------------------------------------------------------

DETAILS = {"routingNumber": "011000015", "accountNumber": "123456789", "accountType": "SAVINGS"}


async def test_an_account_details_link_is_pending_with_its_mask_and_sent_to_bakkt_once(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
) -> None:
    same = with_key(headers)
    response = await api.post(f"/v1/parties/{party}/bank-accounts", json=DETAILS, headers=same)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["status"], body["linkMethod"], body["current"]) == (
        "PENDING",
        "ACCOUNT_DETAILS",
        False,
    )
    assert (body["accountMask"], body["accountType"]) == ("6789", "SAVINGS")
    assert DETAILS["accountNumber"] not in response.text
    replay = await api.post(f"/v1/parties/{party}/bank-accounts", json=DETAILS, headers=same)
    assert replay.json() == body
    assert replay.headers["idempotent-replayed"] == "true"
    at_bakkt = (await sandbox.party(party))["bankAccount"]
    assert at_bakkt is not None
    assert at_bakkt["partnerTransactionRef"] == body["id"]
    rows = await sql("SELECT count(*) FROM bank_accounts WHERE party_ref = :p", {"p": party})
    assert rows.scalar_one() == 1


async def test_a_routing_number_failing_the_aba_checksum_is_refused_and_nothing_is_sent(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
) -> None:
    bad = {**DETAILS, "routingNumber": "011000016"}
    response = await api.post(
        f"/v1/parties/{party}/bank-accounts", json=bad, headers=with_key(headers)
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "validation_failed"
    assert [(e["name"], e["code"]) for e in problem["errors"]] == [
        ("routingNumber", "routing_number_checksum")
    ]
    assert DETAILS["accountNumber"] not in response.text
    rows = await sql("SELECT count(*) FROM bank_accounts WHERE party_ref = :p", {"p": party})
    assert rows.scalar_one() == 0
    assert (await sandbox.party(party))["bankAccount"] is None


# --- the party ---------------------------------------------------------------------------------


async def test_a_party_bakkt_said_nothing_about_reads_as_active_and_no_row_is_made(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    response = await api.get(f"/v1/parties/{party}", headers=headers)
    assert response.status_code == 200
    assert response.json() == {
        "partyRef": party,
        "status": "ACTIVE",
        "reasonCode": None,
        "reasonMeaning": None,
        "reasonEffect": None,
        "statusChangedAt": None,
        "allowed": {"deposit": True, "withdraw": True, "linkBankAccount": True},
        "verificationUrl": None,
        "verificationUrlExpiresAt": None,
        "currentBankAccount": None,
    }
    rows = await sql("SELECT count(*) FROM parties WHERE party_ref = :p", {"p": party})
    assert rows.scalar_one() == 0


# --- list ---------------------------------------------------------------------------------------


async def test_the_list_shows_the_partys_own_accounts_newest_first(
    api: httpx.AsyncClient, sql: Execute, auth: TokenFactory, party: str, headers: dict[str, str]
) -> None:
    first = await link_account(api, sql, party, headers)
    second = (await link_plaid(api, party, headers, "processor-second")).json()["id"]
    other = f"p-{uuid.uuid4().hex[:12]}"
    await link_account(api, sql, other, auth(other))
    response = await api.get(f"/v1/parties/{party}/bank-accounts", headers=headers)
    assert response.status_code == 200
    items = response.json()["items"]
    assert [i["id"] for i in items] == [second, first]
    assert items[1]["status"] == "LINKED"
    assert items[1]["accountMask"] == "1234"


async def test_a_party_without_accounts_gets_an_empty_list_and_no_row_is_created(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    response = await api.get(f"/v1/parties/{party}/bank-accounts", headers=headers)
    assert response.json() == {"items": []}
    rows = await sql("SELECT count(*) FROM parties WHERE party_ref = :p", {"p": party})
    assert rows.scalar_one() == 0


# --- unlink -------------------------------------------------------------------------------------


async def test_unlinking_a_linked_account_unlinks_it_at_bakkt_and_stops_ach(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
) -> None:
    account_id = await link_account(api, sql, party, headers)
    same = with_key(headers)
    response = await api.delete(f"/v1/parties/{party}/bank-accounts/{account_id}", headers=same)
    assert response.status_code == 200
    assert response.json()["status"] == "UNLINKED"
    assert (await sandbox.party(party))["bankAccount"] is None
    replay = await api.delete(f"/v1/parties/{party}/bank-accounts/{account_id}", headers=same)
    assert replay.json() == response.json()
    assert replay.headers["idempotent-replayed"] == "true"
    deposit = await api.post(
        f"/v1/parties/{party}/deposits", json={"amount": "10.00"}, headers=with_key(headers)
    )
    assert deposit.json()["code"] == "no_linked_bank_account"


async def test_unlinking_an_account_bakkt_no_longer_holds_still_unlinks_it_here(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
) -> None:
    account_id = await link_account(api, sql, party, headers)
    await api.delete(
        f"/v1/parties/{party}/bank-accounts/{account_id}", headers=with_key(headers)
    )  # Bakkt forgets it
    await sql("UPDATE bank_accounts SET status = 'LINKED' WHERE id = :id", {"id": account_id})
    response = await api.delete(
        f"/v1/parties/{party}/bank-accounts/{account_id}", headers=with_key(headers)
    )
    assert response.status_code == 200
    assert response.json()["status"] == "UNLINKED"


async def test_unlinking_an_unknown_or_foreign_account_answers_404(
    api: httpx.AsyncClient, sql: Execute, auth: TokenFactory, party: str, headers: dict[str, str]
) -> None:
    other = f"p-{uuid.uuid4().hex[:12]}"
    foreign = await link_account(api, sql, other, auth(other))
    for account_id in (str(uuid.uuid4()), foreign):
        response = await api.delete(
            f"/v1/parties/{party}/bank-accounts/{account_id}", headers=with_key(headers)
        )
        assert response.status_code == 404
        assert response.json()["code"] == "bank_account_not_found"
    assert (await account_row(sql, foreign))["status"] == "LINKED"


async def test_unlinking_a_pending_link_answers_409(
    api: httpx.AsyncClient, party: str, headers: dict[str, str]
) -> None:
    pending = (await link_plaid(api, party, headers, "processor-pending")).json()["id"]
    response = await api.delete(
        f"/v1/parties/{party}/bank-accounts/{pending}", headers=with_key(headers)
    )
    assert response.status_code == 409
    assert response.json()["code"] == "bank_account_link_pending"


async def test_unlinking_a_failed_link_changes_nothing_and_does_not_call_bakkt(
    api: httpx.AsyncClient, sandbox: RunningSandbox, party: str, headers: dict[str, str]
) -> None:
    failed = (await link_plaid(api, party, headers, "processor-invalid-x")).json()["bankAccountId"]
    await sandbox.set_fault("unlinkBankAccount", "error", status=500)
    response = await api.delete(
        f"/v1/parties/{party}/bank-accounts/{failed}", headers=with_key(headers)
    )
    assert response.status_code == 200
    assert response.json()["status"] == "FAILED"
    assert (await sandbox.faults())[0]["seen"] == 0


async def test_unlinking_while_bakkt_is_down_answers_503_and_keeps_the_account(
    api: httpx.AsyncClient,
    sql: Execute,
    sandbox: RunningSandbox,
    party: str,
    headers: dict[str, str],
) -> None:
    account_id = await link_account(api, sql, party, headers)
    await sandbox.set_fault("unlinkBankAccount", "error", status=503)
    same = {**headers, "Idempotency-Key": key()}
    response = await api.delete(f"/v1/parties/{party}/bank-accounts/{account_id}", headers=same)
    assert response.status_code == 503
    assert response.json()["code"] == "bakkt_unavailable"
    assert (await account_row(sql, account_id))["status"] == "LINKED"
    await sandbox.clear_faults()
    retried = await api.delete(f"/v1/parties/{party}/bank-accounts/{account_id}", headers=same)
    assert retried.status_code == 200
    assert retried.json()["status"] == "UNLINKED"


async def test_a_malformed_bank_account_id_answers_422(
    api: httpx.AsyncClient, party: str, headers: dict[str, str]
) -> None:
    response = await api.delete(
        f"/v1/parties/{party}/bank-accounts/not-a-uuid", headers=with_key(headers)
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["name"] == "bankAccountId"


async def test_a_link_refused_for_our_set_ups_fault_answers_502_and_keeps_nothing(
    api_with: Any, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    misconfigured = await api_with(bakkt_partner_id=str(uuid.uuid4()))
    for path, body in (("link-sessions", {}), ("bank-accounts", {"processorToken": "processor-x"})):
        response = await misconfigured.post(
            f"/v1/parties/{party}/{path}", json=body, headers=with_key(headers)
        )
        assert response.status_code == 502
        assert response.json()["code"] == "bakkt_misconfigured"
    for table in ("bank_accounts", "idempotency_keys"):
        rows = await sql(f"SELECT count(*) FROM {table} WHERE party_ref = :p", {"p": party})  # noqa: S608
        assert rows.scalar_one() == 0
