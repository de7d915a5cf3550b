"""The worker runner: loops that survive failures and database outages, skip Bakkt work while the
circuit is open, stop promptly; in the service's lifespan and as `fiat-onramp worker`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bakkt import BakktClient
from app.bakkt.breaker import CircuitBreaker
from app.config import Settings
from app.core.metrics import Metrics
from app.main import create_app
from app.recovery.worker import Job, Workers
from tests.recovery.helpers import counter_by_label

REPO_ROOT = Path(__file__).resolve().parents[2]


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a condition of the loops, not for a time: on a loaded machine a loop may run
    later than its interval says, never sooner."""
    for _ in range(1500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the workers never got there in 15 s")


async def test_job_loops_survive_errors_and_database_outages_and_stop_promptly() -> None:
    calls = {"ok": 0, "broken": 0, "outage": 0, "slow": 0}

    async def ok() -> int:
        calls["ok"] += 1
        return 0

    async def broken() -> int:
        calls["broken"] += 1
        raise RuntimeError("a bug in one cycle")

    async def outage() -> int:
        calls["outage"] += 1
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    async def slow() -> int:
        calls["slow"] += 1
        await asyncio.sleep(60)  # a Bakkt call that hangs
        return 0

    metrics = Metrics()
    workers = Workers(
        [
            Job("ok", 0.01, ok),
            Job("broken", 0.01, broken),
            Job("outage", 0.01, outage),
            Job("slow", 0.01, slow),
        ],
        metrics=metrics,
    )
    workers.start()
    # The second try of a failing job comes after a 1 s backoff; the third would take 2 s more.
    await until(
        lambda: (
            calls["ok"] > 10
            and calls["broken"] >= 2
            and calls["outage"] >= 2
            and calls["slow"] == 1
        )
    )
    assert workers.running

    started = time.perf_counter()
    await workers.stop(grace=0.2)

    assert time.perf_counter() - started < 1.0
    assert not workers.running
    assert calls["ok"] > 10
    # Failing cycles back off (1, 2, 4 s ...) rather than spin, and keep being retried.
    assert 2 <= calls["broken"] <= 3
    assert 2 <= calls["outage"] <= 3
    assert calls["slow"] == 1
    errors = counter_by_label(metrics, "job_errors_total", "cause")
    assert errors["error"] == calls["broken"]
    assert errors["database"] == calls["outage"]


async def test_a_full_batch_runs_again_at_once() -> None:
    sizes = [5, 5, 5, 0]
    seen: list[int] = []
    stamps: list[float] = []

    async def cycle() -> int:
        stamps.append(time.monotonic())
        seen.append(sizes[min(len(seen), len(sizes) - 1)])
        return seen[-1]

    workers = Workers([Job("batch", 0.5, cycle, full_batch=5)])
    workers.start()
    await until(lambda: len(seen) >= 4)
    await workers.stop()
    assert seen[:4] == [5, 5, 5, 0]
    # Without the full-batch rule each of these would have waited at least 0.4 s.
    assert stamps[3] - stamps[0] < 0.4


async def test_bakkt_jobs_are_skipped_while_the_circuit_is_open() -> None:
    ran = {"bakkt": 0, "local": 0}

    async def bakkt_job() -> int:
        ran["bakkt"] += 1
        return 0

    async def local_job() -> int:
        ran["local"] += 1
        return 0

    breaker = CircuitBreaker(failure_threshold=1, cooldown=60)
    breaker.record_failure()
    metrics = Metrics()
    workers = Workers(
        [Job("settle", 0.01, bakkt_job, uses_bakkt=True), Job("retention", 0.01, local_job)],
        breaker=breaker,
        metrics=metrics,
    )
    workers.start()
    await until(
        lambda: (
            ran["local"] > 3
            and metrics.value("recovery_skipped_circuit_open_total", worker="settle") > 3
        )
    )
    await workers.stop()
    assert ran["bakkt"] == 0
    assert ran["local"] > 3
    assert metrics.value("recovery_skipped_circuit_open_total", worker="settle") > 3


async def test_lifespan_runs_the_workers_only_when_enabled(
    settings: Settings, engine: AsyncEngine, bakkt: BakktClient
) -> None:
    def recovery_tasks() -> set[str]:
        return {t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("recovery:")}

    quiet = {
        "recovery_settle_interval": 3600.0,
        "recovery_sweep_interval": 3600.0,
        "recovery_rematch_interval": 3600.0,
        "retention_interval": 3600.0,
        "recovery_link_expiry_interval": 3600.0,
    }
    enabled = create_app(
        settings.model_copy(update={"workers_enabled": True, **quiet}), engine=engine, bakkt=bakkt
    )
    async with enabled.router.lifespan_context(enabled):
        assert recovery_tasks() == {
            "recovery:settle",
            "recovery:sweep",
            "recovery:rematch_webhooks",
            "recovery:reconcile",
            "recovery:retention",
            "recovery:expire_links",
            "recovery:heartbeat",
            "recovery:sequence_events",
            "recovery:partner_webhooks",
            "recovery:partner_webhook_retention",
        }
    assert recovery_tasks() == set()

    disabled = create_app(settings, engine=engine, bakkt=bakkt)
    async with disabled.router.lifespan_context(disabled):
        assert recovery_tasks() == set()


async def test_metrics_route_renders_the_counters(client: httpx.AsyncClient) -> None:
    app_metrics: Metrics = client._transport.app.state.metrics  # type: ignore[attr-defined]
    app_metrics.inc("recovery_drift_total", 2, kind="status")

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE fiat_onramp_recovery_drift_total counter" in response.text
    assert 'fiat_onramp_recovery_drift_total{kind="status"}' in response.text


async def test_worker_command_runs_until_sigterm(database_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        # Nothing answers there: a cycle that did fall due could change nothing.
        "BAKKT_BASE_URL": "http://127.0.0.1:9",
        "FIAT_ONRAMP_MIGRATIONS": str(REPO_ROOT / "migrations"),
        # Started, but no cycle falls due while the test looks: it must not touch shared rows.
        "RECOVERY_SETTLE_INTERVAL": "3600",
        "RECOVERY_SWEEP_INTERVAL": "3600",
        "RECOVERY_REMATCH_INTERVAL": "3600",
        "RETENTION_INTERVAL": "3600",
        "RECONCILE_INTERVAL_HOURS": "24",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "worker",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            while b"recovery workers started" not in await proc.stderr.readline():
                assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            _, rest = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert b"recovery workers stopped" in rest
