"""`serve --workers 2`: one scrape, answered by either worker, counts the requests of both."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO_ROOT


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthz_count(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "fiat_onramp_http_requests_total"
        and sample.labels.get("route") == "/healthz"
    )


async def test_two_workers_are_scraped_as_one(database_url: str, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # Left by an earlier run: it must not be added to this one's counts.
    (metrics_dir / "counter_1.db").write_bytes(b"stale")
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "WORKERS_ENABLED": "false",
        "BAKKT_BASE_URL": "http://127.0.0.1:9",
        "LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "FIAT_ONRAMP_MIGRATIONS": str(REPO_ROOT / "migrations"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "serve",
        "--workers",
        "2",
        "--port",
        str(port),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        # Its own process group: a failed test ends the workers too, not only their parent.
        start_new_session=True,
    )
    assert proc.stderr is not None
    pids: set[int] = set()
    sent = 0

    async def read_access_lines() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("logger") == "app.access" and record.get("route") == "/healthz":
                pids.add(int(record["pid"]))

    reader = asyncio.create_task(read_access_lines())
    try:
        # Three interpreters import the service: slow on a loaded machine.
        async with asyncio.timeout(180):
            while True:
                try:
                    async with httpx.AsyncClient() as http:
                        if (await http.get(f"http://127.0.0.1:{port}/healthz")).is_success:
                            sent += 1
                            break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            assert not (metrics_dir / "counter_1.db").exists()
            # A new connection per request, until both workers have answered some.
            while len(pids) < 2:
                assert sent < 2000, "one worker took every connection"
                async with httpx.AsyncClient() as http:
                    assert (await http.get(f"http://127.0.0.1:{port}/healthz")).is_success
                sent += 1
                await asyncio.sleep(0)
            async with httpx.AsyncClient() as http:
                scrape = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert scrape.status_code == 200
        assert _healthz_count(scrape.text) == sent
        assert len(list(metrics_dir.glob("counter_*.db"))) == 2
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await proc.wait()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        reader.cancel()
    assert proc.returncode == 0
    # Stopped workers leave their counters but not their live gauges.
    assert not list(metrics_dir.glob("gauge_live*.db"))
