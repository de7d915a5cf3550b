"""The processes a benchmark run needs: a Postgres database, sandboxes, the service, the floor.

Each runs as its own child process (its own interpreter, event loop and GIL, as in production),
logs to a file under the run's directory, and is ended at the end of the run or at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
_CHILDREN: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_children() -> None:
    for proc in list(_CHILDREN):
        if proc.poll() is None:
            proc.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli() -> list[str]:
    script = Path(sys.executable).with_name("fiat-onramp")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def clean_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment without the service's or the sandbox's settings, plus `extra`: what a
    developer exported in the shell must not change what the benchmark measures."""
    from app.config import Settings

    names = {name.upper() for name in Settings.model_fields}
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in names and not k.startswith("SANDBOX_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Child:
    """One child process in a session of its own, with its log file."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed arguments, no shell
                args,
                env=dict(env),
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _CHILDREN.add(self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            # The whole session: uvicorn's worker processes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        _CHILDREN.discard(self.proc)

    async def wait_http(self, url: str, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code < 500:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} not answering {url}:\n{self.tail()}")
                await asyncio.sleep(0.1)


# --- process figures (Linux /proc) -------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                todo.extend(int(c) for c in children)
    return pids


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory of a process and its children (uvicorn's workers), in MiB: the sum, and
    the largest single process (with workers, the supervisor holds a copy of the imports too)."""
    sizes = []
    for member in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
    return sum(sizes), max(sizes, default=0.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in _tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{member}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


# --- Postgres ----------------------------------------------------------------------------------


@dataclass
class Database:
    """A throwaway database on a server: the machine's, or an embedded one."""

    server_url: str  # libpq form, on the server's maintenance database
    url: str  # libpq form, the benchmark's own database
    name: str
    kind: str
    _embedded: object | None = None

    async def drop(self) -> None:
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(self.server_url)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            finally:
                await conn.close()
        if self._embedded is not None:
            self._embedded.stop()  # type: ignore[attr-defined]


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _libpq(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_database(data_dir: Path, *, embedded_only: bool = False) -> Database:
    """DATABASE_URL's server when it is set, else the machine's on 127.0.0.1:5432 when it
    answers, else (or with `embedded_only`) an embedded Postgres under `data_dir`."""
    embedded = None
    if embedded_only:
        from app.embedded import start_embedded_postgres

        embedded = await asyncio.to_thread(start_embedded_postgres, data_dir / "postgres")
        server, kind = _libpq(embedded.url), f"embedded ({embedded.kind})"
    elif os.environ.get("DATABASE_URL", "").strip():
        server, kind = _libpq(os.environ["DATABASE_URL"].strip()), "DATABASE_URL"
    elif _answers("127.0.0.1", 5432):
        server, kind = "postgresql://postgres@127.0.0.1:5432/postgres", "127.0.0.1:5432"
    else:
        from app.embedded import start_embedded_postgres

        embedded = await asyncio.to_thread(start_embedded_postgres, data_dir / "postgres")
        server, kind = _libpq(embedded.url), f"embedded ({embedded.kind})"
    name = f"fiat_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, query = server.partition("?")
    url = base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")
    return Database(server, url, name, kind, embedded)
