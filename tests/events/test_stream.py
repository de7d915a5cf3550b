"""The SSE stream over a real HTTP server: resumable with no gap and no repeat, heartbeats while
quiet, and a clean end when the service drains."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.events.hub import sse_message
from app.events.repository import StoredEvent
from tests.events.conftest import Feed, eventually, serving
from tests.events.test_reads import numbered, write


@dataclass
class Message:
    id: str | None = None
    event: str | None = None
    data: Any = None
    comments: list[str] = field(default_factory=list)


class Reader:
    """A small SSE parser, as a browser app would write one over `fetch()`."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, within: float = 10.0) -> Message:
        message = Message()
        async with asyncio.timeout(within):
            async for line in self._lines:
                if line == "":
                    if message.id is not None or message.comments:
                        return message
                    continue
                if line.startswith(":"):
                    message.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "id":
                    message.id = value
                elif name == "event":
                    message.event = value
                elif name == "data":
                    message.data = json.loads(value)
        raise EOFError("the stream ended")

    async def event(self, within: float = 10.0) -> Message:
        """The next message that is an event (comments skipped)."""
        while True:
            message = await self.next(within)
            if message.id is not None:
                return message


@asynccontextmanager
async def open_stream(
    feed: Feed, party: str, *, after: str | None = None, last_event_id: str | None = None
) -> AsyncIterator[Reader]:
    headers = feed.auth(party)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    params = {"after": after} if after is not None else {}
    async with feed.http.stream(
        "GET", f"/v1/parties/{party}/events/stream", params=params, headers=headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = Reader(response)
        opened = await reader.next()
        assert opened.comments == ["connected"]
        yield reader


async def test_a_stream_resumed_from_an_id_misses_and_repeats_nothing(
    feed: Feed, engine: AsyncEngine, party: str
) -> None:
    await write(engine, party, 3)
    backlog = await numbered(feed, party, 3)
    first_cursor = (
        await feed.http.get(
            f"/v1/parties/{party}/events", params={"limit": 1}, headers=feed.auth(party)
        )
    ).json()["next"]
    async with open_stream(feed, party, after=first_cursor) as stream:
        got = [await stream.event(), await stream.event()]
        assert [m.data["data"]["n"] for m in got] == [1, 2]
        assert [m.data for m in got] == backlog[1:]
        assert all(m.event == "party.active" for m in got)
        # A live one, after the backlog.
        await write(engine, party, 1, start=3)
        live = await stream.event()
        assert live.data["data"]["n"] == 3
        last_seen = live.id
    # Dropped; two more happen while away; resumed with Last-Event-ID.
    await write(engine, party, 2, start=4)
    async with open_stream(feed, party, last_event_id=last_seen) as stream:
        resumed = [await stream.event(), await stream.event()]
        assert [m.data["data"]["n"] for m in resumed] == [4, 5]
        await write(engine, party, 1, start=6)
        assert (await stream.event()).data["data"]["n"] == 6


async def test_events_written_while_the_backlog_is_read_come_once_each_in_order(
    feed: Feed, engine: AsyncEngine, party: str
) -> None:
    await write(engine, party, 1)
    await numbered(feed, party, 1)
    total = 60
    async with open_stream(feed, party, after="0") as stream:
        # Writing starts with the stream: the backlog read and the hub's deliveries overlap.
        writer = asyncio.create_task(write(engine, party, total, start=1))
        got = [await stream.event() for _ in range(total + 1)]
        await writer
    ns = [m.data["data"]["n"] for m in got]
    assert ns == list(range(total + 1))
    seqs = [int(m.id or 0) for m in got]
    assert seqs == sorted(set(seqs))


async def test_a_stream_without_a_cursor_starts_after_the_newest_event(
    feed: Feed, engine: AsyncEngine, party: str
) -> None:
    await write(engine, party, 2)
    await numbered(feed, party, 2)
    async with open_stream(feed, party) as stream:
        await write(engine, party, 1, start=2)
        # Not 0 and 1, written before it opened.
        assert (await stream.event()).data["data"]["n"] == 2


async def test_a_quiet_stream_sends_heartbeat_comments(feed: Feed, party: str) -> None:
    async with open_stream(feed, party) as stream:
        beats = [await stream.next(within=5), await stream.next(within=5)]
    assert all(m.comments == ["heartbeat"] and m.id is None for m in beats)


async def test_a_stream_ends_cleanly_when_the_service_drains(
    feed_settings: Settings, engine: AsyncEngine, party: str
) -> None:
    async with serving(feed_settings, engine) as own:
        async with open_stream(own, party) as stream:
            assert own.app.state.event_hub.streams == 1
            own.app.state.draining.set()
            try:
                while True:
                    await stream.next(within=5)
            except EOFError:
                pass
        # After draining, a new stream opens and ends at once: the client goes elsewhere.
        async with own.http.stream(
            "GET", f"/v1/parties/{party}/events/stream", headers=own.auth(party)
        ) as late:
            assert late.status_code == 200
            body = [line async for line in late.aiter_lines()]
        assert body == [": connected", ""]
        assert own.app.state.event_hub.streams == 0


async def test_a_closed_client_leaves_the_hub(feed: Feed, party: str) -> None:
    hub = feed.app.state.event_hub
    before = hub.streams
    async with open_stream(feed, party):
        assert hub.streams == before + 1

    async def left() -> bool:
        return bool(hub.streams == before)

    # The server notices at its next write at the latest (a heartbeat, 0.3 s here).
    await eventually(left)


def test_a_message_is_one_id_one_type_and_one_line_of_json() -> None:
    message = sse_message(
        StoredEvent(
            seq=42,
            id="evt_" + "0" * 26,
            type="party.active",
            version=1,
            created_at=dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC),
            party_ref="p\nwith a newline",
            data={"text": "line one\nline two"},
        )
    )
    lines = message.split("\n")
    assert lines[:2] == ["id: 42", "event: party.active"]
    # One data line whatever the JSON holds: newlines inside strings are escaped.
    assert lines[2].startswith("data: ")
    assert lines[3:] == ["", ""]
    assert json.loads(lines[2][6:])["createdAt"] == "2026-12-01T12:00:00Z"
