"""Idle SSE streams: what 1,000 open `/events/stream` connections cost the service.

`python -m benchmarks.sse_idle [--streams 1000] [--idle 20]` runs `fiat-onramp serve` (one
worker, the recovery workers on, so the sequencer numbers what is written) against a throwaway
database, opens the streams from this process (one party each), waits for every stream's first
message, leaves them idle through at least one heartbeat, then writes one event per party in one
transaction and times how long until every stream has its own. Prints the service's RSS before
and after, its database connections, and the fan-out time, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from benchmarks.stack import (
    REPO_ROOT,
    Child,
    clean_environment,
    cli,
    create_database,
    free_port,
    rss_mb,
)


async def _stream(
    http: httpx.AsyncClient,
    party: str,
    token: str,
    opened: asyncio.Event,
    received: dict[str, float],
    counter: list[int],
    total: int,
    arrived: asyncio.Event,
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.stream("GET", f"/v1/parties/{party}/events/stream", headers=headers) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"{r.status_code} {r.text}")
        async for line in r.aiter_lines():
            if line == ": connected":
                counter[0] += 1
                if counter[0] == total:
                    opened.set()
            elif line.startswith("data: ") and party not in received:
                received[party] = time.monotonic()
                if len(received) == total:
                    arrived.set()


async def _connections(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        return int(found)
    finally:
        await conn.close()


async def _write_one_each(db_url: str, parties: list[str]) -> float:
    """One event per party, committed together; returns the commit's time (monotonic)."""
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            await conn.executemany(
                "INSERT INTO events (id, type, version, party_ref, data) "
                "VALUES ($1, 'party.active', 1, $2, '{}'::jsonb)",
                [(f"evt_{uuid.uuid4().hex[:26].upper()}", p) for p in parties],
            )
        return time.monotonic()
    finally:
        await conn.close()


async def run(streams: int, idle: float) -> dict[str, Any]:
    from app.auth.dev_token import mint_dev_token
    from app.config import Settings

    with tempfile.TemporaryDirectory(prefix="sse-idle-") as tmp:
        logs = Path(tmp)
        db = await create_database(logs)
        service: Child | None = None
        try:
            env = clean_environment({"DATABASE_URL": db.url})
            migrated = await asyncio.to_thread(
                subprocess.run,  # fixed arguments, no shell
                [*cli(), "migrate"],
                env=env,
                cwd=REPO_ROOT,
                capture_output=True,
                check=False,
            )
            if migrated.returncode != 0:
                raise RuntimeError(migrated.stderr.decode(errors="replace"))
            port = free_port()
            service = Child(
                "service",
                [*cli(), "serve", "--host", "127.0.0.1", "--port", str(port)],
                env,
                logs,
            )
            base = f"http://127.0.0.1:{port}"
            await service.wait_http(f"{base}/healthz")
            await asyncio.sleep(2)  # imports done, first requests' allocations settled
            rss_before = rss_mb(service.pid)[1]
            connections_before = await _connections(db.url)

            settings = Settings(_env_file=None)
            parties = [f"idle-{n:05d}" for n in range(streams)]
            tokens = [mint_dev_token(settings, p, ttl_seconds=3600) for p in parties]
            opened, arrived = asyncio.Event(), asyncio.Event()
            received: dict[str, float] = {}
            counter = [0]
            limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=0)
            # No read timeout: an idle stream is silent but for its heartbeats.
            timeout = httpx.Timeout(10.0, read=None)
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as http:
                started = time.monotonic()
                tasks = [
                    asyncio.create_task(
                        _stream(http, p, t, opened, received, counter, streams, arrived)
                    )
                    for p, t in zip(parties, tokens, strict=True)
                ]
                await asyncio.wait_for(opened.wait(), timeout=300)
                open_seconds = time.monotonic() - started
                await asyncio.sleep(idle)  # idle on purpose: heartbeats only
                rss_idle = rss_mb(service.pid)[1]
                connections_idle = await _connections(db.url)
                committed = await _write_one_each(db.url, parties)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), timeout=60)
                fan_out = (max(received.values()) - committed) if received else None
                delivered = len(received)
                rss_after = rss_mb(service.pid)[1]
                if delivered < streams:
                    sys.stderr.write(service.tail(80) + "\n")
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            return {
                "streams": streams,
                "idle_seconds": idle,
                "open_all_seconds": round(open_seconds, 2),
                "rss_mb": {
                    "before": round(rss_before, 1),
                    "idle_streams": round(rss_idle, 1),
                    "after_fan_out": round(rss_after, 1),
                    "per_stream_kb": round((rss_idle - rss_before) * 1024 / streams, 1),
                },
                "db_connections": {"before": connections_before, "idle": connections_idle},
                "fan_out": {
                    "events": streams,
                    "delivered": delivered,
                    "last_arrived_after_commit_s": None if fan_out is None else round(fan_out, 2),
                },
                "postgres": db.kind,
            }
        finally:
            if service is not None:
                service.stop()
            await db.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args()
    figures = asyncio.run(run(args.streams, args.idle))
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
