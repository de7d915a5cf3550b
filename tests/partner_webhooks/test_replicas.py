"""N replicas: two dispatchers on their own connection pools share one endpoint's lanes (SKIP
LOCKED claims, leases) and every event still goes out once, in order per party. Data is
committed, so the parties and the endpoint are this test's own; the endpoint is disabled at the
end so that no later test's workers send to its closed port."""

from __future__ import annotations

import asyncio
import json
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.core.metrics import Metrics
from app.db import create_session_factory
from app.partner_webhooks.dispatcher import Dispatcher
from tests.partner_webhooks.conftest import SECRET_A, Receiver


async def test_two_replicas_deliver_every_event_once_in_party_order(
    engine: AsyncEngine, wsettings: Settings, receiver: Receiver
) -> None:
    run = uuid.uuid4().hex[:8]
    parties = [f"pw-rep-{run}-{i:02d}" for i in range(12)]
    endpoint = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO partner_webhook_endpoints (id, url, source, status, secrets, "
                "fanout_seq) VALUES (:id, :url, 'admin', 'ENABLED', :s, "
                "(SELECT coalesce(max(seq), 0) FROM events))"
            ),
            {"id": endpoint, "url": receiver.url, "s": [SECRET_A]},
        )
    written: dict[str, list[str]] = {p: [] for p in parties}
    for n in range(8):
        async with engine.begin() as conn:
            for p in parties:
                event_id = f"evt_R{uuid.uuid4().hex[:25].upper()}"
                written[p].append(event_id)
                await conn.execute(
                    text(
                        "INSERT INTO events (id, seq, type, version, party_ref, data) VALUES "
                        "(:id, (SELECT coalesce(max(seq), 0) + 1 FROM events), "
                        "'transaction.completed', 1, :p, CAST(:d AS jsonb))"
                    ),
                    {"id": event_id, "p": p, "d": json.dumps({"n": n})},
                )
    factory = create_session_factory(engine)
    replicas = [
        Dispatcher(
            factory,
            wsettings.model_copy(update={"partner_webhook_batch": 3}),
            metrics=Metrics(),
        )
        for _ in range(2)
    ]
    try:
        for _ in range(20):
            sent = await asyncio.gather(*(r.cycle() for r in replicas))
            if sum(sent) == 0 and len(receiver.delivered) >= 8 * len(parties):
                break
    finally:
        for r in replicas:
            await r.aclose()
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE partner_webhook_endpoints SET status = 'DISABLED' WHERE id = :id"),
                {"id": endpoint},
            )

    for p in parties:
        assert receiver.ids_of(p) == written[p]
    assert len(receiver.received) == 8 * len(parties)  # none twice
