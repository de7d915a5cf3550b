"""A hosted-link bank account left PENDING by an abandoned link page (issue 12): the link URL's
`expiresAt` is stored with the account, and past it plus HOSTED_LINK_EXPIRY_MARGIN the recovery
job FAILs it with reason `link_expired` and a history row. The job is handed the clock; nothing
sleeps."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from app.config import Settings
from app.core.metrics import Metrics
from app.db import create_session_factory
from app.recovery.links import expire_abandoned_links
from tests.funding.conftest import TokenFactory
from tests.funding.helpers import Execute, with_key


@pytest.fixture
def factory(connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    made = create_session_factory(connection)  # type: ignore[arg-type]
    made.configure(join_transaction_mode="create_savepoint")
    return made


async def _account(sql: Execute, account_id: str) -> tuple[str, str | None, datetime | None]:
    row = (
        await sql(
            "SELECT status, reason_code, link_expires_at FROM bank_accounts WHERE id = :id",
            {"id": uuid.UUID(account_id)},
        )
    ).one()
    return row[0], row[1], row[2]


async def _history(sql: Execute, account_id: str) -> list[tuple[str, str, str, str | None]]:
    rows = await sql(
        "SELECT from_status, to_status, source, reason_code FROM bank_account_history "
        "WHERE bank_account_id = :id ORDER BY id",
        {"id": uuid.UUID(account_id)},
    )
    return [tuple(r) for r in rows.all()]


async def _link_session(
    api: httpx.AsyncClient, party: str, headers: dict[str, str]
) -> dict[str, str]:
    response = await api.post(
        f"/v1/parties/{party}/link-sessions", json={}, headers=with_key(headers)
    )
    assert response.status_code == 201
    body: dict[str, str] = response.json()
    return body


async def test_an_abandoned_hosted_link_is_failed_after_its_expiry_plus_the_margin_with_history(
    api: httpx.AsyncClient,
    sql: Execute,
    factory: async_sessionmaker[AsyncSession],
    api_settings: Settings,
    auth: TokenFactory,
    party: str,
) -> None:
    body = await _link_session(api, party, auth(party))
    account_id = body["bankAccountId"]
    status, _, expires_at = await _account(sql, account_id)
    assert status == "PENDING"
    assert expires_at == datetime.fromisoformat(body["expiresAt"])
    margin = timedelta(seconds=api_settings.hosted_link_expiry_margin)
    metrics = Metrics()

    # Past the page's expiry but within the margin: the consumer may still be on the page.
    within = expires_at + margin - timedelta(seconds=1)
    await expire_abandoned_links(factory, api_settings, now=within, batch=1000, metrics=metrics)
    assert (await _account(sql, account_id))[:2] == ("PENDING", None)
    # Only the row of its creation so far.
    created = (None, "PENDING", "api", None)
    assert await _history(sql, account_id) == [created]

    past = expires_at + margin + timedelta(seconds=1)
    await expire_abandoned_links(factory, api_settings, now=past, batch=1000, metrics=metrics)

    assert (await _account(sql, account_id))[:2] == ("FAILED", "link_expired")
    assert await _history(sql, account_id) == [
        created,
        ("PENDING", "FAILED", "sync", "link_expired"),
    ]
    assert metrics.value("recovery_links_expired_total") >= 1
    listed = await api.get(f"/v1/parties/{party}/bank-accounts", headers=auth(party))
    [item] = [a for a in listed.json()["items"] if a["id"] == account_id]
    assert (item["status"], item["reasonCode"]) == ("FAILED", "link_expired")
    # Once FAILED it is not looked at again: no further history row.
    await expire_abandoned_links(factory, api_settings, now=past, batch=1000, metrics=metrics)
    assert len(await _history(sql, account_id)) == 2


async def test_only_pending_hosted_links_expire(
    api: httpx.AsyncClient,
    sql: Execute,
    factory: async_sessionmaker[AsyncSession],
    api_settings: Settings,
    auth: TokenFactory,
    party: str,
) -> None:
    linked = (await _link_session(api, party, auth(party)))["bankAccountId"]
    plaid = (await _link_session(api, party, auth(party)))["bankAccountId"]
    # Bakkt's webhook linked the first; the second stands for a Plaid link awaiting its webhook.
    await sql(
        "UPDATE bank_accounts SET status = 'LINKED' WHERE id = :id", {"id": uuid.UUID(linked)}
    )
    await sql(
        "UPDATE bank_accounts SET link_method = 'PLAID' WHERE id = :id", {"id": uuid.UUID(plaid)}
    )
    _, _, expires_at = await _account(sql, linked)
    assert expires_at is not None
    far = expires_at + timedelta(days=30)

    await expire_abandoned_links(factory, api_settings, now=far, batch=1000)

    assert (await _account(sql, linked))[0] == "LINKED"
    assert (await _account(sql, plaid))[0] == "PENDING"
    # Neither gained a row beyond the one of its creation.
    created = [(None, "PENDING", "api", None)]
    assert await _history(sql, linked) == await _history(sql, plaid) == created
