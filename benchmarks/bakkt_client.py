"""Transfers per second through the Bakkt client, for each transport, against the real sandbox.

    python -m benchmarks.bakkt_client [--requests 3000] [--concurrency 32] [--rounds 2]

The sandbox runs in a child process on an ephemeral port, so the client under test has its own
event loop and core, as it would in the service. Each round measures every transport once, in
turn; the figures go into docs/bakkt-client.md and decide `BakktConfig.transport`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, replace
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr

from app.bakkt import (
    BakktClient,
    BakktConfig,
    TransferDirection,
    TransferMethod,
    TransferRequest,
)

Transport = Literal["aiohttp", "httpx"]
TRANSPORTS: tuple[Transport, ...] = ("aiohttp", "httpx")


def _serve_sandbox(conn: Connection) -> None:
    from bakkt_sandbox.testing import running_sandbox

    async def main() -> None:
        # Frozen clock, no webhook target: the sandbox only does the transfer itself.
        async with running_sandbox(time_scale=0, webhook_url="") as sandbox:
            conn.send(
                (sandbox.base_url, sandbox.partner_id, sandbox.client_id, sandbox.client_secret)
            )
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    asyncio.run(main())


@dataclass
class Result:
    transport: Transport
    requests: int
    seconds: float
    latencies_ms: list[float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[q - 1]

    def line(self) -> str:
        return (
            f"{self.transport:8} {self.requests:6d} transfers in {self.seconds:6.2f} s  "
            f"{self.per_second:8.0f} transfers/s  p50 {self.percentile(50):6.2f} ms  "
            f"p99 {self.percentile(99):6.2f} ms"
        )


async def _measure(
    config: BakktConfig, transport: Transport, requests: int, concurrency: int, warmup: int
) -> Result:
    party = f"bench-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    async with BakktClient(replace(config, transport=transport)) as client:
        await client.link_ach(party, f"link-{run}", "123456789", "021000021", "CHECKING")

        async def worker(numbers: list[int], record: bool) -> None:
            while numbers:
                n = numbers.pop()
                ref = f"{run}-{n}"
                req = TransferRequest(
                    party_ref=party,
                    transaction_ref=ref,
                    idempotency_key=f"k-{ref}",
                    direction=TransferDirection.DEPOSIT,
                    method=TransferMethod.ACH,
                    amount=Decimal("25.00"),
                )
                started = time.perf_counter()
                await client.transfer(req)
                if record:
                    latencies.append((time.perf_counter() - started) * 1000)

        warm = list(range(warmup))
        await asyncio.gather(*(worker(warm, False) for _ in range(concurrency)))
        todo = list(range(warmup, warmup + requests))
        started = time.perf_counter()
        await asyncio.gather(*(worker(todo, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Result(transport, requests, elapsed, latencies)


async def _bench(config: BakktConfig, args: argparse.Namespace) -> dict[Transport, list[Result]]:
    results: dict[Transport, list[Result]] = {t: [] for t in TRANSPORTS}
    for round_no in range(1, args.rounds + 1):
        print(f"round {round_no}: {args.concurrency} concurrent callers")
        for transport in TRANSPORTS:
            result = await _measure(config, transport, args.requests, args.concurrency, args.warmup)
            results[transport].append(result)
            print("  " + result.line(), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured transfers per run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve_sandbox, args=(child,), daemon=True)
    server.start()
    try:
        base_url, partner_id, client_id, secret = parent.recv()
        config = BakktConfig(
            base_url=base_url,
            partner_id=partner_id,
            client_id=client_id,
            client_secret=SecretStr(secret),
        )
        results = asyncio.run(_bench(config, args))
    finally:
        parent.send("stop")
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()

    print("\nmedian over rounds:")
    for transport, runs in results.items():
        rate = statistics.median(r.per_second for r in runs)
        p50 = statistics.median(r.percentile(50) for r in runs)
        p99 = statistics.median(r.percentile(99) for r in runs)
        print(f"  {transport:8} {rate:8.0f} transfers/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    fastest = max(results, key=lambda t: statistics.median(r.per_second for r in results[t]))
    print(f"fastest: {fastest}")


if __name__ == "__main__":
    main()
