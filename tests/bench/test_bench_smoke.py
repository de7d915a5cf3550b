"""The benchmark's machinery, run for a few seconds: every process starts, every phase is
driven, and the JSON file holds every figure. No figure is judged here (targets are the
benchmark's own PASS/MISS, never a timed test)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PHASE_FIGURES = {
    "requests", "seconds", "per_second", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors",
    "statuses", "socket_errors", "server_cpu_percent", "driver_cpu_percent",
}  # fmt: skip
TARGETS = {
    "deposits / floor", "deposits p99 ms", "deposits errors", "webhooks / floor insert",
    "webhooks p99 ms", "replays / deposits", "slowest read / deposits", "RSS max MB (per process)",
    "RSS growth %",
}  # fmt: skip


def _phases(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    service, floor = figures["service"], figures["floor"]
    return {
        "deposits": service["deposits"],
        "replays": service["replays"],
        "webhooks": service["webhooks"],
        "soak": service["soak"],
        **{f"reads.{k}": v for k, v in service["reads"].items()},
        "floor.deposits": floor["deposits"],
        "floor.webhooks": floor["webhooks"],
    }


def test_a_quick_run_writes_every_figure(tmp_path: Path) -> None:
    # wrk when installed, as `make bench` does; the other driver has its own test below.
    driver = "wrk" if shutil.which("wrk") else "python"
    out = tmp_path / "bench.json"
    done = subprocess.run(  # noqa: S603 - fixed arguments
        [sys.executable, "-m", "benchmarks.service", "--quick", "--driver", driver,
         "--json", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())

    assert figures["config"]["driver"] == driver
    phases = _phases(figures)
    assert set(phases) == {
        "deposits", "replays", "webhooks", "soak", "reads.transactions_list",
        "reads.transaction_detail", "reads.bank_accounts", "floor.deposits", "floor.webhooks",
    }  # fmt: skip
    for name, phase in phases.items():
        assert PHASE_FIGURES <= set(phase), name
        # Every phase really sent requests and got answers (a broken phase would read 0).
        assert phase["requests"] > 0, name
        assert phase["errors"] == 0, (name, phase["statuses"], phase["socket_errors"])
    # A fresh Idempotency-Key per request: every answered deposit made a transaction of its own.
    for side in ("service", "floor"):
        deposits = figures[side]["deposits"]
        assert deposits["transactions_created"] >= deposits["requests"], side
    points = {"after_warmup", "end", "after_soak"}
    assert set(figures["rss_mb"]) == points | {"growth_percent", "largest_process"}
    assert all(figures["rss_mb"][k] > 0 for k in points)
    assert set(figures["rss_mb"]["largest_process"]) == points
    assert set(figures["ratios"]) == {
        "deposits_vs_floor", "webhooks_vs_floor", "replays_vs_deposits", "reads_vs_deposits",
    }  # fmt: skip
    assert {t["name"] for t in figures["targets"]} == TARGETS
    assert all(isinstance(t["pass"], bool) for t in figures["targets"])
    assert figures["machine"]["nproc"] >= 1
    assert len(figures["machine"]["loadavg_at_start"]) == 3
    # The table is printed too, with every target's verdict.
    assert "deposits / floor" in done.stdout
    assert done.stdout.count("PASS") + done.stdout.count("MISS") >= len(TARGETS)


async def test_the_python_driver_sends_the_plan_and_reports_like_wrk(tmp_path: Path) -> None:
    from bakkt_sandbox.testing import running_sandbox
    from benchmarks.load import PlannedRequest, run_plan, write_plan

    plan = tmp_path / "clock.plan"
    write_plan(plan, [PlannedRequest("GET", "/sandbox/clock?tag={n}")])
    async with running_sandbox(time_scale=0, webhook_url="") as sandbox:
        # In a thread: the driver is a child process, and the sandbox answers from this loop.
        result = await asyncio.to_thread(
            run_plan, plan, sandbox.base_url, connections=4, duration=1.0, driver="python"
        )
    assert result.driver == "python"
    assert result.requests > 0
    assert result.statuses == {"200": result.requests}
    assert result.errors == 0
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms <= result.max_ms
    assert result.driver_cpu_seconds > 0


def test_the_profile_summary_counts_a_function_once_per_sample(tmp_path: Path) -> None:
    from benchmarks.service import summarize_profile

    raw = tmp_path / "raw.txt"
    raw.write_text(
        'process 1:"serve";run (uvicorn/main.py:1);deposit (app/funding/router.py:10);'
        "execute (sqlalchemy/orm/session.py:5);execute (sqlalchemy/orm/session.py:9) 3\n"
        'process 1:"serve";run (uvicorn/main.py:1);deposit (app/funding/router.py:12) 1\n'
    )
    summary = summarize_profile(raw)
    assert summary["samples"] == 4
    total = {e["function"]: e["percent"] for e in summary["total"]}
    # The server's frames are left out; a recursive frame counts once per sample.
    assert total == {
        "app/funding/router.py:deposit": 100.0,
        "sqlalchemy/orm/session.py:execute": 75.0,
    }
    assert {e["function"]: e["percent"] for e in summary["self_by_package"]} == {
        "sqlalchemy": 75.0,
        "app": 25.0,
    }
