"""A real Postgres for machines that have none: `pgserver` from its wheel, else a private
cluster from the system's initdb/pg_ctl. Never SQLite."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# pgserver narrates every initdb and pg_ctl run at INFO (about 60 lines per start); its failures
# come at ERROR with the command's whole output, and those are what a person needs.
logging.getLogger("pgserver").setLevel(logging.WARNING)

NO_DATABASE_MESSAGE = (
    "No Postgres is available: DATABASE_URL is not set, the `pgserver` package is not installed "
    "(it has wheels for CPython 3.9-3.12: `pip install 'fiat-onramp[embedded]'`), and no "
    "initdb/pg_ctl was found. Set DATABASE_URL to a Postgres database, or run "
    "`docker compose up db` and use DATABASE_URL=postgresql://postgres:postgres@127.0.0.1:5432/"
    "fiat_onramp."
)


class EmbeddedPostgresUnavailable(RuntimeError):
    pass


@dataclass
class EmbeddedPostgres:
    url: str
    kind: str
    _stop: Any = field(default=None, repr=False)

    def stop(self) -> None:
        if self._stop is not None:
            with contextlib.suppress(Exception):
                self._stop()
            self._stop = None


def _asyncpg_url(libpq_uri: str) -> str:
    return libpq_uri.replace("postgresql://", "postgresql+asyncpg://", 1)


def _start_pgserver(data_dir: Path) -> EmbeddedPostgres | None:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root in a container) and falls
            # back to /tmp/runtime-<uid>, which serves pgserver's lock file just as well.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=UserWarning)
            import pgserver
    except ImportError:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")  # type: ignore[attr-defined]
    uri: str = server.get_uri()
    # pgserver hands out `postgresql://postgres:@/postgres?host=<socket dir>`.
    return EmbeddedPostgres(url=_asyncpg_url(uri), kind="pgserver", _stop=server.cleanup)


def _find_pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_system_cluster(data_dir: Path) -> EmbeddedPostgres | None:
    initdb, pg_ctl = _find_pg_bin("initdb"), _find_pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    run_as: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses to run as root; the Debian packages create a `postgres` user.
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            return None
        os.chown(data_dir, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    pgdata = data_dir / "pgdata"
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [*run_as, initdb, "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
    port = _free_port()
    subprocess.run(  # noqa: S603
        [
            *run_as,
            pg_ctl,
            "-D",
            str(pgdata),
            "-l",
            str(data_dir / "postgres.log"),
            "-o",
            f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1",
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )

    def stop() -> None:
        subprocess.run(  # noqa: S603
            [*run_as, pg_ctl, "-D", str(pgdata), "-m", "fast", "stop"],
            check=False,
            capture_output=True,
        )

    return EmbeddedPostgres(
        url=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres", kind="initdb", _stop=stop
    )


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or join) an embedded Postgres whose data lives in `data_dir`."""
    started = time.monotonic()
    for starter in (_start_pgserver, _start_system_cluster):
        try:
            server = starter(data_dir)
        except subprocess.CalledProcessError as exc:
            output = "\n".join(
                part.decode(errors="replace").strip()
                for part in (exc.stdout, exc.stderr)
                if isinstance(part, bytes) and part.strip()
            )
            logger.error("embedded postgres via %s failed: %s\n%s", starter.__name__, exc, output)
            continue
        except Exception as exc:
            logger.warning("embedded postgres via %s failed: %s", starter.__name__, exc)
            continue
        if server is not None:
            logger.info(
                "embedded postgres (%s) ready in %.2fs", server.kind, time.monotonic() - started
            )
            return server
    raise EmbeddedPostgresUnavailable(NO_DATABASE_MESSAGE)
