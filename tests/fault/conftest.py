"""Fixtures of the fault suite: one private Postgres cluster per run, and per scenario its own
database, sandbox process and service process. The figures of every scenario are printed at
the end of the run.

The suite runs only when asked for (`make fault`, i.e. `-m fault`, or FAULT_SUITE=1): it takes
minutes, and `make test` stays the quick suite.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from bakkt_sandbox.testing import SandboxControl
from tests.fault.harness import (
    ManagedProcess,
    PartnerApp,
    PostgresCluster,
    clean_environment,
    free_port,
    run_cli,
    tail,
)

FAULT_DIR = Path(__file__).resolve().parent
# (scenario, figures), in the order the scenarios ran.
FIGURES: list[tuple[str, dict[str, Any]]] = []
_SUITE_STARTED = time.monotonic()


def _suite_selected(config: pytest.Config) -> bool:
    markexpr = str(config.getoption("markexpr") or "")
    explicit = "fault" in markexpr and "not fault" not in markexpr
    return explicit or os.environ.get("FAULT_SUITE") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _suite_selected(config):
        return
    skip = pytest.mark.skip(reason="process-level fault suite: run it with `make fault`")
    for item in items:
        if FAULT_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault suite figures")
    for name, figures in FIGURES:
        write(f"{name}:")
        for key, value in figures.items():
            write(f"    {key}: {value}")
    write(f"fault suite wall time: {time.monotonic() - _SUITE_STARTED:.0f} s")
    out = os.environ.get("FAULT_FIGURES_JSON")
    if out:
        Path(out).write_text(json.dumps(dict(FIGURES), indent=2, default=str))


def record_figures(name: str, figures: Mapping[str, Any]) -> None:
    FIGURES.append((name, dict(figures)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


# Sandbox settings of every scenario: business days of a fraction of a second, so an ACH deposit
# settles within seconds; webhook retries short enough to matter within a scenario.
SANDBOX_ENV = {
    "SANDBOX_TIME_SCALE": "0.5",
    "SANDBOX_WEBHOOK_RETRY_SCHEDULE": "[0.2, 0.5, 1, 2, 4]",
    "SANDBOX_WEBHOOK_TIMEOUT": "3",
    "SANDBOX_FAULT_SEED": "7",
}

# The service: Bakkt timeouts and backoff short enough that a scenario of minutes sees many of
# them; workers on, with the recovery intervals of docs/recovery.md compressed from minutes to
# seconds (the leases still longer than one request's every attempt at Bakkt, ~12 s here).
SERVICE_ENV = {
    "APP_ENV": "development",
    "WORKERS_ENABLED": "true",
    "BAKKT_CONNECT_TIMEOUT": "1",
    "BAKKT_READ_TIMEOUT": "1.5",
    "BAKKT_WRITE_TIMEOUT": "2",
    "BAKKT_POOL_TIMEOUT": "2",
    "BAKKT_RETRY_BACKOFF_BASE": "0.05",
    "BAKKT_RETRY_BACKOFF_CAP": "0.4",
    "DB_POOL_SIZE": "15",
    "RECOVERY_SETTLE_INTERVAL": "1",
    "RECOVERY_SWEEP_INTERVAL": "2",
    "RECOVERY_REMATCH_INTERVAL": "1",
    "RECOVERY_CLAIM_LEASE": "15",
    "RECOVERY_SUBMITTING_GRACE": "15",
    "RECOVERY_UNKNOWN_BACKOFF_BASE": "1",
    "RECOVERY_UNKNOWN_BACKOFF_CAP": "5",
    "RECOVERY_SWEEP_FIRST_CHECK": "5",
    "RECOVERY_SWEEP_BACKOFF_CAP": "10",
    "BAKKT_BREAKER_COOLDOWN": "5",
    # The partner app's load is one back end acting for a few parties, faster than any
    # consumer: the limiter runs, but never refuses (tests/protect tests the 429s).
    "RATE_LIMIT_READS": "1000000/second",
    "RATE_LIMIT_WRITES": "1000000/second",
}
# INFO logs cost the service ~15% of its CPU under load; WARNING keeps every failure.
LOG_LEVEL = os.environ.get("FAULT_LOG_LEVEL", "WARNING")


@dataclass
class Stack:
    """One scenario's Postgres database, sandbox process and service process."""

    name: str
    workdir: Path
    dsn: str
    sandbox: ManagedProcess
    service: ManagedProcess
    control: SandboxControl
    app: PartnerApp
    parties: list[str] = field(default_factory=list)

    async def start_service(self) -> float:
        self.service.start()
        return await self.service.wait_http("/readyz")

    async def restart_service(self) -> float:
        """SIGKILL, then start again; returns the seconds until it was ready."""
        self.service.kill()
        started = time.monotonic()
        await self.start_service()
        return time.monotonic() - started

    async def cli(self, *args: str, within: float = 120.0) -> tuple[int, str]:
        return await run_cli(list(args), self.service.env, self.workdir, within)

    async def link_parties(self, count: int, prefix: str) -> list[str]:
        run = uuid.uuid4().hex[:8]
        parties = [f"{prefix}-{run}-{i:02d}" for i in range(count)]
        for party in parties:
            await self.app.link_bank_account(party)
        self.parties += parties
        return parties

    def settings(self) -> Settings:
        """The service's settings, as its environment makes them."""
        fields = {name.upper(): name for name in Settings.model_fields}
        values = {fields[k]: v for k, v in self.service.env.items() if k in fields}
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    def logs(self) -> str:
        return (
            f"--- service log ({self.service.log}) ---\n{tail(self.service.log)}\n"
            f"--- sandbox log ({self.sandbox.log}) ---\n{tail(self.sandbox.log, 20)}"
        )


Launch = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def launch(
    pg_cluster: PostgresCluster, request: pytest.FixtureRequest, tmp_path_factory: Any
) -> AsyncIterator[Launch]:
    """`await launch(service_env={...}, sandbox_env={...})`: a migrated database of its own, the
    sandbox and the service as processes pointed at each other, and a partner app."""
    stacks: list[Stack] = []

    async def _launch(
        *,
        service_env: Mapping[str, str] | None = None,
        sandbox_env: Mapping[str, str] | None = None,
    ) -> Stack:
        name = request.node.name
        workdir = Path(tmp_path_factory.mktemp("fault"))
        dsn = await pg_cluster.create_database(f"fault_{uuid.uuid4().hex[:12]}")
        service_port, sandbox_port = free_port(), free_port()
        sandbox = ManagedProcess(
            "sandbox",
            ["sandbox", "--port", str(sandbox_port)],
            clean_environment(
                {
                    **SANDBOX_ENV,
                    "SANDBOX_WEBHOOK_URL": f"http://127.0.0.1:{service_port}/webhooks/bakkt",
                    **(sandbox_env or {}),
                }
            ),
            workdir,
            sandbox_port,
        )
        service = ManagedProcess(
            "service",
            ["serve", "--port", str(service_port)],
            clean_environment(
                {
                    **SERVICE_ENV,
                    "LOG_LEVEL": LOG_LEVEL,
                    "DATABASE_URL": dsn,
                    "BAKKT_BASE_URL": sandbox.base_url,
                    **(service_env or {}),
                }
            ),
            workdir,
            service_port,
        )
        code, out = await run_cli(["migrate"], service.env, workdir)
        assert code == 0, out
        sandbox.start()
        await sandbox.wait_http("/sandbox")
        stack = Stack(
            name, workdir, dsn, sandbox, service, SandboxControl(sandbox.base_url),
            PartnerApp(service.base_url),
        )  # fmt: skip
        stacks.append(stack)
        await stack.start_service()
        return stack

    yield _launch

    failed = request.node.stash.get(_FAILED, False)
    for stack in stacks:
        if failed:
            print(f"\n===== {stack.name} =====\n{stack.logs()}")  # noqa: T201
        await stack.app.aclose()
        await stack.control.aclose()
        stack.service.terminate()
        stack.sandbox.terminate()
