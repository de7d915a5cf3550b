"""The catch-up pages: order, paging, and the answers to bad input and to the wrong caller."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import create_session_factory
from app.events import service as events
from app.events.models import EventType
from tests.events.conftest import Feed, eventually


async def write(engine: AsyncEngine, party: str, count: int, start: int = 0) -> None:
    """`count` committed events of the party (each in its own transaction, as changes are),
    numbered in their data from `start`."""
    factory = create_session_factory(engine)
    for n in range(start, start + count):
        async with factory() as session:
            events.record(
                session, EventType.PARTY_ACTIVE, party_ref=party, subject_id=None, data={"n": n}
            )
            await session.commit()


async def numbered(feed: Feed, party: str, count: int) -> list[dict[str, Any]]:
    """Wait for the sequencer (the workers' job, woken by the commits) to number them."""
    found: list[dict[str, Any]] = []

    async def all_there() -> bool:
        nonlocal found
        found = await feed.events(party)
        return len(found) >= count

    await eventually(all_there)
    return found


async def page(feed: Feed, party: str, **params: Any) -> Any:
    response = await feed.http.get(
        f"/v1/parties/{party}/events", params=params, headers=feed.auth(party)
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_pages_walk_every_event_in_order_and_say_when_more_follow(
    feed: Feed, engine: AsyncEngine, party: str
) -> None:
    await write(engine, party, 5)
    await numbered(feed, party, 5)
    first = await page(feed, party, limit=2)
    second = await page(feed, party, limit=2, after=first["next"])
    third = await page(feed, party, limit=2, after=second["next"])
    assert [len(p["data"]) for p in (first, second, third)] == [2, 2, 1]
    assert [p["hasMore"] for p in (first, second, third)] == [True, True, False]
    walked = [e["data"]["n"] for p in (first, second, third) for e in p["data"]]
    assert walked == [0, 1, 2, 3, 4]
    # Nothing new: an empty page that keeps the cursor, to poll with later.
    empty = await page(feed, party, after=third["next"])
    assert empty == {"data": [], "next": third["next"], "hasMore": False}
    await write(engine, party, 1, start=5)
    await numbered(feed, party, 6)
    assert [e["data"]["n"] for e in (await page(feed, party, after=third["next"]))["data"]] == [5]


async def test_the_back_end_pages_every_partys_events_in_one_order(
    feed: Feed, engine: AsyncEngine
) -> None:
    one, two = f"be-{uuid.uuid4().hex[:8]}", f"be-{uuid.uuid4().hex[:8]}"
    head = await feed.http.get("/v1/events", params={"limit": 1}, headers=feed.admin)
    assert head.status_code == 200, head.text
    # Start after everything so far: the newest event's cursor, walking to the end.
    cursor = head.json()["next"]
    while True:
        response = await feed.http.get(
            "/v1/events", params={"after": cursor, "limit": 500}, headers=feed.admin
        )
        body = response.json()
        cursor = body["next"]
        if not body["hasMore"]:
            break
    await write(engine, one, 2)
    await write(engine, two, 2)
    await numbered(feed, one, 2)
    await numbered(feed, two, 2)
    response = await feed.http.get("/v1/events", params={"after": cursor}, headers=feed.admin)
    seen = [(e["partyRef"], e["data"]["n"]) for e in response.json()["data"]]
    mine = [s for s in seen if s[0] in (one, two)]
    assert mine == [(one, 0), (one, 1), (two, 0), (two, 1)]


@pytest.mark.parametrize("limit", ["0", "501", "-1", "ten", "1.5"])
async def test_a_limit_out_of_bounds_is_refused_by_name(feed: Feed, party: str, limit: str) -> None:
    for url, headers in (
        (f"/v1/parties/{party}/events", feed.auth(party)),
        ("/v1/events", feed.admin),
    ):
        response = await feed.http.get(url, params={"limit": limit}, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "validation_failed"


@pytest.mark.parametrize(
    "cursor", ["abc", "-1", "1.5", "1e3", " 7", "9223372036854775808", "٣", "1" * 41]
)
async def test_a_cursor_never_handed_out_is_refused_and_changes_nothing(
    feed: Feed, party: str, cursor: str
) -> None:
    for url, headers in (
        (f"/v1/parties/{party}/events", feed.auth(party)),
        ("/v1/events", feed.admin),
        (f"/v1/parties/{party}/events/stream", feed.auth(party)),
    ):
        response = await feed.http.get(url, params={"after": cursor}, headers=headers)
        assert response.status_code in (400, 422), response.text
        expected = "validation_failed" if len(cursor) > 40 else "invalid_cursor"
        assert response.json()["code"] == expected
    response = await feed.http.get(
        f"/v1/parties/{party}/events/stream",
        headers={**feed.auth(party), "Last-Event-ID": "not-a-cursor"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_cursor"


async def test_another_partys_token_reads_nothing(
    feed: Feed, engine: AsyncEngine, party: str
) -> None:
    await write(engine, party, 1)
    await numbered(feed, party, 1)
    intruder = feed.auth(f"other-{uuid.uuid4().hex[:8]}")
    for path in (f"/v1/parties/{party}/events", f"/v1/parties/{party}/events/stream"):
        response = await feed.http.get(path, headers=intruder)
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "not_found"
        assert "data" not in response.json()


async def test_the_back_end_route_needs_the_admin_scope_and_a_token(feed: Feed, party: str) -> None:
    consumer = await feed.http.get("/v1/events", headers=feed.auth(party))
    assert consumer.status_code == 403
    assert consumer.json()["code"] == "admin_scope_required"
    for path in ("/v1/events", f"/v1/parties/{party}/events", f"/v1/parties/{party}/events/stream"):
        anonymous = await feed.http.get(path)
        assert anonymous.status_code == 401
        assert anonymous.json()["code"] == "authentication_required"
