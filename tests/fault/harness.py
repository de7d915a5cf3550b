"""Real processes for the fault suite, and the checks it makes at the end of each scenario.

- `PostgresCluster`: a private cluster on a free TCP port, stopped and started with pg_ctl (the
  machine's own Postgres is never used or touched).
- `ManagedProcess`: the sandbox (`fiat-onramp sandbox`) and the service (`fiat-onramp serve`),
  each a child process that can be killed with SIGKILL and started again.
- `PartnerApp`: the partner's app, which retries a request that got no definite answer with the
  same Idempotency-Key, and records every answer it saw.
- `check_ledger`: the sandbox's ledger against the service's database.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import math
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.config import Settings
from bakkt_sandbox.testing import SandboxControl

REPO_ROOT = Path(__file__).resolve().parents[2]

# Our states a transaction can stay in for good; SUBMITTING and UNKNOWN are the undecided ones.
UNDECIDED = frozenset({"SUBMITTING", "UNKNOWN"})
# Bakkt's transaction statuses, in our spelling (docs/bakkt-contract.md A5).
BAKKT_TO_OURS = {
    "PENDING": "PENDING",
    "COMPLETE": "COMPLETED",
    "DECLINED": "DECLINED",
    "CANCELLED": "CANCELLED",
    "RETURNED": "RETURNED",
}


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def free_port() -> int:
    # Bound and released at once: a small race with other processes, the price of ephemeral ports.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} is unreadable)"
    return "\n".join(text.splitlines()[-lines:])


# --- Postgres -----------------------------------------------------------------------------------


def _pg_binaries() -> tuple[Path, str]:
    """pgserver's bundled binaries (a dev dependency), else the system's. With the user to run
    them as when we are root (initdb and postgres refuse to run as root)."""
    try:
        import pgserver

        bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (bin_dir / "pg_ctl").exists():
            return bin_dir, "pgserver"
    except ImportError:
        pass
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if found:
        return Path(found[0]).parent, "postgres"
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent, "postgres"
    raise RuntimeError("the fault suite needs Postgres binaries: pgserver, or initdb/pg_ctl")


def _prepare_root_user(bin_dir: Path, user: str) -> pwd.struct_passwd:
    if user == "pgserver":
        # pgserver's own helpers: create its user and make its binaries readable by it.
        import stat

        from pgserver.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(user)
        ensure_prefix_permissions(bin_dir)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_dir.parent / "lib", read)
    return pwd.getpwnam(user)


class PostgresCluster:
    """A throwaway cluster under a temporary directory, listening on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        # pg_ctl detaches the postmaster: without this it would outlive a crashed test run.
        atexit.register(self.destroy)
        self.bin_dir, user = _pg_binaries()
        self.root = Path(tempfile.mkdtemp(prefix="fiat-fault-pg-"))
        self.pgdata = self.root / "pgdata"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = _prepare_root_user(self.bin_dir, user)
            os.chmod(self.root, 0o755)  # noqa: S103 - the postgres user must reach its data
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        kwargs: dict[str, Any] = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        # Output to a file, never a pipe: pg_ctl's postmaster inherits it and would keep a pipe
        # open (subprocess.run would then wait for ever).
        with open(self.root / "pg_ctl.out", "ab") as out:
            subprocess.run(  # noqa: S603 - fixed arguments, no shell
                [str(self.bin_dir / args[0]), *args[1:]],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                cwd=self.root,
                **kwargs,
            )

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            # The machine does not crash here, so fsync buys nothing. Commits stay synchronous:
            # with synchronous_commit=off an immediate shutdown loses the last commits, and the
            # restart scenario then finds transfers at Bakkt whose intent we "lost".
            "-c fsync=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-o", options,
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60", "stop")

    def is_running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.is_running():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def create_database(self, name: str) -> str:
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.dsn(name)


# --- processes ----------------------------------------------------------------------------------


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("fiat-onramp")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def clean_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment without any setting of the service or the sandbox, plus `extra`: a
    DATABASE_URL or SANDBOX_* exported in the shell must not leak into a scenario."""
    names = {name.upper() for name in Settings.model_fields}
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in names and not k.startswith("SANDBOX_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# Every child started and not yet ended: killed at exit, since a session of its own keeps it
# alive after a test run that crashed.
_CHILDREN: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_children() -> None:
    for proc in list(_CHILDREN):
        if proc.poll() is None:
            proc.kill()


class ManagedProcess:
    """One `fiat-onramp` child process with its log file, started again after a kill."""

    def __init__(
        self, name: str, args: list[str], env: Mapping[str, str], workdir: Path, port: int
    ) -> None:
        self.name = name
        self.args = args
        self.env = dict(env)
        self.workdir = workdir
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"\n===== start #{self.starts} at {time.time():.3f} =====\n".encode())
            out.flush()
            # A session of its own: the signals we send reach this process and nothing else.
            self.proc = subprocess.Popen(  # noqa: S603 - fixed arguments, no shell
                [*_cli(), *self.args],
                env=self.env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            _CHILDREN.add(self.proc)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook, no flush, no goodbye (what an OOM kill does)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc is not None:
            _CHILDREN.discard(self.proc)

    def terminate(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        _CHILDREN.discard(self.proc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_http(self, path: str, within: float = 45.0) -> float:
        """Wait until GET `path` answers 200; returns the seconds it took."""
        started = time.monotonic()
        deadline = started + within
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2.0) as http:
            while True:
                if not self.alive():
                    raise RuntimeError(f"{self.name} exited:\n{tail(self.log)}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(path)).status_code == 200:
                        return time.monotonic() - started
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} not ready at {path}:\n{tail(self.log)}")
                await asyncio.sleep(0.1)


async def run_cli(
    args: list[str], env: Mapping[str, str], workdir: Path, within: float = 120.0
) -> tuple[int, str]:
    """Run one `fiat-onramp` command to its end; returns its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        *_cli(),
        *args,
        env=dict(env),
        cwd=workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


# --- a load balancer ------------------------------------------------------------------------------


class RoundRobinProxy:
    """A TCP load balancer in front of service replicas, as a cluster's ingress is: each new
    connection goes to the next replica; a replica that refuses a connection is passed over for
    `down_for` seconds and the connection is tried on the next (nginx's passive health check).
    An open connection stays with its replica, so keep-alive clients stick until it goes away."""

    def __init__(self, backends: list[int], *, down_for: float = 1.0) -> None:
        self.backends = list(backends)
        self.down_for = down_for
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.connections: Counter[int] = Counter()
        # When each connection that a replica took was begun: what was begun before a kill may
        # complete (the kernel had accepted it) after the kill returned.
        self.begun: dict[int, list[float]] = {port: [] for port in self.backends}
        self.refused: Counter[int] = Counter()
        self.unserved = 0
        self._next = 0
        self._down_until: dict[int, float] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:
            self.unserved += 1
            writer.close()
            return
        up_reader, up_writer = upstream
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            writer.close()
            up_writer.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        # Replicas not passed over first, then (all down) every one once more.
        order = [
            self.backends[(self._next + i) % len(self.backends)] for i in range(len(self.backends))
        ]
        self._next += 1
        now = time.monotonic()
        order.sort(key=lambda port: self._down_until.get(port, 0.0) > now)
        for port in order:
            begun = time.monotonic()
            try:
                found = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                self.refused[port] += 1
                self._down_until[port] = time.monotonic() + self.down_for
                continue
            self.connections[port] += 1
            self.begun[port].append(begun)
            return found
        return None

    def taken_between(self, start: float, end: float) -> dict[int, int]:
        """Connections each replica took that were begun after `start` and by `end`."""
        return {p: sum(1 for t in self.begun[p] if start < t <= end) for p in self.backends}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One side gone ends the exchange on both (HTTP clients do not half-close).
            writer.close()


# --- the partner's app --------------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    """One HTTP exchange as the partner's app saw it."""

    sent_at: float  # time.monotonic()
    seconds: float
    status: int | None  # None: no answer at all (refused, reset, timed out)
    code: str | None = None  # the problem's code
    state: str | None = None  # the transaction's status, in a 2xx body
    error: str | None = None
    problem_json: bool = False
    trace_in_body: bool = False
    retry_after: str | None = None


@dataclass(slots=True)
class Deposit:
    """One deposit the consumer meant to make, under one Idempotency-Key."""

    party: str
    key: str
    amount: str
    answers: list[Answer] = field(default_factory=list)
    status: int | None = None  # the definite answer's status
    body: Any = None
    # The client stopped asking without a definite answer (an app closed mid-request).
    abandoned: bool = False
    # Sent by a careful client (CAREFUL_BUDGET): one that ran out of budget is a failure.
    careful: bool = False
    # Seconds from the first send to the definite answer (None: none came).
    answered_after: float | None = None

    @property
    def transaction_id(self) -> str | None:
        if isinstance(self.body, dict):
            found = self.body.get("id") or self.body.get("transactionId")
            return str(found) if found else None
        return None

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _is_definite(answer: Answer) -> bool:
    """What a partner app may stop retrying on: a 2xx, or a 4xx that is not "still running"."""
    if answer.status is None or answer.status >= 500 or answer.status == 429:
        return False
    return not (answer.status == 409 and answer.code == "idempotency_request_in_progress")


# A careful client's whole budget for one deposit, from its first send (issue 12).
CAREFUL_BUDGET = 40.0


class PartnerApp:
    """Deposits as the partner's back end makes them: an admin token, a fresh Idempotency-Key per
    intended deposit, and every failure without a definite answer retried with that same key."""

    def __init__(
        self, base_url: str, *, request_timeout: float = 30.0, keep_alive: bool = True
    ) -> None:
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        from app.auth.dev_token import mint_dev_token

        # The service runs with the default development secret, issuer and audience.
        self.token = mint_dev_token(settings, "fault-suite", admin=True, ttl_seconds=4 * 3600)
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=request_timeout,
            headers={"Authorization": f"Bearer {self.token}"},
            # Without keep-alive every request is a connection of its own: what a balancer that
            # balances each request (an ingress) does, with a TCP one.
            limits=httpx.Limits(
                max_connections=200, max_keepalive_connections=50 if keep_alive else 0
            ),
        )
        self.answers: list[Answer] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def aclose(self) -> None:
        await self.http.aclose()

    async def send(
        self, method: str, path: str, *, json: Any = None, key: str | None = None
    ) -> tuple[Answer, Any]:
        headers = {"Idempotency-Key": key} if key else {}
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        sent = time.monotonic()
        try:
            response = await self.http.request(method, path, json=json, headers=headers)
        except httpx.HTTPError as exc:
            answer = Answer(sent, time.monotonic() - sent, None, error=type(exc).__name__)
            self.answers.append(answer)
            return answer, None
        finally:
            self.in_flight -= 1
        body: Any
        try:
            body = response.json()
        except ValueError:
            body = response.text
        content_type = response.headers.get("content-type", "")
        answer = Answer(
            sent,
            time.monotonic() - sent,
            response.status_code,
            code=body.get("code") if isinstance(body, dict) else None,
            state=body.get("status")
            if isinstance(body, dict) and response.status_code < 300
            else None,
            problem_json=content_type.startswith("application/problem+json"),
            trace_in_body="Traceback" in response.text or 'File "' in response.text,
            retry_after=response.headers.get("retry-after"),
        )
        self.answers.append(answer)
        return answer, body

    async def deposit(
        self,
        deposit: Deposit,
        *,
        give_up_after: float = 180.0,
        max_wait: float = 1.0,
        abandon_without_answer: bool = False,
    ) -> Deposit:
        """Send until a definite answer, always with the deposit's own key. With
        `abandon_without_answer`, a request that got no answer at all is not retried."""
        started = time.monotonic()
        deadline = started + give_up_after
        attempt = 0
        while True:
            answer, body = await self.send(
                "POST",
                f"/v1/parties/{deposit.party}/deposits",
                json={"amount": deposit.amount},
                key=deposit.key,
            )
            deposit.answers.append(answer)
            if _is_definite(answer):
                deposit.status, deposit.body = answer.status, body
                deposit.answered_after = time.monotonic() - started
                return deposit
            if (abandon_without_answer and answer.status is None) or time.monotonic() > deadline:
                deposit.abandoned = answer.status is None and abandon_without_answer
                return deposit
            attempt += 1
            wait = min(max_wait, 0.1 * 2 ** min(attempt, 6))
            if answer.retry_after and answer.retry_after.isdigit():
                wait = min(max_wait, max(wait, float(answer.retry_after)))
            await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))

    async def careful_deposit(self, deposit: Deposit) -> Deposit:
        """What a careful app does (issue 12): the same key, exponential backoff (0.2, 0.4 ...
        up to 3.2 s, or the server's Retry-After if longer) and a budget of CAREFUL_BUDGET
        seconds, after which it gives up and tells its user it does not know."""
        deposit.careful = True
        return await self.deposit(deposit, give_up_after=CAREFUL_BUDGET, max_wait=3.2)

    async def link_bank_account(self, party: str, within: float = 30.0) -> str:
        """Link with a Plaid processor token the sandbox accepts; wait for its LINKED webhook."""
        answer, body = await self.send(
            "POST",
            f"/v1/parties/{party}/bank-accounts",
            json={"processorToken": f"processor-sandbox-{uuid.uuid4().hex}"},
            key=f"link-{uuid.uuid4()}",
        )
        assert answer.status == 202, (answer, body)
        account_id = str(body["id"])
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            _, listed = await self.send("GET", f"/v1/parties/{party}/bank-accounts")
            items = listed.get("items", []) if isinstance(listed, dict) else []
            if any(a["id"] == account_id and a["status"] == "LINKED" for a in items):
                return account_id
            await asyncio.sleep(0.2)
        raise TimeoutError(f"bank account of {party} never became LINKED")


class SteadyLoad:
    """`clients` partner-app users, each making one deposit after another (a new key each time)
    until `stop()`, and finishing the one in hand. With `abandon_every=n`, every n-th deposit
    whose request got no answer at all is given up by its client instead of retried. The first
    `careful` clients never abandon: each deposit of theirs is a `careful_deposit`."""

    def __init__(
        self,
        app: PartnerApp,
        parties: list[str],
        clients: int,
        *,
        abandon_every: int = 0,
        pause: float = 0.0,
        careful: int = 0,
    ) -> None:
        self.careful = careful
        self.app = app
        self.parties = parties
        self.clients = clients
        self.abandon_every = abandon_every
        self.pause = pause
        self.deposits: list[Deposit] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(n)) for n in range(self.clients)]

    async def _client(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            count = len(self.deposits)
            deposit = new_deposit(self.parties[(n + i) % len(self.parties)], amount_for(count))
            self.deposits.append(deposit)
            if n < self.careful:
                await self.app.careful_deposit(deposit)
            else:
                abandon = bool(self.abandon_every) and count % self.abandon_every == 0
                await self.app.deposit(deposit, abandon_without_answer=abandon)
            i += 1
            if self.pause:
                await asyncio.sleep(self.pause)

    async def stop(self) -> None:
        """No new deposits; wait for every client's current one to get its definite answer."""
        self._stop.set()
        await asyncio.gather(*self._tasks)


def amount_for(i: int) -> str:
    # Cents from 10 to 99: none of the sandbox's magic amounts (.01-.05 pick odd outcomes).
    return f"{10 + (i * 7) % 90}.{10 + (i * 13) % 90:02d}"


def new_deposit(party: str, amount: str | Decimal) -> Deposit:
    return Deposit(party=party, key=f"fault-{uuid.uuid4()}", amount=f"{Decimal(amount):.2f}")


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def answer_kinds(answers: Iterable[Answer]) -> dict[str, int]:
    """Answers counted by kind: `202 PENDING`, `503 database_unavailable`, `None ReadError`."""
    kinds = Counter(f"{a.status} {a.code or a.state or a.error or ''}".strip() for a in answers)
    return dict(kinds.most_common())


def bad_answers(answers: Iterable[Answer]) -> list[Answer]:
    """Answers no client should ever get: a 500, an error that is not problem+json with a
    code, or a stack trace in a body."""
    return [
        a
        for a in answers
        if a.status is not None
        and (
            a.status == 500
            or a.trace_in_body
            or (a.status >= 400 and not (a.problem_json and a.code))
        )
    ]


# --- the ledger check ---------------------------------------------------------------------------


@dataclass
class LedgerReport:
    """The service's database against the sandbox's ledger, after a scenario."""

    requests: int = 0
    abandoned: int = 0
    answered: int = 0
    accepted: int = 0
    transactions: int = 0
    transfers_at_bakkt: int = 0
    bakkt_requests: int = 0
    undecided: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    def problems(self) -> list[str]:
        found = []
        unanswered = self.requests - self.abandoned - self.answered
        if unanswered:
            found.append(f"{unanswered} requests never got a definite answer")
        for name in ("undecided", "missing", "doubled", "lost", "orphans", "mismatched"):
            items: list[str] = getattr(self, name)
            if items:
                found.append(f"{name} ({len(items)}): {items[:5]}")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems()

    def figures(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "abandoned by the client": self.abandoned,
            "accepted": self.accepted,
            "transactions": self.transactions,
            "transfers at Bakkt": self.transfers_at_bakkt,
            "Bakkt requests": self.bakkt_requests,
            "duplicates": len(self.doubled),
            "lost": len(self.lost) + len(self.missing) + len(self.orphans),
            "undecided": len(self.undecided),
            "statuses": dict(sorted(self.statuses.items())),
        }


async def check_ledger(
    dsn: str, sandbox: SandboxControl, deposits: list[Deposit], parties: Iterable[str]
) -> LedgerReport:
    """Every request answered; every transaction a client was told about is ours and decided;
    exactly one Bakkt transfer per transaction Bakkt accepted, none missing, none doubled."""
    party_set = set(parties)
    ledger = [t for t in await sandbox.transfers() if t["partnerPartyRef"] in party_set]
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT id::text AS id, party_ref, status, amount_cents, bakkt_ref, "
            "bakkt_idempotency_key FROM transactions WHERE origin = 'PARTNER' "
            "AND party_ref = ANY($1::text[])",
            sorted(party_set),
        )
        keys = await conn.fetch(
            "SELECT party_ref, key, transaction_id::text AS transaction_id FROM idempotency_keys "
            "WHERE party_ref = ANY($1::text[]) AND transaction_id IS NOT NULL",
            sorted(party_set),
        )
    finally:
        await conn.close()

    report = LedgerReport(
        requests=len(deposits),
        abandoned=sum(1 for d in deposits if d.abandoned),
        answered=sum(1 for d in deposits if d.status is not None),
        accepted=sum(1 for d in deposits if d.accepted),
        transactions=len(rows),
        transfers_at_bakkt=len(ledger),
        bakkt_requests=sum(t["requestCount"] for t in ledger),
    )
    ours = {r["id"]: r for r in rows}
    by_ref: dict[str, list[dict[str, Any]]] = {}
    for entry in ledger:
        by_ref.setdefault(entry["partnerTransactionRef"], []).append(dict(entry))
    for ref, entries in by_ref.items():
        if len(entries) > 1:
            report.doubled.append(f"Bakkt holds {len(entries)} transfers with ref {ref}")
    known_refs = {r["bakkt_ref"] for r in rows}
    report.orphans += [
        f"Bakkt transfer {ref} is not in our database" for ref in by_ref if ref not in known_refs
    ]
    for row in rows:
        report.statuses[row["status"]] += 1
        if row["status"] in UNDECIDED:
            report.undecided.append(f"{row['id']} {row['status']}")
            continue
        entries = by_ref.get(row["bakkt_ref"], [])
        if row["status"] == "FAILED":
            if entries:
                report.mismatched.append(f"{row['id']} FAILED here but accepted by Bakkt")
            continue
        if not entries:
            report.missing.append(f"{row['id']} {row['status']} but Bakkt never got it")
            continue
        entry = entries[0]
        if entry["idempotencyKey"] != row["bakkt_idempotency_key"]:
            report.mismatched.append(f"{row['id']} sent with another idempotency key")
        if Decimal(str(entry["amount"])) * 100 != row["amount_cents"]:
            report.mismatched.append(f"{row['id']} amount {entry['amount']} at Bakkt")

    # Which consumer key each transaction belongs to, as the database says.
    by_txn = Counter(k["transaction_id"] for k in keys)
    key_txn = {(k["party_ref"], k["key"]): k["transaction_id"] for k in keys}
    report.doubled += [f"transaction {t} held by {n} keys" for t, n in by_txn.items() if n > 1]
    report.doubled += [f"transaction {t} was asked for by no key" for t in ours if t not in by_txn]
    told: Counter[str] = Counter()
    for deposit in deposits:
        if deposit.status is None:
            continue
        txn_id = deposit.transaction_id
        if deposit.accepted and txn_id is None:
            report.lost.append(f"{deposit.key}: {deposit.status} without a transaction id")
        if txn_id is None:
            continue
        told[txn_id] += 1
        if txn_id not in ours:
            report.lost.append(f"{deposit.key}: transaction {txn_id} is not in our database")
        elif key_txn.get((deposit.party, deposit.key)) != txn_id:
            report.doubled.append(f"{deposit.key}: answered {txn_id}, its key holds another")
    report.doubled += [f"transaction {t} answered to {n} keys" for t, n in told.items() if n > 1]
    return report


async def wait_until_healed(
    dsn: str,
    sandbox: SandboxControl,
    deposits: list[Deposit],
    parties: Iterable[str],
    within: float,
) -> tuple[LedgerReport, float]:
    """Poll the ledger check until it holds; returns the last report and the seconds it took
    (the report still has problems when `within` ran out)."""
    party_list = list(parties)
    started = time.monotonic()
    while True:
        report = await check_ledger(dsn, sandbox, deposits, party_list)
        elapsed = time.monotonic() - started
        if report.ok or elapsed > within:
            return report, elapsed
        await asyncio.sleep(0.5)


async def transaction_states(dsn: str, parties: Iterable[str]) -> dict[str, str]:
    """Every transaction of `parties` in our database, by Bakkt's reference: its status."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT bakkt_ref, status FROM transactions WHERE party_ref = ANY($1::text[])",
            sorted(set(parties)),
        )
    finally:
        await conn.close()
    return {r["bakkt_ref"]: r["status"] for r in rows}


async def recovery_figures(dsn: str, parties: Iterable[str]) -> dict[str, int]:
    """From the transactions' history: how many went through UNKNOWN, and how many moves the
    recovery workers or reconciliation made (source `sync`) rather than webhooks or the API."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(DISTINCT h.transaction_id) FILTER (WHERE h.to_status = 'UNKNOWN') "
            "AS unknown, count(*) FILTER (WHERE h.source = 'sync' AND h.applied) AS by_recovery, "
            "count(*) FILTER (WHERE h.source = 'webhook' AND h.applied) AS by_webhook "
            "FROM transaction_history h JOIN transactions t ON t.id = h.transaction_id "
            "WHERE t.party_ref = ANY($1::text[])",
            sorted(set(parties)),
        )
    finally:
        await conn.close()
    assert row is not None
    return {
        "went through UNKNOWN": row["unknown"],
        "moves made by recovery": row["by_recovery"],
        "moves made by webhooks": row["by_webhook"],
    }
