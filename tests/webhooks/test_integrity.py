"""One event per requestId (the stored body is the applied one), lenient reading of what Bakkt
never published, and verified bodies that cannot be read: always stored, answered 2xx, alerted."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.alerts.models import OperatorAlert
from app.bakkt.webhooks import parse_webhook
from app.funding.models import Party, Transaction
from app.webhooks import service
from app.webhooks.models import WebhookEvent
from app.webhooks.service import rematch_parked
from tests.webhooks.events import (
    T0,
    URL,
    Flow,
    SeedAccount,
    SeedTransaction,
    deliver,
    encode,
    fiat,
    link_event,
    party_event,
    seed,
    signed_headers,
)

P = "p-integrity"
LINK = "link-integrity"
FAR = datetime(2100, 1, 1, tzinfo=UTC)


def _dep(request_id: str, status: str, second: int, **kw: Any) -> dict[str, Any]:
    return fiat(
        request_id, party=P, ref="t-integrity", kind="ACH_DEPOSIT", status=status,
        amount="25.00", at=T0 + timedelta(seconds=second), **kw,
    )  # fmt: skip


async def _seed_deposit(session: AsyncSession) -> None:
    await seed(
        session,
        [
            Flow(
                "integrity",
                [P],
                [SeedAccount(P, LINK)],
                [SeedTransaction(P, "t-integrity", "DEPOSIT", "ACH", 2500, "PENDING")],
            )
        ],
    )


async def _status(session: AsyncSession, ref: str = "t-integrity") -> str:
    statement = (
        select(Transaction.status)
        .where(Transaction.bakkt_ref == ref)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(statement)).scalar_one()


async def _events(session: AsyncSession, status: str) -> list[WebhookEvent]:
    statement = (
        select(WebhookEvent)
        .where(WebhookEvent.status == status)
        .order_by(WebhookEvent.id)
        .execution_options(populate_existing=True)
    )
    return list((await session.execute(statement)).scalars())


async def _alerts(session: AsyncSession, kind: str) -> list[OperatorAlert]:
    statement = select(OperatorAlert).where(OperatorAlert.kind == kind)
    return list((await session.execute(statement)).scalars())


async def _post_raw(http: httpx.AsyncClient, body: bytes, msg_id: str) -> httpx.Response:
    return await http.post(URL, content=body, headers=signed_headers(body, msg_id=msg_id))


# -- one event per requestId ---------------------------------------------------------------------


async def test_a_redelivery_with_another_body_is_kept_as_a_conflict_and_never_applied(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await _seed_deposit(session)
    assert (await deliver(client, _dep("e-1", "COMPLETE", 1))).json()["status"] == "APPLIED"

    forged = _dep("e-1", "RETURNED", 2, reason="R01")
    for _ in range(2):
        answer = await deliver(client, forged)
        assert answer.status_code == 200
        assert answer.json() == {
            "received": True,
            "requestId": "e-1",
            "duplicate": True,
            "status": "CONFLICT",
        }
    assert await _status(session) == "COMPLETED"
    [kept] = await _events(session, "CONFLICT")
    assert kept.body == encode(forged)
    assert kept.needs_operator
    # One alert however often the other body comes.
    assert len(await _alerts(session, "webhook_body_conflict")) == 1
    # The same event re-serialized (other spacing, other key order) is a plain duplicate.
    same = json.dumps(dict(reversed(_dep("e-1", "COMPLETE", 1).items())), indent=1).encode()
    again = await _post_raw(client, same, "e-1")
    assert again.json()["status"] == "APPLIED"


async def test_an_event_whose_first_apply_failed_applies_its_stored_body_not_a_redelivered_one(
    client: httpx.AsyncClient,
    session: AsyncSession,
    session_factory: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _seed_deposit(session)

    async def failing(*_: Any, **__: Any) -> Any:
        raise RuntimeError("apply failed")

    monkeypatch.setattr(service, "_apply", failing)
    assert (await deliver(client, _dep("e-1", "COMPLETE", 1))).json()["status"] == "RECEIVED"
    monkeypatch.undo()

    other = await deliver(client, _dep("e-1", "DECLINED", 1, reason="R01"))
    assert other.json()["status"] == "CONFLICT"
    assert await _status(session) == "PENDING"
    assert await rematch_parked(session_factory, now=FAR) == 1
    assert await _status(session) == "COMPLETED"


async def test_a_wire_deposit_of_1e20_is_held_and_a_redelivery_with_another_amount_is_refused(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    def wire(amount: str) -> dict[str, Any]:
        return fiat(
            "w-1e20", party="p-1e20", ref="bakkt-wire-1e20", kind="WIRE_DEPOSIT",
            status="COMPLETE", amount=amount, at=T0,
        )  # fmt: skip

    first = await deliver(client, wire("1e20"))
    assert (first.status_code, first.json()["status"]) == (200, "HELD")
    assert len(await _alerts(session, "webhook_bad_amount")) == 1
    second = await deliver(client, wire("100.00"))
    assert (second.status_code, second.json()["status"]) == (200, "CONFLICT")
    found = select(Transaction).where(Transaction.bakkt_ref == "bakkt-wire-1e20")
    assert (await session.execute(found)).first() is None


async def test_thirty_concurrent_pairs_with_one_requestid_apply_only_the_stored_body(
    live_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ns = uuid.uuid4().hex[:8]
    pairs = [
        [
            party_event(f"pair-{ns}-{i}", party=f"pair-{ns}-{i}", status=s, reason="OTHER", at=T0)
            for s in ("ACTIVE", "SUSPENDED")
        ]
        for i in range(30)
    ]
    answers = await asyncio.gather(*(deliver(live_client, e) for pair in pairs for e in pair))
    assert {a.status_code for a in answers} == {200}
    async with AsyncSession(engine) as session:
        for i in range(30):
            ref = f"pair-{ns}-{i}"
            row = await session.execute(
                select(WebhookEvent.body).where(WebhookEvent.request_id == ref)
            )
            stored = json.loads(row.scalar_one())
            party = await session.get(Party, ref)
            assert party is not None
            assert party.status == stored["partyStatus"], ref
        conflicts = await session.execute(
            select(WebhookEvent.body).where(WebhookEvent.status == "CONFLICT")
        )
        ours = [
            b for b in conflicts.scalars() if json.loads(b)["requestId"].startswith(f"pair-{ns}")
        ]
        assert len(ours) == 30


# -- lenient reading -----------------------------------------------------------------------------


def _without(event: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in names}


async def test_a_returned_after_completed_without_created_and_updated_at_returns_the_deposit(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await _seed_deposit(session)
    completed = _without(_dep("e-1", "COMPLETE", 1), "createdAt", "updatedAt")
    returned = _without(_dep("e-2", "RETURNED", 2, reason="R01"), "createdAt", "updatedAt")
    assert (await deliver(client, completed)).json()["status"] == "APPLIED"
    assert (await deliver(client, returned)).json()["status"] == "APPLIED"
    assert await _status(session) == "RETURNED"
    [event] = [e for e in await _events(session, "APPLIED") if e.request_id == "e-2"]
    assert "without createdAt, updatedAt" in (event.outcome or "")
    # What differs from our assumptions is an operator's to know, once per webhook type.
    [alert] = await _alerts(session, "webhook_fields_missing")
    assert alert.subject == "webhook type FIAT_EVENT"


async def test_party_and_link_events_without_event_time_are_applied_at_their_arrival(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    party = _without(
        party_event("pe-1", party="p-lenient", status="ACTIVE", reason="OK", at=T0), "eventTime"
    )
    link = _without(
        link_event("le-1", party="p-lenient", link_ref="l-lenient", status="LINKED", at=T0),
        "eventTime",
        "bankName",
        "accountMask",
        "accountType",
    )
    assert (await deliver(client, party)).json()["status"] == "APPLIED"
    assert (await deliver(client, link)).json()["status"] == "APPLIED"
    stored = await session.get(Party, "p-lenient")
    assert stored is not None
    assert stored.status == "ACTIVE"


def test_only_what_applying_needs_is_required_of_a_fiat_event() -> None:
    received = datetime(2026, 12, 1, tzinfo=UTC)
    bare = _without(_dep("e-9", "COMPLETE", 9), "createdAt", "updatedAt", "eventTime", "reasonCode")
    event = parse_webhook(encode(bare), received_at=received)
    assert event.event_time == received
    assert event.missing == ("eventTime", "createdAt", "updatedAt")


# -- verified but unreadable ---------------------------------------------------------------------


def _raw(event: dict[str, Any], field: str, raw_json: str) -> bytes:
    """The event with one field's JSON text replaced verbatim (for what json.dumps won't write)."""
    marker = "__RAW__"
    return encode({**event, field: marker}).replace(f'"{marker}"'.encode(), raw_json.encode())


_BASE = fiat(
    "bad-1", party="p-bad", ref="t-bad", kind="ACH_DEPOSIT", status="COMPLETE", amount="1",
    at=T0,
)  # fmt: skip

UNREADABLE = {
    "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "object nested 40,000 deep": b'{"a":' * 40_000 + b"1" + b"}" * 40_000,
    "eventTime 1e20": _raw(_BASE, "eventTime", "1e20"),
    "eventTime -1e20": _raw(_BASE, "eventTime", "-1e20"),
    "eventTime 1e400": _raw(_BASE, "eventTime", "1e400"),
    "createdAt 1e20": _raw(_BASE, "createdAt", "1e20"),
    "eventTime past year 9999 in UTC": _raw(_BASE, "eventTime", '"9999-12-31T23:59:59-23:59"'),
    "createdAt before year 1 in UTC": _raw(_BASE, "createdAt", '"0001-01-01T00:00:00+23:59"'),
    "requestId with NUL": _raw(_BASE, "requestId", '"bad\\u0000id"'),
    "requestId with a lone surrogate": _raw(_BASE, "requestId", '"bad\\ud800id"'),
    "partnerPartyRef with NUL": _raw(_BASE, "partnerPartyRef", '"p\\u0000"'),
    "partnerPartyRef with a lone surrogate": _raw(_BASE, "partnerPartyRef", '"p\\ud800"'),
}


@pytest.mark.parametrize("body", UNREADABLE.values(), ids=UNREADABLE.keys())
async def test_a_verified_body_that_cannot_be_read_is_stored_as_malformed_with_an_alert(
    client: httpx.AsyncClient, session: AsyncSession, body: bytes
) -> None:
    answer = await _post_raw(client, body, "msg-unreadable")
    assert answer.status_code == 200
    assert answer.json()["status"] == "MALFORMED"
    row = (
        await session.execute(
            select(WebhookEvent).where(WebhookEvent.request_id == "msg-unreadable")
        )
    ).scalar_one()
    assert (row.status, row.body, row.needs_operator) == ("MALFORMED", body, True)
    assert len(await _alerts(session, "webhook_malformed")) == 1


async def test_a_nul_in_descriptive_text_does_not_block_the_event(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await _seed_deposit(session)
    body = _raw(_dep("e-1", "COMPLETE", 1), "reasonDescription", '"bank\\u0000\\ud800"')
    assert (await _post_raw(client, body, "e-1")).json()["status"] == "APPLIED"
    assert await _status(session) == "COMPLETED"


async def test_a_new_event_is_invisible_to_others_until_its_apply_commits(
    live_client: httpx.AsyncClient, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The intake's insert goes through the driver connection; it must still be inside the
    # apply's transaction (held and uncommitted), not committed on its own before the apply.
    request_id = f"unseen-{uuid.uuid4().hex[:8]}"
    original = service._apply
    seen_during_apply: list[int] = []

    async def looking(*args: Any, **kwargs: Any) -> Any:
        async with engine.connect() as other:
            count = await other.execute(
                select(WebhookEvent.id).where(WebhookEvent.request_id == request_id)
            )
            seen_during_apply.append(len(count.all()))
        return await original(*args, **kwargs)

    monkeypatch.setattr(service, "_apply", looking)
    event = fiat(
        request_id, party=f"p-{request_id}", ref=f"t-{request_id}", kind="ACH_DEPOSIT",
        status="COMPLETE", amount="25.00", at=T0,
    )  # fmt: skip
    response = await deliver(live_client, event)
    assert response.json()["status"] == "PARKED"
    assert seen_during_apply == [0]
    async with engine.connect() as other:
        stored = await other.execute(
            select(WebhookEvent.status).where(WebhookEvent.request_id == request_id)
        )
        assert stored.scalar_one() == "PARKED"
