"""The service benchmark: the money paths under a partner's load, next to the floor of the stack.

    python -m benchmarks.service [--workers 1] [--driver auto|wrk|python] [--quick]
                                 [--json .data/bench/latest.json] [--profile]

Starts a throwaway Postgres database (DATABASE_URL's server, else 127.0.0.1:5432 when it answers,
else an embedded Postgres), the Bakkt sandbox with no faults sending its webhooks to the service,
the service (`fiat-onramp serve --workers N`) and the floor (`benchmarks/floor.py`, with a sandbox
of its own whose webhooks go to the floor), each its own process. Then drives them from another
process (wrk, else `benchmarks/load.py`) for fixed times and prints a table of the figures, the
ratios to the floor and the targets (PASS/MISS); the same figures go to a JSON file.
docs/performance.md says how to read them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import httpx

from benchmarks.load import DriveResult, PlannedRequest, run_plan, write_plan, wrk_available
from benchmarks.pg_activity import ActivitySampler
from benchmarks.stack import (
    REPO_ROOT,
    Child,
    clean_environment,
    cli,
    cpu_seconds,
    create_database,
    free_port,
    rss_mb,
)

DATA_DIR = REPO_ROOT / ".data" / "bench"
PARTNER_ID = "5f0c2b9e-6a3d-4c1e-9f7a-2d8e4b6a1c01"
SANDBOX_AUTH = ("dev-client", "dev-client-secret")
# The Plaid processor token the sandbox links at once (docs/sandbox.md, magic values).
PLAID_TOKEN = "processor-sandbox-ok"  # noqa: S105 - a sandbox magic value, not a secret
DEPOSIT_BODY = '{"amount":"25.00"}'
REDELIVERY_SHARE = 0.3
# Upper bound on webhook intake per second when sizing the event pool: past it the pool wraps
# around and every further delivery is a redelivery (the JSON says so under `pool_wrapped`).
MAX_INTAKE_PER_SECOND = 5000
# Limits high enough that no deposit of the run is ever refused (app/config.py).
NO_LIMIT = "1000000000"
# Rate limits that never refuse a request of the run, while the limiter still runs (its cost
# is part of what is measured).
NO_RATE_LIMIT = "1000000/second"


@dataclass(frozen=True)
class Sizes:
    # Sized so the whole run, start-up included, stays under three minutes.
    parties: int = 64
    connections: int = 32
    warmup: float = 3.0
    deposits: float = 12.0
    replays: float = 6.0
    webhooks: float = 8.0
    reads: float = 4.0  # each of the three kinds
    soak_requests: int = 100_000
    soak_max_seconds: float = 40.0
    # The soak may also take what the run's earlier steps left of this budget (start-up
    # included), so that a machine that answers the soak's mix at 1,500-2,500/s still reaches
    # 100,000 requests; the run stays under three minutes.
    run_budget_seconds: float = 170.0


# The smoke test's run. A phase lasts longer than the slowest answer a loaded 2-core machine
# gives (wrk drops the requests still in flight when its time is up).
QUICK = Sizes(
    parties=4,
    connections=4,
    warmup=2.0,
    deposits=3.0,
    replays=2.0,
    webhooks=2.0,
    reads=2.0,
    soak_requests=300,
    soak_max_seconds=3.0,
    run_budget_seconds=0.0,
)


def _dev_settings() -> Any:
    """The service's defaults, whatever this shell exports: the service runs with them."""
    from app.config import Settings

    defaults = {
        name: f.get_default(call_default_factory=True) for name, f in Settings.model_fields.items()
    }
    return Settings.model_construct(**defaults)


def _sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    # Standard Webhooks, computed here rather than with the service's own code (a benchmark that
    # signs with the verifier's function would not notice the two drifting apart).
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def webhook_plan(
    transactions: list[tuple[str, str, int]], count: int, secret: str, seed: int
) -> Iterator[PlannedRequest]:
    """`count` signed FIAT_EVENT deliveries about `transactions` (party, ref, cents): new events
    in turn, and a `REDELIVERY_SHARE` of the deliveries a resend of an earlier event."""
    rng = random.Random(seed)
    sent: list[PlannedRequest] = []
    timestamp = int(time.time())
    now = datetime.now(UTC)
    for _ in range(count):
        if sent and rng.random() < REDELIVERY_SHARE:
            yield sent[rng.randrange(len(sent))]
            continue
        party, ref, cents = transactions[len(sent) % len(transactions)]
        request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        body = json.dumps(
            {
                "requestId": request_id,
                "partnerPartyRef": party,
                "partnerWebhookType": "FIAT_EVENT",
                "eventTime": _iso(now),
                "partnerTransactionRef": ref,
                "relatedPartnerTransactionRef": None,
                "fiatTransactionType": "ACH_DEPOSIT",
                "transactionStatus": "COMPLETE",
                "amount": cents / 100,
                "currency": "USD",
                "reasonCode": None,
                "reasonDescription": None,
                "createdAt": _iso(now),
                "updatedAt": _iso(now),
            },
            separators=(",", ":"),
        )
        delivery = PlannedRequest(
            "POST",
            "/webhooks/bakkt",
            {
                "Content-Type": "application/json",
                "webhook-id": request_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": _sign(secret, request_id, timestamp, body.encode()),
            },
            body,
        )
        sent.append(delivery)
        yield delivery


@dataclass
class Phase:
    name: str
    result: DriveResult
    server_cpu_seconds: float
    postgres: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        figures = self.result.as_dict()
        figures["server_cpu_percent"] = (
            100 * self.server_cpu_seconds / self.result.seconds if self.result.seconds else 0.0
        )
        # The figure that moves least with the machine's load: what one request costs the
        # process under test (the service with everything it does meanwhile, webhooks and
        # recovery workers included; or the floor).
        figures["server_cpu_ms_per_request"] = (
            1000 * self.server_cpu_seconds / self.result.requests if self.result.requests else 0.0
        )
        figures["postgres"] = self.postgres
        figures["driver_cpu_percent"] = (
            100 * self.result.driver_cpu_seconds / self.result.seconds
            if self.result.seconds
            else 0.0
        )
        return figures


class Run:
    def __init__(self, args: argparse.Namespace, sizes: Sizes, db_url: str) -> None:
        self.args = args
        self.db_url = db_url
        self.sizes = sizes
        self.tag = uuid.uuid4().hex[:8]
        self.started = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="run-", dir=DATA_DIR))
        self.children: list[Child] = []
        self.phases: dict[str, Phase] = {}
        self.rss: dict[str, float] = {}
        self.rss_process: dict[str, float] = {}
        self.notes: list[str] = []
        self.profile: dict[str, Any] | None = None
        # Rows each deposit phase wrote: a fresh key per request means one per answer at least
        # (wrk drops the requests in flight at its end, which may still write theirs).
        self.created: dict[str, int] = {}

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        child = Child(name, args, env, self.dir)
        self.children.append(child)
        return child

    def drive(
        self,
        name: str,
        target: Child,
        base_url: str,
        plan: list[PlannedRequest],
        seconds: float,
    ) -> Phase:
        path = self.dir / f"{name}.plan"
        write_plan(path, plan)
        profiler = (
            _start_profiler(self, target, name, seconds) if self.args.profile == name else None
        )
        cpu_before = cpu_seconds(target.pid)
        with ActivitySampler(self.db_url) as sampler:
            result = run_plan(
                path,
                base_url,
                connections=self.sizes.connections,
                duration=seconds,
                driver=self.args.driver,
            )
        phase = Phase(
            name, result, cpu_seconds(target.pid) - cpu_before, sampler.summary(result.requests)
        )
        self.phases[name] = phase
        if profiler is not None:
            self.profile = _finish_profiler(self, profiler, name)
        self.log(
            f"{name:24} {result.per_second:9.1f}/s  p99 {result.p99_ms:8.1f} ms  "
            f"errors {result.errors}"
        )
        return phase


async def _link_service_parties(
    base_url: str, parties: list[str], tokens: dict[str, str], tag: str
) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        gate = asyncio.Semaphore(8)

        async def link(party: str) -> None:
            auth = {"Authorization": f"Bearer {tokens[party]}"}
            async with gate:
                resp = await http.post(
                    f"/v1/parties/{party}/bank-accounts",
                    json={"processorToken": PLAID_TOKEN},
                    headers={**auth, "Idempotency-Key": f"link-{tag}-{party}"},
                )
                if resp.status_code != 202:
                    raise RuntimeError(f"linking {party}: {resp.status_code} {resp.text}")
                deadline = time.monotonic() + 60
                # LINKED arrives with the sandbox's BANK_ACCOUNT_LINK webhook.
                while True:
                    items = (
                        await http.get(f"/v1/parties/{party}/bank-accounts", headers=auth)
                    ).json()["items"]
                    if items and items[0]["status"] == "LINKED":
                        return
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{party}'s bank account never became LINKED: {items}")
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(link(p) for p in parties))


async def _link_floor_parties(sandbox_url: str, parties: list[str]) -> None:
    async with httpx.AsyncClient(base_url=sandbox_url, timeout=30) as http:
        token = (
            await http.post(
                "/partner/v1/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=SANDBOX_AUTH,
            )
        ).json()["accessToken"]
        for party in parties:
            resp = await http.post(
                f"/partner/v1/partner/{PARTNER_ID}/party/{party}/plaidAccount/link",
                json={"processorToken": PLAID_TOKEN, "partnerTransactionRef": f"link-{party}"},
                headers={"Authorization": f"Bearer {token}"},
            )
            resp.raise_for_status()
            deadline = time.monotonic() + 30
            while (await http.get(f"/sandbox/parties/{party}")).json()["bankAccount"] is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the floor's sandbox never linked {party}")
                await asyncio.sleep(0.05)


async def _finished_deposits(
    base_url: str, parties: list[str], tokens: dict[str, str], tag: str
) -> list[PlannedRequest]:
    """One finished deposit per party: the requests the replay phase sends again."""
    plan = [
        PlannedRequest(
            "POST",
            f"/v1/parties/{party}/deposits",
            {
                "Authorization": f"Bearer {tokens[party]}",
                "Idempotency-Key": f"replay-{tag}-{party}",
                "Content-Type": "application/json",
            },
            DEPOSIT_BODY,
        )
        for party in parties
    ]
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        for req in plan:
            resp = await http.post(req.path, headers=dict(req.headers), content=req.body)
            if resp.status_code != 202:
                raise RuntimeError(f"the replay seed deposit got {resp.status_code}: {resp.text}")
    return plan


async def _count(db_url: str, table: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        count: int = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 - ours
        return count
    finally:
        await conn.close()


async def _service_rows(db_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(
            await conn.fetch(
                "SELECT DISTINCT ON (party_ref, bakkt_ref) party_ref, bakkt_ref, amount_cents, id "
                "FROM transactions WHERE type = 'DEPOSIT' ORDER BY party_ref, bakkt_ref"
            )
        )
    finally:
        await conn.close()


async def _floor_rows(db_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(
            await conn.fetch("SELECT party_ref, id::text AS ref, amount_cents FROM floor_transfers")
        )
    finally:
        await conn.close()


def _wait(child: Child, url: str) -> None:
    asyncio.run(child.wait_http(url))


def execute(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if args.quick else Sizes()
    if args.deposits is not None:
        sizes = replace(sizes, deposits=args.deposits)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    started = time.time()
    began = time.monotonic()
    load_start = os.getloadavg()
    db = asyncio.run(create_database(DATA_DIR, embedded_only=args.postgres == "embedded"))
    run = Run(args, sizes, db.url)
    run.started = began
    run.log(f"Postgres: {db.kind}, database {db.name}; logs and plans in {run.dir}")
    try:
        figures = _execute(run, db.url)
    finally:
        for child in reversed(run.children):
            child.stop()
        asyncio.run(db.drop())
    figures.update(
        started_at=datetime.fromtimestamp(started, UTC).isoformat(),
        seconds=round(time.time() - started, 1),
        machine={
            "nproc": os.cpu_count(),
            "loadavg_at_start": list(load_start),
            "loadavg_at_end": list(os.getloadavg()),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "postgres": db.kind,
        },
    )
    if not args.keep:
        shutil.rmtree(run.dir, ignore_errors=True)
    return figures


def _execute(run: Run, db_url: str) -> dict[str, Any]:
    args, sizes = run.args, run.sizes
    migrated = subprocess.run(  # noqa: S603 - fixed arguments, no shell
        [*cli(), "migrate"],
        env=clean_environment({"DATABASE_URL": db_url}),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if migrated.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{migrated.stdout}\n{migrated.stderr}")

    svc_port, sbx_port, floor_port, floor_sbx_port = (free_port() for _ in range(4))
    svc_url, floor_url = f"http://127.0.0.1:{svc_port}", f"http://127.0.0.1:{floor_port}"
    sbx_url, floor_sbx_url = f"http://127.0.0.1:{sbx_port}", f"http://127.0.0.1:{floor_sbx_port}"

    def sandbox_env(webhook_url: str) -> dict[str, str]:
        # ACH deposits complete after about a second (0.05 business days of 20 s), so each
        # deposit brings its PENDING and its COMPLETE webhook inside the phase that made it.
        return clean_environment(
            {"SANDBOX_WEBHOOK_URL": webhook_url, "SANDBOX_ACH_DEPOSIT_DAYS": "0.05"}
        )

    sandbox = run.start(
        "sandbox",
        [*cli(), "sandbox", "--port", str(sbx_port)],
        sandbox_env(f"{svc_url}/webhooks/bakkt"),
    )
    floor_sandbox = run.start(
        "floor-sandbox",
        [*cli(), "sandbox", "--port", str(floor_sbx_port)],
        sandbox_env(f"{floor_url}/webhooks/bakkt"),
    )
    service = run.start(
        "service",
        [*cli(), "serve", "--port", str(svc_port), "--workers", str(args.workers)],
        clean_environment(
            {
                "DATABASE_URL": db_url,
                "BAKKT_BASE_URL": sbx_url,
                "DEFAULT_LIMIT_PER_TRANSACTION": NO_LIMIT,
                "DEFAULT_LIMIT_PER_DAY": NO_LIMIT,
                "DEFAULT_LIMIT_PER_30_DAYS": NO_LIMIT,
                "RATE_LIMIT_READS": NO_RATE_LIMIT,
                "RATE_LIMIT_WRITES": NO_RATE_LIMIT,
                **dict(args.service_env),
            }
        ),
    )
    _wait(sandbox, f"{sbx_url}/sandbox/clock")
    _wait(floor_sandbox, f"{floor_sbx_url}/sandbox/clock")
    floor = run.start(
        "floor",
        [
            sys.executable,
            "-m",
            "benchmarks.floor",
            "--port",
            str(floor_port),
            "--database-url",
            db_url,
            "--bakkt-url",
            floor_sbx_url,
        ],
        clean_environment({}),
    )
    _wait(service, f"{svc_url}/readyz")
    _wait(floor, f"{floor_url}/")

    settings = _dev_settings()
    from app.auth.dev_token import mint_dev_token

    parties = [f"bench-{run.tag}-{i:03d}" for i in range(sizes.parties)]
    tokens = {p: mint_dev_token(settings, p, ttl_seconds=3600) for p in parties}
    run.log(f"linking {len(parties)} parties through the API")
    asyncio.run(_link_service_parties(svc_url, parties, tokens, run.tag))
    asyncio.run(_link_floor_parties(floor_sbx_url, parties))
    driver = (
        "wrk" if args.driver == "wrk" or (args.driver == "auto" and wrk_available()) else ("python")
    )
    run.log(f"driver: {driver}; {sizes.connections} connections; {args.workers} worker(s)")

    deposits = [
        PlannedRequest(
            "POST",
            f"/v1/parties/{p}/deposits",
            {
                "Authorization": f"Bearer {tokens[p]}",
                "Idempotency-Key": f"dep-{run.tag}-{{n}}",
                "Content-Type": "application/json",
            },
            DEPOSIT_BODY,
        )
        for p in parties
    ]
    warm = [
        replace(r, headers={**r.headers, "Idempotency-Key": f"warm-{run.tag}-{{n}}"})
        for r in deposits
    ]

    # Warm-up: imports, pools, caches and the first allocations, on both sides.
    run.drive("warmup", service, svc_url, warm, sizes.warmup)
    run.drive("floor_warmup", floor, floor_url, warm, sizes.warmup)
    run.rss["after_warmup"], run.rss_process["after_warmup"] = rss_mb(service.pid)

    before = asyncio.run(_count(db_url, "transactions"))
    run.drive("deposits", service, svc_url, deposits, sizes.deposits)
    run.created["deposits"] = asyncio.run(_count(db_url, "transactions")) - before
    before = asyncio.run(_count(db_url, "floor_transfers"))
    run.drive("floor_deposits", floor, floor_url, deposits, sizes.deposits)
    run.created["floor_deposits"] = asyncio.run(_count(db_url, "floor_transfers")) - before

    replays = asyncio.run(_finished_deposits(svc_url, parties, tokens, run.tag))
    run.drive("replays", service, svc_url, replays, sizes.replays)

    secret = settings.bakkt_webhook_secrets[0].get_secret_value()
    pool = int(MAX_INTAKE_PER_SECOND * sizes.webhooks)
    rows = asyncio.run(_service_rows(db_url))
    txns = [(r["party_ref"], r["bakkt_ref"], r["amount_cents"]) for r in rows]
    run.drive(
        "webhooks", service, svc_url, list(webhook_plan(txns, pool, secret, 11)), sizes.webhooks
    )
    floor_rows = asyncio.run(_floor_rows(db_url))
    floor_txns = [(r["party_ref"], r["ref"], r["amount_cents"]) for r in floor_rows]
    run.drive(
        "floor_webhooks",
        floor,
        floor_url,
        list(webhook_plan(floor_txns, pool, secret, 11)),
        sizes.webhooks,
    )

    detail_of: dict[str, str] = {}
    for r in rows:
        detail_of.setdefault(r["party_ref"], str(r["id"]))

    def reads(path: Callable[[str], str]) -> list[PlannedRequest]:
        return [
            PlannedRequest("GET", path(p), {"Authorization": f"Bearer {tokens[p]}"})
            for p in parties
        ]

    run.drive(
        "reads_transactions",
        service,
        svc_url,
        reads(lambda p: f"/v1/parties/{p}/transactions"),
        sizes.reads,
    )
    run.drive(
        "reads_detail",
        service,
        svc_url,
        reads(lambda p: f"/v1/parties/{p}/transactions/{detail_of[p]}"),
        sizes.reads,
    )
    run.drive(
        "reads_bank_accounts",
        service,
        svc_url,
        reads(lambda p: f"/v1/parties/{p}/bank-accounts"),
        sizes.reads,
    )
    run.rss["end"], run.rss_process["end"] = rss_mb(service.pid)

    # The soak: cheap requests through the whole middleware stack, one in twenty a database read.
    soak = [PlannedRequest("GET", "/healthz")] * 19 + reads(
        lambda p: f"/v1/parties/{p}/transactions/{detail_of[p]}"
    )[:1]
    soak_phase = _soak(run, service, svc_url, soak)
    run.rss["after_soak"], run.rss_process["after_soak"] = rss_mb(service.pid)
    if soak_phase.result.requests < sizes.soak_requests:
        run.notes.append(
            f"the soak stopped at its time cap after {soak_phase.result.requests} of "
            f"{sizes.soak_requests} requests"
        )
    return _figures(run, driver)


def _soak(run: Run, target: Child, base_url: str, plan: list[PlannedRequest]) -> Phase:
    """`soak_requests` requests (or as many as fit in `soak_max_seconds`, or in what the run has
    left of `run_budget_seconds` when that is longer), in chunks of a few
    seconds: the drivers run for a time, not for a count."""
    sizes = run.sizes
    path = run.dir / "soak.plan"
    write_plan(path, plan)
    chunks: list[DriveResult] = []
    cpu_before = cpu_seconds(target.pid)
    started = time.monotonic()
    # 5 s for what follows the soak: the last RSS reading, stopping the processes, the report.
    cap = max(sizes.soak_max_seconds, sizes.run_budget_seconds - (started - run.started) - 5.0)
    while sum(c.requests for c in chunks) < sizes.soak_requests:
        left = cap - (time.monotonic() - started)
        if left < 1:
            break
        done = sum(c.requests for c in chunks)
        rate = done / sum(c.seconds for c in chunks) if chunks else 0.0
        # The first chunk measures the rate; the next ones aim at what is still missing.
        want = (sizes.soak_requests - done) / rate + 1 if rate else 5.0
        chunks.append(
            run_plan(
                path,
                base_url,
                connections=sizes.connections,
                duration=max(1.0, min(left, want, 30.0)),
                driver=run.args.driver,
            )
        )
    latency_max = max(c.max_ms for c in chunks)
    statuses: Counter[str] = Counter()
    sockets: Counter[str] = Counter()
    for c in chunks:
        statuses.update(c.statuses)
        sockets.update(c.socket_errors)
    total = DriveResult(
        driver=chunks[0].driver,
        requests=sum(c.requests for c in chunks),
        seconds=sum(c.seconds for c in chunks),
        # Percentiles do not add up across chunks: the worst chunk's, an upper bound.
        p50_ms=max(c.p50_ms for c in chunks),
        p90_ms=max(c.p90_ms for c in chunks),
        p99_ms=max(c.p99_ms for c in chunks),
        max_ms=latency_max,
        statuses=dict(statuses),
        socket_errors=dict(sockets),
        driver_cpu_seconds=sum(c.driver_cpu_seconds for c in chunks),
        censored=sorted({name for c in chunks for name in c.censored}),
    )
    phase = Phase("soak", total, cpu_seconds(target.pid) - cpu_before)
    run.phases["soak"] = phase
    run.log(f"{'soak':24} {total.requests} requests in {total.seconds:.1f} s")
    return phase


def _start_profiler(
    run: Run, service: Child, phase: str, seconds: float
) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("--profile needs py-spy: `pip install py-spy` (in the dev extra)")
    out = run.dir / f"{phase}.profile.txt"
    return subprocess.Popen(  # noqa: S603 - fixed arguments, no shell
        [
            py_spy,
            "record",
            "--pid",
            str(service.pid),
            "--subprocesses",
            "--rate",
            "100",
            "--duration",
            str(max(1, round(seconds))),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(run.dir / "py-spy.log").open("wb"),
    )


def _finish_profiler(run: Run, profiler: subprocess.Popen[bytes], phase: str) -> dict[str, Any]:
    profiler.wait(timeout=60)
    raw = run.dir / f"{phase}.profile.txt"
    target = DATA_DIR / f"{phase}.profile.txt"
    shutil.copyfile(raw, target)
    return summarize_profile(raw, top=25) | {"raw": str(target), "phase": phase}


# Frames every request passes through (the server, the event loop, the ASGI stack): left out of
# the "total" ranking, where they would head every list without saying where the time goes.
_FRAMEWORK = (
    "uvicorn",
    "asyncio",
    "starlette",
    "fastapi",
    "app/cli.py",
    "fiat-onramp",
    "threading",
)


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """py-spy's raw output (collapsed stacks) summed by function: `total` is self + children
    (a function counts once per sample however deep it recurs), `self` the innermost frame,
    `self_by_package` the innermost frame's package. Shares are of the samples in which the
    service ran Python code."""
    self_samples: Counter[str] = Counter()
    total_samples: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        samples += count
        self_samples[frames[-1]] += count
        by_package[frames[-1].split("/", 1)[0].split(":", 1)[0]] += count
        for name in set(frames):
            if not name.startswith(_FRAMEWORK):
                total_samples[name] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "percent": round(100 * n / samples, 1)}
            for name, n in counter.most_common(top)
        ]

    return {
        "samples": samples,
        "total": share(total_samples),
        "self": share(self_samples),
        "self_by_package": share(by_package),
    }


def _frame_name(frame: str) -> str:
    # py-spy frames read "function (path/file.py:123)"; without the line number one function
    # is one entry.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{where}:{name}" if where else name


RSS_POINTS = ("after_warmup", "end", "after_soak")
TARGETS: list[tuple[str, str, Callable[[dict[str, Any]], float], Callable[[float], bool]]] = [
    ("deposits / floor", ">= 0.7", lambda f: f["ratios"]["deposits_vs_floor"], lambda v: v >= 0.7),
    ("deposits p99 ms", "<= 100", lambda f: f["service"]["deposits"]["p99_ms"], lambda v: v <= 100),
    ("deposits errors", "0", lambda f: f["service"]["deposits"]["errors"], lambda v: v == 0),
    (
        "webhooks / floor insert",
        ">= 0.5",
        lambda f: f["ratios"]["webhooks_vs_floor"],
        lambda v: v >= 0.5,
    ),
    ("webhooks p99 ms", "<= 50", lambda f: f["service"]["webhooks"]["p99_ms"], lambda v: v <= 50),
    (
        "replays / deposits",
        ">= 2",
        lambda f: f["ratios"]["replays_vs_deposits"],
        lambda v: v >= 2,
    ),
    (
        "slowest read / deposits",
        ">= 1",
        lambda f: f["ratios"]["reads_vs_deposits"],
        lambda v: v >= 1,
    ),
    (
        "RSS max MB (per process)",
        "< 200",
        lambda f: max(f["rss_mb"]["largest_process"][k] for k in RSS_POINTS),
        lambda v: v < 200,
    ),
    (
        "RSS growth %",
        "<= 10",
        lambda f: f["rss_mb"]["growth_percent"],
        lambda v: v <= 10,
    ),
]


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def _figures(run: Run, driver: str) -> dict[str, Any]:
    p = {name: phase.as_dict() for name, phase in run.phases.items()}
    for name, created in run.created.items():
        p[name]["transactions_created"] = created
    service = {
        "deposits": p["deposits"],
        "replays": p["replays"],
        "webhooks": p["webhooks"],
        "reads": {
            "transactions_list": p["reads_transactions"],
            "transaction_detail": p["reads_detail"],
            "bank_accounts": p["reads_bank_accounts"],
        },
        "soak": p["soak"],
        "warmup": p["warmup"],
    }
    floor = {"deposits": p["floor_deposits"], "webhooks": p["floor_webhooks"]}
    deposit_rate = p["deposits"]["per_second"]
    slowest_read = min(r["per_second"] for r in service["reads"].values())
    rss: dict[str, Any] = {k: round(v, 1) for k, v in run.rss.items()}
    rss["growth_percent"] = round(
        100 * (run.rss["after_soak"] - run.rss["after_warmup"]) / run.rss["after_warmup"], 1
    )
    rss["largest_process"] = {k: round(v, 1) for k, v in run.rss_process.items()}
    figures: dict[str, Any] = {
        "version": 1,
        "config": {
            "workers": run.args.workers,
            "driver": driver,
            "service_env": dict(run.args.service_env),
            **{f.name: getattr(run.sizes, f.name) for f in fields(run.sizes)},
        },
        "service": service,
        "floor": floor,
        "rss_mb": rss,
        "ratios": {
            "deposits_vs_floor": _ratio(deposit_rate, p["floor_deposits"]["per_second"]),
            "webhooks_vs_floor": _ratio(
                p["webhooks"]["per_second"], p["floor_webhooks"]["per_second"]
            ),
            "replays_vs_deposits": _ratio(p["replays"]["per_second"], deposit_rate),
            "reads_vs_deposits": _ratio(slowest_read, deposit_rate),
        },
        "webhook_pool": {
            "deliveries": int(MAX_INTAKE_PER_SECOND * run.sizes.webhooks),
            "redelivery_share": REDELIVERY_SHARE,
            "pool_wrapped": p["webhooks"]["requests"] > MAX_INTAKE_PER_SECOND * run.sizes.webhooks
            or p["floor_webhooks"]["requests"] > MAX_INTAKE_PER_SECOND * run.sizes.webhooks,
        },
        "notes": run.notes,
    }
    figures["targets"] = [
        {"name": name, "target": target, "value": get(figures), "pass": ok(get(figures))}
        for name, target, get, ok in TARGETS
    ]
    if run.profile is not None:
        figures[f"profile_{run.profile['phase']}"] = run.profile
    return figures


def render(figures: dict[str, Any]) -> str:
    lines: list[str] = []
    cfg, m = figures["config"], figures["machine"]
    lines.append(
        f"fiat-onramp benchmark: {cfg['workers']} worker(s), {cfg['connections']} connections, "
        f"{cfg['parties']} parties, driver {cfg['driver']}, Postgres {m['postgres']}"
    )
    lines.append(
        f"machine: {m['nproc']} cores, load average {m['loadavg_at_start'][0]:.2f} at start, "
        f"{m['loadavg_at_end'][0]:.2f} at end; run took {figures['seconds']} s"
    )
    header = (
        f"{'path':28} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'server cpu':>10} {'ms cpu/req':>10} {'driver cpu':>10}"
    )
    lines += ["", header, "-" * len(header)]
    rows = [
        ("deposits", figures["service"]["deposits"]),
        ("  floor: deposits", figures["floor"]["deposits"]),
        ("replays", figures["service"]["replays"]),
        ("webhook intake (30% redeliv.)", figures["service"]["webhooks"]),
        ("  floor: bare insert", figures["floor"]["webhooks"]),
        ("reads: transaction list", figures["service"]["reads"]["transactions_list"]),
        ("reads: transaction detail", figures["service"]["reads"]["transaction_detail"]),
        ("reads: bank accounts", figures["service"]["reads"]["bank_accounts"]),
        ("soak (healthz + detail)", figures["service"]["soak"]),
    ]

    def ms(r: dict[str, Any], name: str) -> str:
        # A percentile among the timed-out requests is at least the timeout: shown as ">".
        value = f"{r[name]:.1f}"
        return f">{r[name]:.0f}" if name in r.get("censored", ()) else value

    for label, r in rows:
        lines.append(
            f"{label[:28]:28} {r['per_second']:9.1f} {ms(r, 'p50_ms'):>8} {ms(r, 'p90_ms'):>8} "
            f"{ms(r, 'p99_ms'):>8} {r['errors']:7d} {r['server_cpu_percent']:9.0f}% "
            f"{r.get('server_cpu_ms_per_request', 0.0):10.2f} "
            f"{r['driver_cpu_percent']:9.0f}%"
        )
    lines += _postgres_lines(rows)
    statuses: defaultdict[str, int] = defaultdict(int)
    for key, count in figures["service"]["deposits"]["statuses"].items():
        statuses[key] += count
    lines.append(f"deposit statuses: {dict(statuses)}")
    rss = figures["rss_mb"]
    lines.append(
        f"service RSS: {rss['after_warmup']} MB after warm-up, {rss['end']} MB at the end, "
        f"{rss['after_soak']} MB after the soak ({figures['service']['soak']['requests']} "
        f"requests): {rss['growth_percent']:+.1f}%; largest process "
        f"{max(rss['largest_process'].values())} MB"
    )
    lines += ["", f"{'target':28} {'goal':>8} {'value':>10}  result"]
    for t in figures["targets"]:
        value = t["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        lines.append(
            f"{t['name']:28} {t['target']:>8} {shown:>10}  {'PASS' if t['pass'] else 'MISS'}"
        )
    for note in figures["notes"]:
        lines.append(f"note: {note}")
    profile = next((v for k, v in figures.items() if k.startswith("profile_")), None)
    if profile:
        phase = profile.get("phase", "deposits")
        lines += ["", f"py-spy, phase {phase} ({profile['samples']} samples), self+children:"]
        lines += [f"  {e['percent']:5.1f}%  {e['function']}" for e in profile["total"][:20]]
        lines += ["self time by package:"]
        lines += [
            f"  {e['percent']:5.1f}%  {e['function']}" for e in profile["self_by_package"][:10]
        ]
    return "\n".join(lines)


def _postgres_lines(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """pg_stat_activity during each phase (benchmarks/pg_activity.py): the mean number of the
    client's backends active and idle in a transaction, what the busy ones were doing, and
    their CPU per request."""
    lines = [
        "",
        "Postgres, per phase (pg_stat_activity every 100 ms; backends of the side under test):",
        f"{'path':28} {'active':>7} {'idle-tx':>7} {'pg ms/req':>9}  busy backends were",
    ]
    for label, r in rows:
        pg = r.get("postgres", {})
        side = "floor" if label.strip().startswith("floor") else "service"
        mine = pg.get(side)
        if not mine:
            continue
        backends = mine["backends"]
        top = ", ".join(f"{what} {share:.0f}%" for what, share in mine["not_idle"].items())
        lines.append(
            f"{label[:28]:28} {backends.get('active', 0.0):7.1f} "
            f"{backends.get('idle in transaction', 0.0):7.1f} "
            f"{mine['backend_cpu_ms_per_request']:9.2f}  {top[:140]}"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fiat-onramp bench", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the service")
    parser.add_argument("--driver", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--postgres",
        choices=("auto", "embedded"),
        default="auto",
        help="auto: DATABASE_URL's server, else 127.0.0.1:5432, else embedded; embedded: a "
        "private one even when the machine has a Postgres (one nobody else's load shares)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny phases (the smoke test)")
    parser.add_argument("--deposits", type=float, default=None, help="seconds of the deposit phase")
    parser.add_argument("--json", type=Path, default=DATA_DIR / "latest.json")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="deposits",
        default=None,
        metavar="PHASE",
        help="py-spy the service during one phase (default deposits; also replays, webhooks, "
        "reads_transactions, reads_detail, reads_bank_accounts, warmup)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's logs and plans")
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        type=_setting,
        metavar="NAME=VALUE",
        help="a setting of the service under test, for an experiment (repeatable); the figures "
        "record it under config.service_env",
    )
    return parser


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    if args.driver == "wrk" and not wrk_available():
        raise SystemExit("--driver wrk: wrk is not installed (apt-get install -y wrk)")
    figures = execute(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print()
    print(render(figures))
    print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
