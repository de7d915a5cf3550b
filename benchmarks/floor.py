"""The floor: a bare FastAPI app doing only what a deposit and a webhook cannot avoid.

    python -m benchmarks.floor --port P --database-url postgresql://... --bakkt-url http://...

- `POST /v1/parties/{party}/deposits`: one INSERT (asyncpg), one POST `/transfer` to the sandbox
  (aiohttp, one token fetched at start-up), one UPDATE. No auth, no idempotency, no history, no
  limits: whatever the service spends beyond this is the price of its guarantees and its code.
- `POST /webhooks/bakkt`: one INSERT ... ON CONFLICT DO NOTHING of the event, and for a new one an
  UPDATE of the transfer it names. No signature check.

The benchmark drives it exactly as it drives the service (same request plan, same driver), so
the ratio of the two is a property of the service's code, not of the machine.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

PARTNER_ID = "5f0c2b9e-6a3d-4c1e-9f7a-2d8e4b6a1c01"
CLIENT_ID = "dev-client"
CLIENT_SECRET = "dev-client-secret"  # noqa: S105 - the sandbox's development credentials

SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_transfers (
    id bigserial PRIMARY KEY,
    party_ref text NOT NULL,
    amount_cents bigint NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS floor_events (
    request_id text PRIMARY KEY,
    transaction_ref text,
    body text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
"""
INSERT_TRANSFER = (
    "INSERT INTO floor_transfers (party_ref, amount_cents, status) "
    "VALUES ($1, $2, 'SUBMITTING') RETURNING id"
)
UPDATE_TRANSFER = "UPDATE floor_transfers SET status = $2, updated_at = now() WHERE id = $1"
INSERT_EVENT = (
    "INSERT INTO floor_events (request_id, transaction_ref, body) VALUES ($1, $2, $3) "
    "ON CONFLICT (request_id) DO NOTHING"
)


def create_floor_app(database_url: str, bakkt_url: str, pool_size: int) -> FastAPI:
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            database_url,
            min_size=1,
            max_size=pool_size,
            # How the benchmark tells the floor's backends from the service's.
            server_settings={"application_name": "fiat-floor"},
        )
        async with pool.acquire() as conn:
            await conn.execute(SCHEMA)
        http = aiohttp.ClientSession(
            base_url=bakkt_url,
            connector=aiohttp.TCPConnector(limit=64),
            timeout=aiohttp.ClientTimeout(total=10),
        )
        async with http.post(
            "/partner/v1/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=aiohttp.BasicAuth(CLIENT_ID, CLIENT_SECRET),
        ) as resp:
            resp.raise_for_status()
            token = (await resp.json())["accessToken"]
        state.update(pool=pool, http=http, auth=f"Bearer {token}")
        try:
            yield
        finally:
            await http.close()
            await pool.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None)

    @app.post("/v1/parties/{party}/deposits")
    async def deposit(party: str, request: Request) -> Response:
        body = await request.json()
        cents = round(float(body["amount"]) * 100)
        pool: asyncpg.Pool = state["pool"]
        txn_id = await pool.fetchval(INSERT_TRANSFER, party, cents)
        async with state["http"].post(
            f"/partner/v1/partner/{PARTNER_ID}/party/{party}/transfer",
            json={
                "partnerTransactionRef": str(txn_id),
                "idempotencyKey": f"floor-{txn_id}",
                "fiatTransactType": "DEPOSIT",
                "instrumentType": "ACH",
                "amount": cents / 100,
                "currency": "USD",
            },
            headers={"Authorization": state["auth"]},
        ) as resp:
            await resp.read()
            status = "PENDING" if resp.status < 300 else "FAILED"
        await pool.execute(UPDATE_TRANSFER, txn_id, status)
        return JSONResponse({"id": txn_id, "status": status}, status_code=202)

    @app.post("/webhooks/bakkt")
    async def webhook(request: Request) -> Response:
        raw = await request.body()
        event = json.loads(raw)
        ref = event.get("partnerTransactionRef")
        pool: asyncpg.Pool = state["pool"]
        async with pool.acquire() as conn:
            inserted = await conn.execute(INSERT_EVENT, event["requestId"], ref, raw.decode())
            status = event.get("transactionStatus")
            if inserted.endswith(" 1") and status and ref and ref.isdigit():
                await conn.execute(UPDATE_TRANSFER, int(ref), status)
        return Response(status_code=204)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--bakkt-url", required=True)
    # The service's pool (DB_POOL_SIZE + DB_MAX_OVERFLOW by default): the same bound here.
    parser.add_argument("--pool-size", type=int, default=20)
    args = parser.parse_args()
    uvicorn.run(
        create_floor_app(args.database_url, args.bakkt_url, args.pool_size),
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
