"""What the outbox adds to one state change: a micro-measurement for a machine too loaded for
`make bench`.

`python -m benchmarks.outbox_cost [--moves 2000]` makes a throwaway database and times the
commit of the same move (lock the transaction, `state.transition`, commit: the shape of every
step of a deposit) with the event written, and with the writer switched off; interleaved in
rounds, so the machine's load falls on both alike. Prints per-move times, the statements sent,
and the rendering of one event alone, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from benchmarks.stack import create_database


async def run(moves: int, rounds: int) -> dict[str, Any]:
    from app import migrate
    from app.config import Settings
    from app.db import create_engine, create_session_factory
    from app.events import service as events
    from app.funding import repository as repo
    from app.funding.models import HistorySource, TransactionStatus
    from app.funding.schemas import dump
    from app.funding.state import transition
    from app.funding.views import transaction_out

    with tempfile.TemporaryDirectory(prefix="outbox-cost-") as tmp:
        db = await create_database(Path(tmp))
        url = db.url.replace("postgresql://", "postgresql+asyncpg://", 1)
        try:
            admin = create_async_engine(url)
            await migrate.upgrade_async(admin)
            await admin.dispose()
            engine = create_engine(Settings(_env_file=None, database_url=url))
            factory = create_session_factory(engine)
            ids = [uuid.uuid4() for _ in range(moves)]
            async with engine.begin() as conn:
                await conn.execute(
                    text("INSERT INTO parties (party_ref, status) VALUES ('cost', 'ACTIVE')")
                )
                await conn.execute(
                    text(
                        "INSERT INTO transactions (id, party_ref, type, method, origin, status, "
                        "amount_cents, currency, bakkt_ref) SELECT id, 'cost', 'DEPOSIT', 'ACH', "
                        "'PARTNER', 'SUBMITTING', 1000, 'USD', id::text "
                        "FROM unnest(CAST(:ids AS uuid[])) AS id"
                    ),
                    {"ids": ids},
                )
            sent: list[str] = []

            def count(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
                sent.append(statement)

            async def move(ident: uuid.UUID, target: TransactionStatus) -> None:
                async with factory() as session:
                    txn = await repo.lock_transaction(session, ident)
                    assert txn is not None
                    transition(session, txn, target, source=HistorySource.API)
                    await session.commit()

            per_move: dict[str, list[float]] = {"with_event": [], "without_event": []}
            statements: dict[str, int] = {}
            chunk = moves // (2 * rounds)
            targets = iter(ids)
            for _ in range(rounds):
                for mode in ("with_event", "without_event"):
                    if mode == "without_event":
                        sa_event.remove(Session, "before_commit", events._write_queued)
                    sent.clear()
                    sa_event.listen(engine.sync_engine, "before_cursor_execute", count)
                    started = time.perf_counter()
                    for _ in range(chunk):
                        await move(next(targets), TransactionStatus.PENDING)
                    per_move[mode].append((time.perf_counter() - started) / chunk * 1000)
                    sa_event.remove(engine.sync_engine, "before_cursor_execute", count)
                    statements[mode] = len(sent) // chunk
                    if mode == "without_event":
                        sa_event.listen(Session, "before_commit", events._write_queued)

            async with factory() as session:
                sample = await repo.lock_transaction(session, ids[0])
                assert sample is not None
                render_us = (
                    min(timeit.repeat(lambda: dump(transaction_out(sample)), number=2000, repeat=5))
                    / 2000
                    * 1e6
                )
                await session.rollback()
            await engine.dispose()
            with_ms = statistics.median(per_move["with_event"])
            without_ms = statistics.median(per_move["without_event"])
            return {
                "moves_each": chunk * rounds,
                "rounds": rounds,
                "ms_per_move_median_of_rounds": {
                    "with_event": round(with_ms, 3),
                    "without_event": round(without_ms, 3),
                    "added": round(with_ms - without_ms, 3),
                    "added_percent": round((with_ms - without_ms) / without_ms * 100, 1),
                },
                "statements_per_move": statements,
                "render_one_event_us": round(render_us, 1),
                "postgres": db.kind,
            }
        finally:
            await db.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    figures = asyncio.run(run(args.moves, args.rounds))
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
