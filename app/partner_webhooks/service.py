"""The endpoint registry and the delivery log, for the admin routes: the rules, the
transaction boundaries; SQL in the repository."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import MIN_WEBHOOK_KEY_BYTES, Settings, webhook_secret_key, webhook_url_problem
from app.core.clock import db_now
from app.partner_webhooks import repository as repo
from app.partner_webhooks.dispatcher import settings_endpoints
from app.partner_webhooks.errors import (
    EndpointNotFound,
    EventFiltered,
    EventNotFound,
    InvalidRedelivery,
    InvalidWebhookSecret,
    InvalidWebhookUrl,
    ManagedBySettings,
    RedeliveryTooLarge,
    SecretSealingUnavailable,
    TargetNotAllowed,
    WebhookSecretRequired,
)
from app.partner_webhooks.models import (
    DisabledReason,
    EndpointSource,
    EndpointStatus,
    WebhookEndpoint,
)
from app.partner_webhooks.sealing import SealingError, keys_of, seal, sealed_under, unseal
from app.partner_webhooks.sender import guard_enabled
from app.partner_webhooks.signing import fingerprint
from app.partner_webhooks.targets import refused_literal, refused_name

log = logging.getLogger("app.partner_webhooks")

# One redelivery request queues at most this many events; more is a catch-up, which
# `GET /v1/events` pages without filling the delivery tables.
MAX_REDELIVERY = 10_000


@dataclass(frozen=True, slots=True)
class EndpointView:
    endpoint: WebhookEndpoint
    fingerprints: list[str]
    counts: dict[str, tuple[int, datetime | None]] | None = None


class WebhookEndpointService:
    def __init__(self, session: AsyncSession, settings: Settings) -> None:
        self.session = session
        self.settings = settings

    def _fingerprints(self, endpoint: WebhookEndpoint) -> list[str]:
        if endpoint.source == EndpointSource.ADMIN and endpoint.secrets:
            keys = keys_of(self.settings)
            shown = []
            for stored in endpoint.secrets:
                try:
                    shown.append(fingerprint(unseal(stored, endpoint.id, keys)))
                except SealingError:
                    # Listed all the same: the operator sees which endpoint needs its key back.
                    shown.append("unreadable")
            return shown
        return [fingerprint(s.get_secret_value()) for s in self.settings.partner_webhook_secrets]

    def _view(
        self,
        endpoint: WebhookEndpoint,
        counts: dict[str, tuple[int, datetime | None]] | None = None,
    ) -> EndpointView:
        return EndpointView(endpoint, self._fingerprints(endpoint), counts)

    async def _read_done(self, views: list[EndpointView]) -> list[EndpointView]:
        # Detached before the read's transaction ends, so the rollback does not expire what the
        # router renders afterwards.
        self.session.expunge_all()
        await self.session.rollback()
        return views

    def _check_url(self, url: str) -> None:
        problem = webhook_url_problem(url)
        if problem is not None:
            raise InvalidWebhookUrl(f"The URL {problem}.")
        if guard_enabled(self.settings) and (refused_literal(url) or refused_name(url)):
            raise TargetNotAllowed(
                "The URL names a private, loopback or link-local address; in production only "
                "public targets are allowed unless PARTNER_WEBHOOK_ALLOW_PRIVATE_TARGETS is set."
            )

    def _sealed(self, endpoint_id: uuid.UUID, secrets: list[str]) -> list[str]:
        if not secrets:
            return []
        keys = keys_of(self.settings)
        if not keys:
            raise SecretSealingUnavailable(
                "Set PARTNER_WEBHOOK_SEALING_KEYS to store an endpoint's own secrets, or omit "
                "`secrets` to sign with PARTNER_WEBHOOK_SECRETS."
            )
        return [seal(s, endpoint_id, keys) for s in secrets]

    def _secrets(self, given: list[SecretStr] | None) -> list[str]:
        if not given:
            if not self.settings.partner_webhook_secrets:
                raise WebhookSecretRequired(
                    "Give `secrets`: PARTNER_WEBHOOK_SECRETS is empty, so there is no default."
                )
            return []
        out: list[str] = []
        for position, secret in enumerate(given, start=1):
            text = secret.get_secret_value().strip()
            try:
                key = webhook_secret_key(text)
            except ValueError as exc:
                # By position, never the value.
                raise InvalidWebhookSecret(f"Secret {position} {exc}.") from None
            if len(key) < MIN_WEBHOOK_KEY_BYTES:
                raise InvalidWebhookSecret(
                    f"Secret {position} has a key shorter than {MIN_WEBHOOK_KEY_BYTES} bytes."
                )
            out.append(text)
        return out

    async def create(
        self,
        *,
        url: str,
        description: str | None,
        event_types: list[str] | None,
        secrets: list[SecretStr] | None,
    ) -> EndpointView:
        self._check_url(url)
        endpoint_id = uuid.uuid4()
        stored = self._sealed(endpoint_id, self._secrets(secrets))
        endpoint = await repo.add_endpoint(
            self.session,
            endpoint_id=endpoint_id,
            url=url,
            description=description,
            event_types=sorted(set(event_types)) if event_types is not None else None,
            secrets=stored,
        )
        await self.session.commit()
        return self._view(endpoint, {})

    async def list_all(self) -> list[EndpointView]:
        endpoints = await repo.list_endpoints(self.session)
        return await self._read_done([self._view(e) for e in endpoints])

    async def get(self, endpoint_id: uuid.UUID) -> EndpointView:
        endpoint = await repo.get_endpoint(self.session, endpoint_id)
        if endpoint is None:
            raise EndpointNotFound("No webhook endpoint has this id.")
        view = self._view(endpoint, await repo.delivery_counts(self.session, endpoint_id))
        return (await self._read_done([view]))[0]

    async def _locked(self, endpoint_id: uuid.UUID) -> WebhookEndpoint:
        endpoint = await repo.get_endpoint(self.session, endpoint_id, lock=True)
        if endpoint is None:
            await self.session.rollback()
            raise EndpointNotFound("No webhook endpoint has this id.")
        return endpoint

    async def update(
        self,
        endpoint_id: uuid.UUID,
        *,
        fields: set[str],
        description: str | None,
        event_types: list[str] | None,
        secrets: list[SecretStr] | None,
    ) -> EndpointView:
        endpoint = await self._locked(endpoint_id)
        if "secrets" in fields:
            if endpoint.source == EndpointSource.SETTINGS:
                await self.session.rollback()
                raise ManagedBySettings(
                    "A settings endpoint signs with PARTNER_WEBHOOK_SECRETS; rotate them there."
                )
            try:
                endpoint.secrets = self._sealed(endpoint.id, self._secrets(secrets))
            except Exception:
                await self.session.rollback()
                raise
        if "description" in fields:
            endpoint.description = description
        if "event_types" in fields:
            endpoint.event_types = sorted(set(event_types)) if event_types is not None else None
        endpoint.updated_at = await db_now(self.session)
        await self.session.commit()
        return self._view(endpoint)

    async def disable(self, endpoint_id: uuid.UUID) -> EndpointView:
        endpoint = await self._locked(endpoint_id)
        if endpoint.status == EndpointStatus.ENABLED:
            repo.disable(endpoint, DisabledReason.ADMIN, await db_now(self.session))
        await self.session.commit()
        return self._view(endpoint)

    async def enable(self, endpoint_id: uuid.UUID) -> EndpointView:
        endpoint = await self._locked(endpoint_id)
        if endpoint.disabled_reason == DisabledReason.REMOVED_FROM_SETTINGS:
            await self.session.rollback()
            raise ManagedBySettings(
                "This endpoint was removed from PARTNER_WEBHOOK_URLS; add it there again."
            )
        if endpoint.status != EndpointStatus.ENABLED:
            now = await db_now(self.session)
            endpoint.status = EndpointStatus.ENABLED
            endpoint.disabled_reason = None
            endpoint.disabled_at = None
            # A fresh start: the 5-day clock and every lane's backoff begin again.
            endpoint.failing_since = None
            endpoint.updated_at = now
            await self.session.flush()
            await repo.wake_lanes(self.session, endpoint_id, now)
        await self.session.commit()
        return self._view(endpoint)

    async def redeliver(
        self,
        endpoint_id: uuid.UUID,
        *,
        event_id: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> int:
        """Queue one event, or every event created in [since, until), again for this endpoint.
        They go out in seq order per party, before that party's later pending events."""
        if (event_id is None) == (since is None and until is None) or (
            event_id is None and (since is None or until is None)
        ):
            raise InvalidRedelivery("Give either `eventId`, or both `since` and `until`.")
        if since is not None and until is not None and since >= until:
            raise InvalidRedelivery("`since` must be before `until`.")
        endpoint = await self._locked(endpoint_id)
        types = endpoint.event_types
        try:
            if event_id is not None:
                found = await repo.event_type_of(self.session, event_id)
                if found is None or found[1] is None:
                    raise EventNotFound("No event has this id (yet).")
                if types is not None and found[0] not in types:
                    raise EventFiltered(
                        f"This endpoint's filter does not take `{found[0]}` events."
                    )
            elif since is not None and until is not None:
                count = await repo.count_range(self.session, since, until, types)
                if count > MAX_REDELIVERY:
                    raise RedeliveryTooLarge(
                        f"The range holds {count} events, more than {MAX_REDELIVERY}: page "
                        "GET /v1/events from a cursor instead, or ask for a shorter range."
                    )
            queued = await repo.redeliver(
                self.session,
                endpoint_id,
                now=await db_now(self.session),
                event_id=event_id,
                since=since,
                until=until,
                types=types,
                limit=MAX_REDELIVERY,
            )
        except Exception:
            await self.session.rollback()
            raise
        await self.session.commit()
        return queued

    async def attempts(
        self, endpoint_id: uuid.UUID, *, before: int | None, event_id: str | None, limit: int
    ) -> tuple[list[Any], int | None]:
        if await repo.get_endpoint(self.session, endpoint_id) is None:
            await self.session.rollback()
            raise EndpointNotFound("No webhook endpoint has this id.")
        rows = await repo.attempts_page(
            self.session, endpoint_id, before=before, event_id=event_id, limit=limit + 1
        )
        await self.session.rollback()
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1].id if more and rows else None)


@dataclass(frozen=True, slots=True)
class Resealed:
    resealed: int  # secrets written again under the first key (plain or under an older key)
    current: int  # already under the first key
    unreadable: list[str]  # "endpoint id: why", for the secrets that could not be opened


async def reseal_secrets(session: AsyncSession, settings: Settings) -> Resealed:
    """Every admin endpoint's own secrets sealed under the first PARTNER_WEBHOOK_SEALING_KEYS
    key, in one transaction: after a key is added in front (rotation), or for rows written
    before sealing existed. A secret that cannot be opened is left as it is and reported."""
    keys = keys_of(settings)
    if not keys:
        raise SecretSealingUnavailable("Set PARTNER_WEBHOOK_SEALING_KEYS first.")
    first = keys[0].kid
    resealed = current = 0
    unreadable: list[str] = []
    for endpoint_id, stored in await repo.lock_own_secrets(session):
        out: list[str] = []
        for value in stored:
            if sealed_under(value) == first:
                current += 1
                out.append(value)
                continue
            try:
                out.append(seal(unseal(value, endpoint_id, keys), endpoint_id, keys))
                resealed += 1
            except SealingError as exc:
                unreadable.append(f"{endpoint_id}: {exc}")
                out.append(value)
        if out != stored:
            await repo.set_secrets(session, endpoint_id, out)
    await session.commit()
    return Resealed(resealed, current, unreadable)


async def register_settings_endpoints(
    factory: async_sessionmaker[AsyncSession], settings: Settings
) -> bool:
    """At start-up, before the first request: PARTNER_WEBHOOK_URLS as rows, so that a new one
    starts after the newest event written *before* this process serves, and every event the
    process writes is delivered to it. Left to the dispatcher's first cycle (which would begin
    after whatever was written meanwhile) it would miss the events of the first requests of a
    busy start. Retiring endpoints no longer configured stays with that cycle. False (logged)
    when the database did not take it; the dispatcher's first cycle registers them then."""
    endpoints = settings_endpoints(settings)
    if not endpoints:
        return True
    try:
        async with factory() as session:
            await repo.sync_settings_endpoints(
                session, endpoints, await db_now(session), retire=False
            )
            await session.commit()
    except Exception as exc:
        log.warning(
            "PARTNER_WEBHOOK_URLS not registered at start-up (%s); the delivery job will, and "
            "events written before it does are not sent to a new endpoint",
            type(exc).__name__,
        )
        return False
    return True
