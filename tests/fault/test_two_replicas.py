"""Scenario 8: two service replicas, workers on in both, behind a round-robin load balancer in
front of one Postgres; Bakkt's webhooks come through the balancer too. The partner app opens a
connection per request, so the balancer spreads requests as an ingress would. Under steady load from
careful clients (the same key, exponential backoff, a 40 s budget) one replica is SIGKILLed and
started again some seconds later. Its requests in flight die with it; their retries land on the
other replica, which takes each dead claim over once the dead process's heartbeat is stale and
resumes it with the same Bakkt key. Nothing may be doubled at Bakkt, nothing lost, and every
deposit must get a definite answer."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app.config import Settings
from bakkt_sandbox.testing import SandboxControl
from tests.fault.conftest import _FAILED, LOG_LEVEL, SANDBOX_ENV, SERVICE_ENV, record_figures
from tests.fault.harness import (
    ManagedProcess,
    PartnerApp,
    PostgresCluster,
    RoundRobinProxy,
    SteadyLoad,
    answer_kinds,
    bad_answers,
    clean_environment,
    env_float,
    free_port,
    recovery_figures,
    run_cli,
    tail,
    wait_until_healed,
)

pytestmark = pytest.mark.fault

LOAD_BEFORE_KILL = env_float("FAULT_REPLICA_LOAD_BEFORE_KILL", 6.0)
DEAD_FOR = env_float("FAULT_REPLICA_DEAD_FOR", 8.0)
LOAD_AFTER_RESTART = env_float("FAULT_REPLICA_LOAD_AFTER_RESTART", 6.0)
CLIENTS = 10
PARTIES = 8


@dataclass
class Replicas:
    dsn: str
    workdir: Path
    sandbox: ManagedProcess
    control: SandboxControl
    services: list[ManagedProcess]
    proxy: RoundRobinProxy
    app: PartnerApp

    def settings(self) -> Settings:
        fields = {name.upper(): name for name in Settings.model_fields}
        env = self.services[0].env
        return Settings(_env_file=None, **{fields[k]: v for k, v in env.items() if k in fields})  # type: ignore[call-arg]

    def logs(self) -> str:
        parts = [f"--- {s.name} ({s.log}) ---\n{tail(s.log, 40)}" for s in self.services]
        return "\n".join([*parts, f"--- sandbox ---\n{tail(self.sandbox.log, 20)}"])


@pytest.fixture
async def replicas(
    pg_cluster: PostgresCluster, request: pytest.FixtureRequest, tmp_path_factory: Any
) -> AsyncIterator[Replicas]:
    workdir = Path(tmp_path_factory.mktemp("replicas"))
    dsn = await pg_cluster.create_database(f"fault_{uuid.uuid4().hex[:12]}")
    ports = [free_port(), free_port()]
    proxy = RoundRobinProxy(ports)
    await proxy.start()
    sandbox_port = free_port()
    sandbox = ManagedProcess(
        "sandbox",
        ["sandbox", "--port", str(sandbox_port)],
        clean_environment(
            {**SANDBOX_ENV, "SANDBOX_WEBHOOK_URL": f"{proxy.base_url}/webhooks/bakkt"}
        ),
        workdir,
        sandbox_port,
    )
    env = clean_environment(
        {
            **SERVICE_ENV,
            "LOG_LEVEL": LOG_LEVEL,
            "DATABASE_URL": dsn,
            "BAKKT_BASE_URL": sandbox.base_url,
            "WORKERS_ENABLED": "true",
        }
    )
    services = [
        ManagedProcess(f"replica-{n}", ["serve", "--port", str(port)], env, workdir, port)
        for n, port in enumerate(ports)
    ]
    code, out = await run_cli(["migrate"], env, workdir)
    assert code == 0, out
    sandbox.start()
    await sandbox.wait_http("/sandbox")
    for service in services:
        service.start()
    for service in services:
        await service.wait_http("/readyz")
    stack = Replicas(
        dsn, workdir, sandbox, SandboxControl(sandbox.base_url), services, proxy,
        PartnerApp(proxy.base_url, keep_alive=False),
    )  # fmt: skip
    yield stack
    if request.node.stash.get(_FAILED, False):
        print(f"\n===== two replicas =====\n{stack.logs()}")  # noqa: T201
    await stack.app.aclose()
    await stack.control.aclose()
    await proxy.aclose()
    for service in services:
        service.terminate()
    sandbox.terminate()


async def _serving_processes(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM service_processes WHERE kind = 'serve'"
        )
        return count
    finally:
        await conn.close()


async def test_one_of_two_replicas_killed_under_load_loses_and_doubles_nothing(
    replicas: Replicas,
) -> None:
    stack = replicas
    victim, survivor = stack.services
    run = uuid.uuid4().hex[:8]
    parties = [f"f7-{run}-{i:02d}" for i in range(PARTIES)]
    for party in parties:
        await stack.app.link_bank_account(party)

    load = SteadyLoad(stack.app, parties, CLIENTS, careful=CLIENTS)
    load.start()
    await asyncio.sleep(LOAD_BEFORE_KILL)
    victim.kill()
    killed_at = time.monotonic()
    before_kill = dict(stack.proxy.connections)
    await asyncio.sleep(DEAD_FOR)
    # Connections begun once it was dead (kill() returns after the process is gone): every one
    # to it is refused. One begun just before may still complete into its backlog and be
    # counted after the kill; that one is not "while dead".
    while_dead = stack.proxy.taken_between(killed_at, time.monotonic())
    victim.start()
    restart_to_ready = await victim.wait_http("/readyz")
    restarted = dict(stack.proxy.connections)
    await asyncio.sleep(LOAD_AFTER_RESTART)
    await load.stop()
    after_restart = {
        p: stack.proxy.connections[p] - restarted.get(p, 0) for p in stack.proxy.backends
    }
    deposits = load.deposits

    cfg = stack.settings()
    cycle = max(cfg.recovery_settle_interval, cfg.recovery_sweep_interval) * 1.2
    bound = (
        max(cfg.process_stale_after, cfg.recovery_submitting_grace, cfg.recovery_claim_lease)
        + 2 * cycle
        + 10
    )
    report, _ = await wait_until_healed(stack.dsn, stack.control, deposits, parties, 120)
    healed_after_kill = time.monotonic() - killed_at
    careful_undecided = [d for d in deposits if d.status is None]
    waits = [d.answered_after for d in deposits if d.answered_after is not None]
    healing = await recovery_figures(stack.dsn, parties)
    processes = await _serving_processes(stack.dsn)
    figures = {
        **report.figures(),
        **healing,
        "answers to the partner app": answer_kinds(stack.app.answers),
        "careful deposits (same key, backoff, 40 s budget)": len(deposits),
        "careful deposits without a definite answer": len(careful_undecided),
        "careful: slowest definite answer (s)": round(max(waits, default=0.0), 1),
        "connections per replica before the kill": [
            before_kill.get(p, 0) for p in stack.proxy.backends
        ],
        "connections per replica while one was dead": list(while_dead.values()),
        "connections per replica after the restart": list(after_restart.values()),
        "connections refused at the balancer": sum(stack.proxy.refused.values()),
        "connections no replica took": stack.proxy.unserved,
        "restart to ready (s)": round(restart_to_ready, 1),
        "healed after the kill (s)": round(healed_after_kill, 1),
        "allowed after the kill (longest lease + two cycles + 10 s + the load)": round(
            bound + DEAD_FOR + LOAD_AFTER_RESTART + restart_to_ready, 1
        ),
        "serving processes registered": processes,
    }
    record_figures("8. two replicas behind a balancer, one SIGKILLed under load", figures)

    problems = report.problems()
    if careful_undecided:
        problems.append(f"{len(careful_undecided)} careful deposits got no definite answer")
    if [d for d in deposits if d.status != 202]:
        problems.append(
            f"not every deposit accepted: {[d.status for d in deposits if d.status != 202][:5]}"
        )
    if bad_answers(stack.app.answers):
        problems.append(f"bad answers: {bad_answers(stack.app.answers)[:3]}")
    if min(before_kill.get(p, 0) for p in stack.proxy.backends) == 0:
        problems.append(f"one replica served nothing before the kill: {before_kill}")
    if while_dead[victim.port] != 0 or while_dead[survivor.port] == 0:
        problems.append(f"the survivor did not carry the load alone: {while_dead}")
    if after_restart[victim.port] == 0:
        problems.append(f"the restarted replica got no connection: {after_restart}")
    if processes < 3:
        problems.append(f"{processes} serving processes registered, expected both and the restart")
    if (
        healed_after_kill
        > figures["allowed after the kill (longest lease + two cycles + 10 s + the load)"]
    ):
        problems.append(f"healed {healed_after_kill:.0f} s after the kill")
    assert problems == []
