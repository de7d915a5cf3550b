"""The load driver: a request plan sent by wrk when it is installed, else by our own generator.

    python -m benchmarks.load PLAN --base-url URL --connections 32 --duration 10

A plan is a file of requests, one a line (`write_plan`); `{n}` in a line becomes a tag unique in
the run, so each deposit carries a fresh Idempotency-Key. Lines are sent in order, wrapping
around. Both drivers run as their own process (never inside the benchmark's event loop), read the
same plan, keep `connections` requests in flight, and report the same figures; `run_plan` adds
the CPU time the driver itself used, since on a 2-core machine the load generator competes with
the service for the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LUA_SCRIPT = Path(__file__).with_name("plan.lua")
MARKER = "BENCH_JSON "
# Past this a request counts as unanswered (an error), as a partner's client would give up.
TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class PlannedRequest:
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""


def write_plan(path: Path, requests: Iterable[PlannedRequest]) -> int:
    count = 0
    with path.open("w") as out:
        for req in requests:
            head = "\x1f".join(f"{k}: {v}" for k, v in req.headers.items())
            if any(c in req.body for c in "\t\n") or any(c in head for c in "\t\n"):
                raise ValueError("a planned request may not contain tabs or newlines")
            out.write(f"{req.method}\t{req.path}\t{head}\t{req.body}\n")
            count += 1
    return count


def read_plan(path: Path) -> list[PlannedRequest]:
    plan = []
    for line in path.read_text().splitlines():
        method, target, head, body = line.split("\t", 3)
        headers = dict(pair.split(": ", 1) for pair in head.split("\x1f") if pair)
        plan.append(PlannedRequest(method, target, headers, body))
    return plan


@dataclass
class DriveResult:
    driver: str
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    driver_cpu_seconds: float = 0.0
    # Percentiles that fell among the timed-out requests: each reads as the timeout, a lower
    # bound of the truth (plan.lua says how both drivers rank a timeout).
    censored: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        """Answers other than 2xx, and requests without an answer (refused, reset, timed out)."""
        bad = sum(n for code, n in self.statuses.items() if not code.startswith("2"))
        return bad + sum(self.socket_errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_second": self.per_second, "errors": self.errors}


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    if len(sorted_ms) == 1:
        return sorted_ms[0]
    return statistics.quantiles(sorted_ms, n=1000, method="inclusive")[round(q * 10) - 1]


def censored_percentiles(
    sorted_ms: list[float], timeouts: int, timeout_ms: float
) -> tuple[dict[str, float], list[str]]:
    """p50/p90/p99 over the answers and the timed-out requests, the latter ranked last: a
    percentile among them reads as the timeout and is named in the second value."""
    total = len(sorted_ms) + timeouts
    out: dict[str, float] = {}
    censored: list[str] = []
    for q in (50, 90, 99):
        name = f"p{q}_ms"
        rank = total * q / 100
        if total == 0:
            out[name] = 0.0
        elif rank > len(sorted_ms):
            out[name] = timeout_ms
            censored.append(name)
        else:
            out[name] = _percentile(sorted_ms, min(100.0, 100 * rank / len(sorted_ms)))
    return out, censored


async def _drive_python(
    plan: list[PlannedRequest], base_url: str, connections: int, duration: float
) -> DriveResult:
    import aiohttp

    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    socket_errors: Counter[str] = Counter()
    sent = 0
    deadline = time.monotonic() + duration

    def next_request() -> PlannedRequest | None:
        nonlocal sent
        if time.monotonic() >= deadline:
            return None
        sent += 1
        req = plan[(sent - 1) % len(plan)]
        tag = f"1-{sent}"
        if "{n}" not in req.path + req.body + "".join(req.headers.values()):
            return req
        return PlannedRequest(
            req.method,
            req.path.replace("{n}", tag),
            {k: v.replace("{n}", tag) for k, v in req.headers.items()},
            req.body.replace("{n}", tag),
        )

    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as http:

        async def client() -> None:
            while (req := next_request()) is not None:
                started = time.perf_counter()
                try:
                    async with http.request(
                        req.method, req.path, headers=req.headers, data=req.body or None
                    ) as resp:
                        await resp.read()
                        statuses[str(resp.status)] += 1
                except TimeoutError:
                    socket_errors["timeout"] += 1
                    continue
                except aiohttp.ClientError:
                    socket_errors["read"] += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(connections)))
        seconds = time.monotonic() - started
    latencies.sort()
    ranked, censored = censored_percentiles(
        latencies, socket_errors["timeout"], TIMEOUT_SECONDS * 1000.0
    )
    return DriveResult(
        driver="python",
        requests=len(latencies),
        seconds=seconds,
        max_ms=latencies[-1] if latencies else 0.0,
        statuses=dict(statuses),
        socket_errors={k: socket_errors.get(k, 0) for k in ("connect", "read", "write", "timeout")},
        censored=censored,
        **ranked,
    )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_plan(
    plan: Path,
    base_url: str,
    *,
    connections: int,
    duration: float,
    driver: str = "auto",
) -> DriveResult:
    """Drive `base_url` with `plan` from a child process for `duration` seconds."""
    use_wrk = driver == "wrk" or (driver == "auto" and wrk_available())
    if use_wrk:
        # One thread: enough for tens of thousands of requests a second, and it leaves the
        # second core to the service and Postgres.
        args = [
            "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
            "--timeout", f"{TIMEOUT_SECONDS}s", "-s", str(LUA_SCRIPT), base_url, "--",
            str(plan), str(TIMEOUT_SECONDS * 1000),
        ]  # fmt: skip
    else:
        args = [
            sys.executable, "-m", "benchmarks.load", str(plan), "--base-url", base_url,
            "--connections", str(connections), "--duration", str(duration),
        ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(  # noqa: S603 - fixed arguments, no shell
        args,
        capture_output=True,
        text=True,
        check=False,
        timeout=duration + 60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"load driver failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    figures = json.loads(line[len(MARKER) :])
    figures["driver"] = "wrk" if use_wrk else "python"
    figures["driver_cpu_seconds"] = (after.ru_utime - before.ru_utime) + (
        after.ru_stime - before.ru_stime
    )
    return DriveResult(**figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    plan = read_plan(args.plan)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(_drive_python(plan, args.base_url, args.connections, args.duration))
    figures = result.as_dict()
    for derived in ("per_second", "errors", "driver", "driver_cpu_seconds"):
        figures.pop(derived)
    print(MARKER + json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
