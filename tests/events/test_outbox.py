"""The outbox: an event row exists if and only if its change committed, written by the change's
own commit in one statement; and the order readers see is given after commit, so a transaction
that commits late is never behind a reader's cursor."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.bakkt.types import BakktTransaction, TransactionKind
from app.bakkt.types import TransactionStatus as BakktStatus
from app.db import create_session_factory
from app.events import repository
from app.events import service as events
from app.events.models import EventType
from app.events.sequencer import Sequencer, sequence_pending
from app.funding import bakkt_sync
from app.funding import repository as funding_repo
from app.funding.models import HistorySource, TransactionHistory, TransactionStatus
from app.funding.state import transition
from app.recovery.worker import Job, Workers

Factory = async_sessionmaker[AsyncSession]


@pytest.fixture
def factory(engine: AsyncEngine) -> Factory:
    return create_session_factory(engine)


@pytest.fixture
async def txn_id(engine: AsyncEngine) -> uuid.UUID:
    """A committed SUBMITTING deposit of a party of its own."""
    party, ident = f"ob-{uuid.uuid4().hex[:10]}", uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO parties (party_ref, status) VALUES (:p, 'ACTIVE')"), {"p": party}
        )
        await conn.execute(
            text(
                "INSERT INTO transactions (id, party_ref, type, method, origin, status, "
                "amount_cents, currency, bakkt_ref) VALUES (:id, :p, 'DEPOSIT', 'ACH', "
                "'PARTNER', 'SUBMITTING', 1000, 'USD', :ref)"
            ),
            {"id": ident, "p": party, "ref": str(ident)},
        )
    return ident


async def events_about(engine: AsyncEngine, subject: uuid.UUID) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT type, data FROM events WHERE subject_id = :s ORDER BY local_id"),
            {"s": subject},
        )
        return list(rows.all())


async def status_of(engine: AsyncEngine, ident: uuid.UUID) -> str:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT status FROM transactions WHERE id = :i"), {"i": ident}
        )
        return str(found.scalar_one())


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL sent on `engine` while the block runs."""
    sent: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    sa_event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_a_rolled_back_move_leaves_neither_the_move_nor_its_event(
    factory: Factory, engine: AsyncEngine, txn_id: uuid.UUID
) -> None:
    async with factory() as session:
        txn = await funding_repo.lock_transaction(session, txn_id)
        assert txn is not None
        assert transition(session, txn, TransactionStatus.PENDING, source=HistorySource.API)
        await session.rollback()
    assert await status_of(engine, txn_id) == "SUBMITTING"
    assert await events_about(engine, txn_id) == []
    # The queue went with the rollback: the next commit in the session writes nothing of it.
    async with factory() as session:
        txn = await funding_repo.lock_transaction(session, txn_id)
        assert txn is not None
        transition(session, txn, TransactionStatus.PENDING, source=HistorySource.API)
        await session.rollback()
        await session.commit()
    assert await events_about(engine, txn_id) == []


async def test_a_commit_that_fails_after_the_event_was_written_keeps_neither(
    factory: Factory, engine: AsyncEngine, txn_id: uuid.UUID
) -> None:
    async with factory() as session:
        txn = await funding_repo.lock_transaction(session, txn_id)
        assert txn is not None
        transition(session, txn, TransactionStatus.PENDING, source=HistorySource.API)
        # Flushed after the events' INSERT, inside the same commit: its check fails.
        session.add(
            TransactionHistory(transaction_id=txn.id, to_status="PENDING", source="nonsense")
        )
        with pytest.raises(IntegrityError):
            await session.commit()
        await session.rollback()
    assert await status_of(engine, txn_id) == "SUBMITTING"
    assert await events_about(engine, txn_id) == []


async def test_a_committed_move_has_exactly_its_event_written_in_one_statement(
    factory: Factory, engine: AsyncEngine, txn_id: uuid.UUID
) -> None:
    async with factory() as session:
        txn = await funding_repo.lock_transaction(session, txn_id)
        assert txn is not None
        transition(session, txn, TransactionStatus.PENDING, source=HistorySource.API)
        transition(session, txn, TransactionStatus.COMPLETED, source=HistorySource.WEBHOOK)
        with statements(engine) as sent:
            await session.commit()
    assert await status_of(engine, txn_id) == "COMPLETED"
    found = await events_about(engine, txn_id)
    assert [row.type for row in found] == ["transaction.pending", "transaction.completed"]
    # Each move's own state, not the last one's.
    assert [row.data["status"] for row in found] == ["PENDING", "COMPLETED"]
    inserts = [s for s in sent if s.lstrip().upper().startswith("INSERT INTO EVENTS")]
    assert len(inserts) == 1


async def test_a_refused_move_writes_no_event(
    factory: Factory, engine: AsyncEngine, txn_id: uuid.UUID
) -> None:
    for target in (TransactionStatus.FAILED, TransactionStatus.PENDING):
        async with factory() as session:
            txn = await funding_repo.lock_transaction(session, txn_id)
            assert txn is not None
            # The second is refused: FAILED is terminal. History only.
            transition(session, txn, target, source=HistorySource.SYNC)
            await session.commit()
    assert [row.type for row in await events_about(engine, txn_id)] == ["transaction.failed"]


async def test_a_hold_and_its_release_are_announced(
    factory: Factory, engine: AsyncEngine, txn_id: uuid.UUID
) -> None:
    now = datetime.now(UTC)
    async with factory() as session:
        txn = await funding_repo.lock_transaction(session, txn_id)
        assert txn is not None
        # Bakkt's record says 99.00 where ours says 10.00: held for an operator.
        word = BakktTransaction(
            transaction_ref=txn.bakkt_ref,
            related_transaction_ref=None,
            party_ref=txn.party_ref,
            kind=TransactionKind.ACH_DEPOSIT,
            status=BakktStatus.PENDING,
            amount=Decimal("99.00"),
            currency="USD",
            reason_code=None,
            reason_description=None,
            created_at=now,
            updated_at=now,
        )
        report = bakkt_sync.BakktReport(word, HistorySource.SYNC, now, context="test")
        applied = await bakkt_sync.apply(session, txn, report, now=now)
        assert applied.verdict is bakkt_sync.Verdict.HELD
        await session.commit()
    async with factory() as session:
        # A later word about the held transaction is only recorded: no second hold event.
        txn = await funding_repo.lock_transaction(session, txn_id)
        assert txn is not None
        later = bakkt_sync.BakktReport(
            word, HistorySource.WEBHOOK, now, context="webhook e-2", event_id="e-2"
        )
        assert (await bakkt_sync.apply(session, txn, later, now=now)).verdict is (
            bakkt_sync.Verdict.HELD
        )
        await session.commit()
    async with factory() as session:
        # An operator's release, by whatever code clears the flag.
        txn = await funding_repo.lock_transaction(session, txn_id)
        assert txn is not None
        txn.held_for_review = False
        await session.commit()
    found = await events_about(engine, txn_id)
    assert [row.type for row in found] == [
        "transaction.held_for_review",
        "transaction.released",
    ]
    assert all(row.data["status"] == "SUBMITTING" for row in found)


async def test_a_late_commit_is_numbered_after_and_a_reader_past_the_early_one_still_gets_it(
    factory: Factory, engine: AsyncEngine
) -> None:
    party = f"late-{uuid.uuid4().hex[:10]}"
    t1, t2 = factory(), factory()
    try:
        # T1 writes its event first (what its commit hook sends) and does not commit yet.
        def t1_insert(sync: Any) -> None:
            repository.insert_events(
                sync.connection(),
                [
                    {
                        "id": events.new_event_id(),
                        "type": "party.active",
                        "version": 1,
                        "party_ref": party,
                        "subject_id": None,
                        "data": {"order": "first written"},
                    }
                ],
            )

        await t1.run_sync(t1_insert)
        # T2 writes after it, through the writer, and commits at once.
        events.record(
            t2,
            EventType.PARTY_SUSPENDED,
            party_ref=party,
            subject_id=None,
            data={"order": "second written"},
        )
        await t2.commit()
        # The sequencer runs while T1 is still open: it numbers T2's row only, and does not
        # wait for T1.
        async with asyncio.timeout(5):
            await sequence_pending(factory, batch=1000)
        async with factory() as reader:
            page = await events.read_page(reader, after=None, limit=500, party_ref=party)
        assert [e.data["order"] for e in page.events] == ["second written"]
        cursor = page.next

        await t1.commit()
        await sequence_pending(factory, batch=1000)
        async with factory() as reader:
            later = await events.read_page(reader, after=cursor, limit=500, party_ref=party)
        assert [e.data["order"] for e in later.events] == ["first written"]
    finally:
        await t1.close()
        await t2.close()
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT local_id, seq, data FROM events WHERE party_ref = :p ORDER BY seq"),
            {"p": party},
        )
        numbered = rows.all()
    # Inserted first, numbered second.
    assert [r.data["order"] for r in numbered] == ["second written", "first written"]
    assert numbered[1].local_id < numbered[0].local_id


async def test_concurrent_sequencers_number_every_committed_event_once_without_gaps(
    factory: Factory, engine: AsyncEngine
) -> None:
    parties = [f"nseq-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    async with factory() as session:
        before = await repository.head(session)

    async def writer(party: str) -> None:
        for n in range(10):
            async with factory() as session:
                events.record(
                    session,
                    EventType.PARTY_ACTIVE,
                    party_ref=party,
                    subject_id=None,
                    data={"n": n},
                )
                await session.commit()

    async def sequencer() -> None:
        for _ in range(30):
            await sequence_pending(factory, batch=7)

    await asyncio.gather(*(writer(p) for p in parties), *(sequencer() for _ in range(4)))
    while await sequence_pending(factory, batch=1000):
        pass
    async with engine.connect() as conn:
        mine = await conn.execute(
            text("SELECT party_ref, seq, data FROM events WHERE party_ref = ANY(:p) ORDER BY seq"),
            {"p": parties},
        )
        rows = mine.all()
        span = await conn.execute(
            text("SELECT count(*), min(seq), max(seq) FROM events WHERE seq > :b"), {"b": before}
        )
        count, low, high = span.one()
    assert len(rows) == 200
    assert all(r.seq is not None for r in rows)
    # One party's events keep their commit order.
    for party in parties:
        assert [r.data["n"] for r in rows if r.party_ref == party] == list(range(10))
    # Numbers are consecutive: nothing numbered twice, no hole a reader could wonder about.
    assert (low, high) == (before + 1, before + count)


async def test_a_writers_commit_wakes_the_sequencer_through_listen(
    factory: Factory, engine: AsyncEngine
) -> None:
    sequencer = Sequencer(factory, engine.url, batch=1000)
    try:
        await sequencer.cycle()
        assert sequencer.listener.listening
        assert not sequencer.wake.is_set()
        async with factory() as session:
            events.record(
                session,
                EventType.PARTY_ACTIVE,
                party_ref=f"wake-{uuid.uuid4().hex[:8]}",
                subject_id=None,
                data={},
            )
            await session.commit()
        async with asyncio.timeout(5):
            await sequencer.wake.wait()
    finally:
        await sequencer.close()


async def test_the_sequencer_job_runs_when_woken_long_before_its_poll() -> None:
    wake, ran = asyncio.Event(), asyncio.Event()

    async def cycle() -> int:
        wake.clear()
        ran.set()
        return 0

    # Far longer than the test: only the wake-ups can make it run.
    workers = Workers([Job("woken", 600.0, cycle, wake=wake)])
    workers.start()
    try:
        for _ in range(3):
            ran.clear()
            wake.set()
            async with asyncio.timeout(5):
                await ran.wait()
    finally:
        await workers.stop()
