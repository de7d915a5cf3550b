"""Events per second delivered by the partner webhook dispatcher to a local receiver.

    DATABASE_URL=postgresql://... python -m benchmarks.partner_webhooks [--events 20000]
        [--parties 1000] [--concurrency 64] [--batch 20]

A throwaway database is migrated and filled with numbered events (as the outbox and the
sequencer leave them); the receiver runs in a child process (aiohttp, answers 204 after reading
the body and checking the signature header is there); the dispatcher runs its cycles in this
process until every event is delivered. Prints events/s and the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import sys
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from aiohttp import web
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app import migrate
from app.config import Settings, normalize_database_url
from app.core.metrics import Metrics
from app.db import create_session_factory
from app.partner_webhooks.dispatcher import Dispatcher

SECRET = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQQ=="


def _receiver(port: int, ready: Connection) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        if "webhook-signature" not in request.headers:
            return web.Response(status=400)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", handle)
    ready.send(True)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _dsn(url: str) -> str:
    return str(make_url(url).set(drivername="postgresql").render_as_string(False))


async def run(events: int, parties: int, concurrency: int, batch: int) -> None:
    server = normalize_database_url(os.environ["DATABASE_URL"])
    name = f"fiat_onramp_whbench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(_dsn(server))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(server).set(database=name).render_as_string(False)
    port = _free_port()
    parent, child = multiprocessing.Pipe()
    receiver = multiprocessing.Process(target=_receiver, args=(port, child), daemon=True)
    receiver.start()
    parent.recv()
    engine = create_async_engine(url, pool_size=5)
    try:
        await migrate.upgrade_async(engine)
        conn = await asyncpg.connect(_dsn(url))
        await conn.execute(
            "INSERT INTO partner_webhook_endpoints (id, url, source, status, secrets) "
            "VALUES ($1, $2, 'admin', 'ENABLED', $3)",
            uuid.uuid4(),
            f"http://127.0.0.1:{port}/hooks",
            [SECRET],
        )
        await conn.execute(
            "INSERT INTO events (id, seq, type, version, party_ref, data) "
            "SELECT 'evt_B' || lpad(g::text, 26, '0'), g, 'transaction.completed', 1, "
            "'party-' || (g % $2), jsonb_build_object('id', g, 'status', 'COMPLETED', "
            "'amount', '25.00') FROM generate_series(1, $1) AS g",
            events,
            parties,
        )
        await conn.close()
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=url,
            partner_webhook_concurrency=concurrency,
            partner_webhook_batch=batch,
            partner_webhook_max_connections=concurrency,
        )
        dispatcher = Dispatcher(create_session_factory(engine), settings, metrics=Metrics())
        await asyncio.sleep(0.5)  # the receiver's socket
        load_before = os.getloadavg()
        started = time.perf_counter()
        cpu_started = time.process_time()
        sent = 0
        while True:
            done = await dispatcher.cycle()
            sent += done
            if done == 0:
                break
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        load_after = os.getloadavg()
        await dispatcher.aclose()
        conn = await asyncpg.connect(_dsn(url))
        delivered = await conn.fetchval(
            "SELECT count(*) FROM partner_webhook_deliveries WHERE state = 'DELIVERED'"
        )
        await conn.close()
        print(
            f"events {events}, parties {parties}, concurrency {concurrency}, batch {batch}: "
            f"delivered {delivered} ({sent} sends) in {elapsed:.2f} s = {delivered / elapsed:.0f}"
            f" events/s; the dispatcher's own CPU {cpu:.2f} s = {delivered / cpu:.0f} events per "
            f"CPU-second; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
            f"({os.cpu_count()} cores)"
        )
    finally:
        await engine.dispose()
        receiver.terminate()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--parties", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.events, args.parties, args.concurrency, args.batch))


if __name__ == "__main__":
    main()
