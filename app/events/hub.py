"""The SSE side: one hub per process fans the numbered events out to every open stream.

The hub holds one LISTEN connection (`events`, notified by the sequencer with the highest seq it
gave) and, on each notice, reads the new events of the parties that have a stream open in one
query through the pool; each stream gets the rendered messages of its party. A stream holds no
database connection while it waits: 1,000 idle streams cost 1,000 small queues, not 1,000
connections.

A stream never misses or repeats an event. It subscribes first, then reads its party's backlog
after its cursor from the database, then sends what the hub queued, skipping what the backlog
already sent (seq order is total, so "not after the last one sent" is a repeat). Everything the
hub reads after the subscription was numbered before that read started; anything numbered before
the subscription was committed before the backlog read began, so the backlog has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import DatabaseUnavailable, is_database_unavailable
from app.events import repository
from app.events.listen import Listener
from app.events.repository import StoredEvent
from app.events.service import cursor_of, event_json

log = logging.getLogger("app.events")

SessionFactory = async_sessionmaker[AsyncSession]

# Events read per query (the backlog's pages, the hub's reads).
READ_BATCH = 500
# A stream that falls this far behind (a client that stopped reading) drops its queue and
# reads its backlog again from the database instead of holding events in memory.
MAX_QUEUED = 1000
# How long a first subscription waits for the hub to read where the event order stands.
START_TIMEOUT = 5.0


def sse_message(event: StoredEvent) -> str:
    """One SSE message: `id` is the event's cursor, `data` its JSON on one line."""
    body = json.dumps(event_json(event), separators=(",", ":"), ensure_ascii=False)
    return f"id: {cursor_of(event.seq)}\nevent: {event.type}\ndata: {body}\n\n"


class Subscription:
    """One open stream's inbox."""

    __slots__ = ("closed", "lagged", "party_ref", "queue", "ready")

    def __init__(self, party_ref: str) -> None:
        self.party_ref = party_ref
        self.queue: deque[tuple[int, str]] = deque()
        self.ready = asyncio.Event()
        self.lagged = False
        self.closed = False

    def put(self, seq: int, message: str) -> None:
        if self.lagged:
            return
        if len(self.queue) >= MAX_QUEUED:
            self.queue.clear()
            self.lagged = True
        else:
            self.queue.append((seq, message))
        self.ready.set()

    def close(self) -> None:
        self.closed = True
        self.ready.set()


class EventHub:
    """Started on the first subscription; `close()` ends every stream."""

    def __init__(
        self,
        factory: SessionFactory,
        url: URL | str,
        *,
        poll_interval: float,
    ) -> None:
        self._factory = factory
        self._poll_interval = poll_interval
        self._subs: dict[str, set[Subscription]] = {}
        self._wake = asyncio.Event()
        self._notified = 0
        self._head: int | None = None
        self._reading = 0
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Event | None = None
        self._closed = False
        self._listener = Listener(url, "events", self._on_notify, timeout=5.0)

    @property
    def head(self) -> int:
        """The newest seq the hub knows of: handed out, or being read now. A subscription
        taken now gets every event above it (a read in progress names the parties it had when
        it began, so what it reads is below this)."""
        return max(self._head or 0, self._reading)

    @property
    def streams(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def _on_notify(self, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self._notified = max(self._notified, int(payload))
        self._wake.set()

    def start(self) -> None:
        """Start listening (the lifespan does, so the first stream finds the hub ready)."""
        if self._task is None and not self._closed:
            self._started = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="events:hub")

    async def subscribe(self, party_ref: str) -> Subscription:
        sub = Subscription(party_ref)
        if self._closed:
            sub.close()
            return sub
        self.start()
        assert self._started is not None  # noqa: S101 - set with the task
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await self._started.wait()
        except TimeoutError:
            raise HubUnavailable("The event order cannot be read right now; retry.") from None
        self._subs.setdefault(party_ref, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.party_ref)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.party_ref]

    async def close(self) -> None:
        """End every stream (each sends nothing more and finishes its response)."""
        self._closed = True
        for subs in list(self._subs.values()):
            for sub in subs:
                sub.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._listener.close()

    async def _run(self) -> None:
        assert self._started is not None  # noqa: S101 - set before the task starts
        failing = False
        while True:
            try:
                fresh = await self._listener.ensure()
                self._wake.clear()
                notified = self._notified
                if self._head is not None and not self._subs:
                    # Nobody to deliver to: follow the notices, read nothing.
                    self._head = max(self._head, notified)
                    upto = self._head
                elif self._head is None or fresh or notified <= self._head:
                    # First look, a new LISTEN (notices may have been missed) or a poll.
                    async with self._factory() as session:
                        upto = await repository.head(session)
                        await session.rollback()
                else:
                    upto = notified
                if self._head is None:
                    self._head = upto
                    self._started.set()
                await self._deliver(upto)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    cause = "database unavailable" if is_database_unavailable(exc) else "error"
                    log.warning("event stream hub: %s (%s); retrying", cause, type(exc).__name__)
                failing = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()

    async def _deliver(self, upto: int) -> None:
        """Hand every stream its party's events in (head, upto]."""
        assert self._head is not None  # noqa: S101 - set before the first delivery
        self._reading = max(self._reading, upto)
        while self._head < upto:
            parties = list(self._subs)
            if not parties:
                self._head = upto
                return
            async with self._factory() as session:
                rows = await repository.parties_range(
                    session, party_refs=parties, after=self._head, upto=upto, limit=READ_BATCH
                )
                await session.rollback()
            for event in rows:
                message = sse_message(event)
                for sub in self._subs.get(event.party_ref, ()):
                    sub.put(event.seq, message)
            # Short of a full batch: nothing else of these parties up to `upto`.
            self._head = rows[-1].seq if len(rows) == READ_BATCH else upto


class HubUnavailable(DatabaseUnavailable):
    """The hub cannot learn where the event order stands: no stream can promise no gaps."""


class EventStream:
    """One client's stream: `open()` in the request (its errors are answers), then
    `messages()` as the response body."""

    def __init__(
        self, hub: EventHub, factory: SessionFactory, party_ref: str, *, heartbeat: float
    ) -> None:
        self.hub = hub
        self.factory = factory
        self.party_ref = party_ref
        self.heartbeat = heartbeat
        self._sub: Subscription | None = None
        self._last = 0
        self._backlog = False

    async def open(self, after: int | None) -> None:
        """Subscribe, then fix the start: after the cursor `after`, or (None) after the newest
        event the hub has seen."""
        self._sub = await self.hub.subscribe(self.party_ref)
        if after is None:
            # Where the hub stands: everything after it reaches this subscription, and a
            # reconnect storm of fresh streams costs the database nothing.
            self._last = self.hub.head
        else:
            self._last, self._backlog = after, True

    async def messages(self) -> AsyncIterator[str]:
        sub = self._sub
        assert sub is not None  # noqa: S101 - open() comes first
        try:
            # Sent at once, so the client (and any proxy) sees the stream open.
            yield ": connected\n\n"
            while not sub.closed:
                if self._backlog or sub.lagged:
                    # Cleared first: what the hub queues from now on may be newer than the
                    # backlog read, and is sent after it unless the backlog had it.
                    self._backlog = sub.lagged = False
                    sub.queue.clear()
                    async for seq, message in _backlog(self.factory, self.party_ref, self._last):
                        yield message
                        self._last = seq
                        if sub.closed:
                            return
                while sub.queue and not sub.lagged:
                    seq, message = sub.queue.popleft()
                    if seq > self._last:
                        yield message
                        self._last = seq
                if sub.lagged or sub.closed:
                    continue
                sub.ready.clear()
                try:
                    async with asyncio.timeout(self.heartbeat):
                        await sub.ready.wait()
                except TimeoutError:
                    yield ": heartbeat\n\n"
        except Exception as exc:
            # Headers are sent: the only answer left is to end the stream; the client
            # resumes with Last-Event-ID.
            log.warning("event stream of %s ended: %s", self.party_ref, type(exc).__name__)
        finally:
            self.hub.unsubscribe(sub)


async def _backlog(
    factory: SessionFactory, party_ref: str, after: int
) -> AsyncIterator[tuple[int, str]]:
    while True:
        async with factory() as session:
            rows = await repository.page(
                session, after=after, limit=READ_BATCH, party_ref=party_ref
            )
            await session.rollback()
        for event in rows:
            yield event.seq, sse_message(event)
            after = event.seq
        if len(rows) < READ_BATCH:
            return
