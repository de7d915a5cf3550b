"""End to end through the sandbox's webhooks (issue 13): one current bank account per party,
linking by account details, and the party's status as an app reads it."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.funding.party_status import REASONS, allowed
from bakkt_sandbox.testing import RunningSandbox, running_sandbox
from tests.webhooks.test_sandbox_e2e import FAST_RETRIES, Service, eventually, serving

ROUTING = "011000015"  # a valid ABA checksum


@pytest.fixture
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(
        time_scale=0, webhook_url="", webhook_retry_schedule=FAST_RETRIES, webhook_timeout=5.0
    ) as sb:
        yield sb


@pytest.fixture
async def service(
    sandbox: RunningSandbox, settings: Settings, engine: AsyncEngine
) -> AsyncIterator[Service]:
    app_settings = settings.model_copy(update={"bakkt_base_url": sandbox.base_url})
    async with serving(app_settings, engine) as svc:
        await sandbox.set_webhook_mode(url=svc.webhook_url)
        yield svc


def new_party() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"


async def account_status(service: Service, party: str, account_id: str) -> str | None:
    for account in (await service.get(party, "/bank-accounts"))["items"]:
        if account["id"] == account_id:
            return str(account["status"])
    return None


async def link_and_wait(
    service: Service, party: str, body: dict[str, Any], until: str = "LINKED"
) -> tuple[str, list[httpx.Response]]:
    response = await service.post(party, "/bank-accounts", body)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "PENDING"
    account_id = str(response.json()["id"])

    async def settled() -> bool:
        return await account_status(service, party, account_id) == until

    await eventually(settled)
    return account_id, [response]


def plaid() -> dict[str, str]:
    return {"processorToken": f"processor-sandbox-{uuid.uuid4().hex}"}


def details(number: str = "99990000") -> dict[str, str]:
    return {"routingNumber": ROUTING, "accountNumber": number, "accountType": "CHECKING"}


# --- one current account --------------------------------------------------------------------


async def test_a_second_link_supersedes_the_first_and_every_later_transfer_uses_it(
    service: Service, sandbox: RunningSandbox, engine: AsyncEngine
) -> None:
    party = new_party()
    first, _ = await link_and_wait(service, party, plaid())
    second, _ = await link_and_wait(service, party, details())

    items = {a["id"]: a for a in (await service.get(party, "/bank-accounts"))["items"]}
    assert (items[first]["status"], items[first]["current"]) == ("REPLACED", False)
    assert (items[second]["status"], items[second]["current"]) == ("LINKED", True)
    history = (await service.get(party, f"/bank-accounts/{first}"))["history"]
    assert [(h["from"], h["to"], h["source"]) for h in history] == [
        (None, "PENDING", "api"),
        ("PENDING", "LINKED", "webhook"),
        ("LINKED", "REPLACED", "webhook"),
    ]
    party_view = await service.get(party, "")
    assert party_view["currentBankAccount"]["id"] == second

    await sandbox.credit(party, "100.00")
    implicit = await service.post(party, "/deposits", {"amount": "25.00"})
    named = await service.post(party, "/deposits", {"amount": "26.00", "bankAccountId": second})
    withdrawal = await service.post(party, "/withdrawals", {"method": "ACH", "amount": "20.00"})
    assert [r.status_code for r in (implicit, named, withdrawal)] == [202, 202, 202], (
        withdrawal.text
    )
    refused = await service.post(party, "/deposits", {"amount": "27.00", "bankAccountId": first})
    assert refused.status_code == 409
    problem = refused.json()
    assert (problem["code"], problem["currentBankAccountId"]) == ("bank_account_replaced", second)

    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT bank_account_id::text FROM transactions WHERE party_ref = :p"),
            {"p": party},
        )
        assert [r[0] for r in rows] == [second, second, second]
    # Bakkt's ledger agrees: the transfers moved through the account we recorded.
    assert {t["bankAccountRef"] for t in await sandbox.transfers(party)} == {second}


async def test_unlink_acts_on_the_current_account_only_and_the_sandbox_agrees(
    service: Service, sandbox: RunningSandbox
) -> None:
    party = new_party()
    first, _ = await link_and_wait(service, party, plaid())
    second, _ = await link_and_wait(service, party, plaid())

    older = await service.http.delete(
        f"/v1/parties/{party}/bank-accounts/{first}",
        headers={**service.auth(party), "Idempotency-Key": f"key-{uuid.uuid4()}"},
    )
    assert older.status_code == 200, older.text
    assert older.json()["status"] == "REPLACED"
    at_bakkt = (await sandbox.party(party))["bankAccount"]
    assert at_bakkt is not None
    assert at_bakkt["partnerTransactionRef"] == second
    assert await account_status(service, party, second) == "LINKED"

    current = await service.http.delete(
        f"/v1/parties/{party}/bank-accounts/{second}",
        headers={**service.auth(party), "Idempotency-Key": f"key-{uuid.uuid4()}"},
    )
    assert current.status_code == 200, current.text
    assert current.json()["status"] == "UNLINKED"
    assert (await sandbox.party(party))["bankAccount"] is None
    statuses = {a["id"]: a["status"] for a in (await service.get(party, "/bank-accounts"))["items"]}
    assert statuses == {first: "REPLACED", second: "UNLINKED"}
    refused = await service.post(party, "/deposits", {"amount": "10.00"})
    assert (refused.status_code, refused.json()["code"]) == (409, "no_linked_bank_account")


# --- linking by account details ---------------------------------------------------------------


async def _text_in_database(engine: AsyncEngine, needle: str) -> list[str]:
    """Every text, JSON and byte column of every table in the schema that holds `needle`."""
    found = []
    async with engine.connect() as conn:
        columns = await conn.execute(
            text(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' AND data_type IN "
                "('text', 'character varying', 'character', 'json', 'jsonb', 'bytea')"
            )
        )
        for table, column, data_type in columns.all():
            if data_type == "bytea":
                condition = f"position(convert_to(:n, 'UTF8') in \"{column}\") > 0"
            else:
                condition = f"\"{column}\"::text LIKE '%' || :n || '%'"
            hits = await conn.execute(
                text(f'SELECT count(*) FROM "{table}" WHERE {condition}'),  # noqa: S608
                {"n": needle},
            )
            if hits.scalar_one():
                found.append(f"{table}.{column}")
    return found


async def test_linking_by_account_details_keeps_the_account_number_nowhere(
    service: Service,
    sandbox: RunningSandbox,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    party = new_party()
    # Distinct enough that no other row or log line can hold it by chance.
    number = "7" + "".join(secrets.choice("0123456789") for _ in range(15))
    caplog.set_level(logging.DEBUG)
    account_id, responses = await link_and_wait(service, party, details(number))
    listing = await service.http.get(
        f"/v1/parties/{party}/bank-accounts", headers=service.auth(party)
    )
    detail = await service.http.get(
        f"/v1/parties/{party}/bank-accounts/{account_id}", headers=service.auth(party)
    )
    party_view = await service.http.get(f"/v1/parties/{party}", headers=service.auth(party))
    deposit = await service.post(party, "/deposits", {"amount": "12.00"})
    responses += [listing, detail, party_view, deposit]

    account = detail.json()
    assert (account["status"], account["linkMethod"]) == ("LINKED", "ACCOUNT_DETAILS")
    assert (account["accountMask"], account["accountType"]) == (number[-4:], "CHECKING")
    assert deposit.status_code == 202
    for response in responses:
        assert number not in response.text
    assert await _text_in_database(engine, number) == []
    assert number not in caplog.text
    assert all(number not in str(record.args) for record in caplog.records)


async def test_an_account_details_link_bakkt_cannot_verify_ends_failed(
    service: Service, sandbox: RunningSandbox
) -> None:
    party = new_party()
    account_id, _ = await link_and_wait(service, party, details("99990001"), until="FAILED")
    account = await service.get(party, f"/bank-accounts/{account_id}")
    assert account["reasonCode"] == "ACCOUNT_VERIFICATION_FAILED"
    assert [h["to"] for h in account["history"]] == ["PENDING", "FAILED"]
    assert (await sandbox.party(party))["bankAccount"] is None


# --- the party's status -------------------------------------------------------------------------


async def test_the_party_route_explains_every_reason_code_of_bakkts_guide(
    service: Service, sandbox: RunningSandbox
) -> None:
    for code, reason in REASONS.items():
        party = new_party()
        # The sandbox implies the status of the guide's table; LIQUIDATED is not in it.
        status = "LIQUIDATED" if code == "LIQUIDATED" else None
        record = await sandbox.set_party_status(party, status, code)

        async def applied(party: str = party, code: str = code) -> bool:
            return bool((await service.get(party, ""))["reasonCode"] == code)

        await eventually(applied)
        view = await service.get(party, "")
        may = allowed(record["partyStatus"])
        assert view["status"] == record["partyStatus"], code
        assert (view["reasonMeaning"], view["reasonEffect"]) == (reason.meaning, reason.effect)
        assert view["allowed"] == {
            "deposit": may.deposit,
            "withdraw": may.withdraw,
            "linkBankAccount": may.link,
        }, code
        assert view["statusChangedAt"] is not None
        if code != "DOCUMENT_VERIFICATION":
            assert view["verificationUrl"] is None


async def test_document_verification_shows_its_url_and_expiry_and_gates_with_them(
    service: Service, sandbox: RunningSandbox
) -> None:
    party = new_party()
    expiry = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    url = f"https://verify.example/{uuid.uuid4().hex}"
    await sandbox.set_party_status(
        party,
        reason_code="DOCUMENT_VERIFICATION",
        verification_url=url,
        verification_url_expiry=expiry.isoformat(),
    )

    async def applied() -> bool:
        return bool((await service.get(party, ""))["reasonCode"] == "DOCUMENT_VERIFICATION")

    await eventually(applied)
    view = await service.get(party, "")
    assert view["status"] == "UNDER_REVIEW"
    assert view["verificationUrl"] == url
    assert datetime.fromisoformat(view["verificationUrlExpiresAt"]) == expiry
    assert view["allowed"] == {"deposit": False, "withdraw": False, "linkBankAccount": False}

    refused = await service.post(party, "/bank-accounts", plaid())
    assert refused.status_code == 403
    problem = refused.json()
    assert problem["reasonCode"] == "DOCUMENT_VERIFICATION"
    assert problem["reasonMeaning"] == REASONS["DOCUMENT_VERIFICATION"].meaning
    assert problem["verificationUrl"] == url

    # Any later status event ends the old upload page.
    await sandbox.set_party_status(party, "ACTIVE", "ENROLLMENT")

    async def enrolled() -> bool:
        return bool((await service.get(party, ""))["reasonCode"] == "ENROLLMENT")

    await eventually(enrolled)
    view = await service.get(party, "")
    assert (view["verificationUrl"], view["verificationUrlExpiresAt"]) == (None, None)


async def test_an_unknown_reason_code_is_kept_shown_raw_and_alerted(
    service: Service, sandbox: RunningSandbox, engine: AsyncEngine
) -> None:
    party = new_party()
    await sandbox.set_party_status(party, "SUSPENDED", "BRAND_NEW_REASON")

    async def applied() -> bool:
        return bool((await service.get(party, ""))["reasonCode"] == "BRAND_NEW_REASON")

    await eventually(applied)
    view = await service.get(party, "")
    assert view["status"] == "SUSPENDED"
    assert (view["reasonMeaning"], view["reasonEffect"]) == (None, None)
    refused = await service.post(party, "/deposits", {"amount": "10.00"})
    assert refused.status_code == 403
    assert refused.json()["reasonCode"] == "BRAND_NEW_REASON"
    assert "reasonMeaning" not in refused.json()
    async with engine.connect() as conn:
        alerts = await conn.execute(
            text("SELECT data ->> 'reasonCode' FROM operator_alerts WHERE subject = :s"),
            {"s": f"party {party}"},
        )
        assert [r[0] for r in alerts] == ["BRAND_NEW_REASON"]
