"""Endpoints from PARTNER_WEBHOOK_URLS: rows of their own, the same id in every replica, signed
with every PARTNER_WEBHOOK_SECRETS entry; one removed from the settings is disabled, and
enabled again where it stopped when it comes back."""

from __future__ import annotations

from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook

from app.config import Settings
from app.core.metrics import Metrics
from app.partner_webhooks.dispatcher import Dispatcher, settings_endpoint_id
from app.partner_webhooks.service import register_settings_endpoints
from tests.partner_webhooks.conftest import (
    SECRET_A,
    SECRET_B,
    Execute,
    Receiver,
    add_event,
    endpoint_of,
)


async def test_settings_endpoints_are_synced_signed_with_every_secret_and_retired(
    sql: Execute,
    factory: async_sessionmaker[AsyncSession],
    wsettings: Settings,
    receiver: Receiver,
) -> None:
    await sql("UPDATE partner_webhook_endpoints SET status = 'DISABLED'")
    configured = wsettings.model_copy(
        update={
            "partner_webhook_urls": [receiver.url],
            "partner_webhook_secrets": [SecretStr(SECRET_A), SecretStr(SECRET_B)],
        }
    )
    endpoint = settings_endpoint_id(receiver.url)
    first = Dispatcher(factory, configured, metrics=Metrics())
    try:
        await first.cycle()  # the row is written; it starts after the newest event
        party = "pw-settings-1"
        sent = await add_event(sql, party)
        await first.cycle()
    finally:
        await first.aclose()
    assert receiver.ids_of(party) == [sent]
    for secret in (SECRET_A, SECRET_B):
        Webhook(secret).verify(receiver.delivered[0].body, receiver.delivered[0].headers)

    # A process started without it retires it; its events wait.
    bare = Dispatcher(factory, wsettings, metrics=Metrics())
    try:
        await bare.cycle()
        found = await endpoint_of(sql, endpoint)
        assert (found["status"], found["disabled_reason"]) == ("DISABLED", "removed_from_settings")
        waiting = await add_event(sql, party)
        await bare.cycle()
        assert receiver.ids_of(party) == [sent]
    finally:
        await bare.aclose()

    # Back in the settings: enabled again, and what was written meanwhile is delivered.
    again = Dispatcher(factory, configured, metrics=Metrics())
    try:
        await again.cycle()
    finally:
        await again.aclose()
    assert (await endpoint_of(sql, endpoint))["status"] == "ENABLED"
    assert receiver.ids_of(party) == [sent, waiting]


async def test_endpoints_registered_at_start_up_get_every_event_written_before_the_first_cycle(
    sql: Execute,
    factory: async_sessionmaker[AsyncSession],
    wsettings: Settings,
    receiver: Receiver,
) -> None:
    await sql("UPDATE partner_webhook_endpoints SET status = 'DISABLED'")
    configured = wsettings.model_copy(
        update={
            "partner_webhook_urls": [receiver.url],
            "partner_webhook_secrets": [SecretStr(SECRET_A)],
        }
    )
    party = "pw-settings-start"
    before = await add_event(sql, party)  # history: written before this process started

    # The app's start-up registers the endpoint before serving (app/main.py) ...
    assert await register_settings_endpoints(factory, configured)
    # ... so what its first requests write, before the delivery job's first cycle, is sent.
    first_requests = [await add_event(sql, party, n=n) for n in range(2)]
    dispatcher = Dispatcher(factory, configured, metrics=Metrics())
    try:
        await dispatcher.cycle()
    finally:
        await dispatcher.aclose()

    assert receiver.ids_of(party) == first_requests
    assert before not in receiver.ids_of(party)
