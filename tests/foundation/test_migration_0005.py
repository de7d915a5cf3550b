"""Migration 0005 carries a party with several LINKED bank accounts to one current account."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import migrate
from tests.foundation.test_migrations import empty_engine

__all__ = ["empty_engine"]


async def test_the_newest_linked_account_stays_linked_and_the_others_are_replaced(
    empty_engine: AsyncEngine,
) -> None:
    engine = empty_engine
    await migrate.upgrade_async(engine, "0004")
    oldest, middle, newest, failed = (uuid.uuid4() for _ in range(4))
    linked_at = {
        oldest: datetime(2026, 1, 1, tzinfo=UTC),
        middle: datetime(2026, 2, 1, tzinfo=UTC),
        newest: datetime(2026, 3, 1, tzinfo=UTC),
    }
    body = {
        "partnerWebhookType": "PARTY_EVENT",
        "reasonCode": "DOCUMENT_VERIFICATION",
        "verificationURL": "https://verify.example/abc",
        "verificationURLExpiry": "2026-12-24T00:00:00+00:00",
    }
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO parties (party_ref, status, status_reason) VALUES "
                "('p-many', 'UNDER_REVIEW', 'DOCUMENT_VERIFICATION'), ('p-one', 'ACTIVE', NULL)"
            )
        )
        for account_id, at in linked_at.items():
            await conn.execute(
                text(
                    "INSERT INTO bank_accounts (id, party_ref, link_ref, link_method, status, "
                    "status_event_time) VALUES (:id, 'p-many', :ref, 'PLAID', 'LINKED', "
                    ":at)"
                ),
                {"id": account_id, "ref": str(account_id), "at": at},
            )
        await conn.execute(
            text(
                "INSERT INTO bank_accounts (id, party_ref, link_ref, link_method, status) "
                "VALUES (:id, 'p-one', :ref, 'PLAID', 'FAILED')"
            ),
            {"id": failed, "ref": str(failed)},
        )
        await conn.execute(
            text(
                "INSERT INTO webhook_events (request_id, event_type, party_ref, body, headers, "
                "received_at, status) VALUES ('evt-1', 'PARTY_EVENT', 'p-many', :body, '{}', "
                "now(), 'APPLIED')"
            ),
            {"body": json.dumps(body).encode()},
        )

    await migrate.upgrade_async(engine, "0005")

    async with engine.connect() as conn:
        statuses = dict((await conn.execute(text("SELECT id, status FROM bank_accounts"))).all())
        assert statuses == {
            oldest: "REPLACED",
            middle: "REPLACED",
            newest: "LINKED",
            failed: "FAILED",
        }
        moves = (
            await conn.execute(
                text(
                    "SELECT bank_account_id, from_status, to_status, source FROM "
                    "bank_account_history WHERE from_status IS NOT NULL ORDER BY id"
                )
            )
        ).all()
        assert sorted(map(tuple, moves), key=lambda m: str(m[0])) == sorted(
            [(a, "LINKED", "REPLACED", "migration") for a in (oldest, middle)],
            key=lambda m: str(m[0]),
        )
        party = (
            await conn.execute(
                text(
                    "SELECT verification_url, verification_url_expires_at::text FROM parties "
                    "WHERE party_ref = 'p-many'"
                )
            )
        ).one()
        assert party[0] == "https://verify.example/abc"
        assert party[1].startswith("2026-12-24")
