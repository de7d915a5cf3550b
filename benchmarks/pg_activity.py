"""What Postgres is doing during a phase: `pg_stat_activity` sampled every 100 ms, per client.

A service that is slow while its own CPU is not saturated waits for something: a pool
connection, a row lock, Postgres itself. The samples tell which: backends "active" waiting on a
`Lock` are row locks, "idle in transaction" ones wait for the service (Python holding a
transaction open between statements), "active" with no wait event are Postgres working. The
backends' own CPU time (read from /proc when Postgres runs on this machine) is what each client
costs Postgres, per request of the phase.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

# application_name of each side (app/db.py sets the service's; benchmarks/floor.py the floor's).
CLIENTS = {"fiat-onramp": "service", "fiat-floor": "floor"}
INTERVAL = 0.1
_SAMPLE = """
SELECT application_name, pid, state, wait_event_type, wait_event
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend'
"""


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class _Client:
    samples: int = 0
    states: Counter[str] = field(default_factory=Counter)
    waits: Counter[str] = field(default_factory=Counter)
    busy: int = 0
    cpu_first: dict[int, float] = field(default_factory=dict)
    cpu_last: dict[int, float] = field(default_factory=dict)


class ActivitySampler:
    """Samples in a thread of its own (the benchmark waits on its load driver meanwhile)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.clients = {name: _Client() for name in CLIENTS.values()}
        self.samples = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-activity", daemon=True)

    def __enter__(self) -> ActivitySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            asyncio.run(self._sample())
        except Exception as exc:  # a missing figure, never a failed benchmark
            self.error = f"{type(exc).__name__}: {exc}"

    async def _sample(self) -> None:
        conn = await asyncpg.connect(self.db_url)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                rows = await conn.fetch(_SAMPLE)
                self.samples += 1
                for client in self.clients.values():
                    client.samples += 1
                for row in rows:
                    name = CLIENTS.get(row["application_name"])
                    if name is None:
                        continue
                    client = self.clients[name]
                    state = row["state"] or "unknown"
                    client.states[state] += 1
                    if state != "idle":
                        client.busy += 1
                        wait = (
                            f"{row['wait_event_type']}:{row['wait_event']}"
                            if row["wait_event_type"]
                            else "none (working)"
                        )
                        client.waits[f"{state} / {wait}"] += 1
                    cpu = _cpu_seconds(row["pid"])
                    if cpu is not None:
                        client.cpu_first.setdefault(row["pid"], cpu)
                        client.cpu_last[row["pid"]] = cpu
                await asyncio.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))
        finally:
            await conn.close()

    def summary(self, requests: int) -> dict[str, Any]:
        out: dict[str, Any] = {"samples": self.samples}
        if self.error is not None:
            out["error"] = self.error
        for name, client in self.clients.items():
            if not client.samples:
                continue
            cpu = sum(client.cpu_last[p] - client.cpu_first[p] for p in client.cpu_last)
            out[name] = {
                # Mean number of the client's backends in each state over the samples.
                "backends": {
                    state: round(n / client.samples, 2) for state, n in client.states.most_common()
                },
                # Of the samples of a backend that was not idle: what it was doing or waiting on.
                "not_idle": {
                    what: round(100 * n / client.busy, 1) for what, n in client.waits.most_common(6)
                }
                if client.busy
                else {},
                "backend_cpu_seconds": round(cpu, 3),
                "backend_cpu_ms_per_request": round(1000 * cpu / requests, 3) if requests else 0.0,
            }
        return out
