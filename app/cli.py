"""The `fiat-onramp` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from app import migrate
from app.config import (
    AppEnv,
    Settings,
    describe_settings_error,
    get_settings,
    is_settings_error,
)
from app.core import tracing
from app.core.logs import configure_logging, register_secrets
from app.core.metrics import prepare_multiprocess, remove_multiprocess_dir
from app.serving import ServiceServer, serve, server_configs
from app.startup import ConfigError, DatabaseUnreachable, check_database

DATA_DIR = Path(".data")
SANDBOX_STATE_DIR = DATA_DIR / "sandbox"


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings.log_level.upper(), settings.resolved_log_format)
    register_secrets(settings.secret_values())


def _require_database_url(settings: Settings, *, wait_for_server: bool = False) -> str:
    """DATABASE_URL, checked by connecting once. A long-running command (`wait_for_server`)
    starts even while no server answers, and reports not ready until one does; a missing
    database or refused login never fixes itself, so it stops every command."""
    if not settings.database_url:
        raise ConfigError(
            "DATABASE_URL is not set. Use `fiat-onramp dev` (embedded Postgres), or point "
            "DATABASE_URL at a database (for example after `docker compose up db`)."
        )
    try:
        asyncio.run(check_database(settings.database_url))
    except DatabaseUnreachable as exc:
        if not wait_for_server:
            raise
        logging.getLogger("app.cli").warning(
            "%s; starting anyway, /readyz says when it is back", exc
        )
    return settings.database_url


def cmd_serve(args: argparse.Namespace) -> int:
    settings = get_settings()
    _configure_logging(settings)
    _require_database_url(settings, wait_for_server=True)
    from app.main import create_app

    workers: int = args.workers
    tracing.check_settings()
    if workers > 1:
        # Each worker process builds its own app (engine, pools, Bakkt client); building one
        # here first turns a misconfiguration into one line before any worker starts.
        create_app(settings)
    # Before any worker starts: they inherit PROMETHEUS_MULTIPROC_DIR and sum their metrics
    # through it, so a scrape answered by any one of them counts them all.
    metrics_dir = prepare_multiprocess(workers)
    try:
        # uvicorn_options carries the log config (JSON or text), applied in every worker.
        return serve(settings, host=args.host, port=args.port, workers=workers)
    finally:
        remove_multiprocess_dir(metrics_dir)


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = get_settings()
    _configure_logging(settings)
    url = _require_database_url(settings)
    migrate.upgrade(url, args.revision)
    print(f"migrated to {args.revision} ({migrate.head_revision()})")
    return 0


async def _dev(args: argparse.Namespace, settings: Settings) -> None:
    from app.db import create_engine
    from app.main import create_app

    embedded = None
    if not settings.database_url:
        from app.embedded import EmbeddedPostgresUnavailable, start_embedded_postgres

        try:
            embedded = await asyncio.to_thread(start_embedded_postgres, DATA_DIR / "postgres")
        except EmbeddedPostgresUnavailable as exc:
            raise ConfigError(str(exc)) from None
        settings = settings.model_copy(update={"database_url": embedded.url})
        print(f"embedded Postgres ({embedded.kind}) with its data under {DATA_DIR}/postgres")
    else:
        # A newcomer's DATABASE_URL often names a server that has no such database yet.
        created = await check_database(settings.database_url, create_missing=True)
        if created:
            print(created)
    try:
        engine = create_engine(settings)
        await migrate.upgrade_async(engine)
        await engine.dispose()
        sandbox_server = None
        if not args.no_sandbox:
            from bakkt_sandbox.config import SandboxSettings
            from bakkt_sandbox.persistence import SnapshotError
            from bakkt_sandbox.server import SandboxServer

            sandbox_settings = SandboxSettings()
            update: dict[str, object] = {}
            if "SANDBOX_WEBHOOK_URL" not in os.environ:
                # The sandbox sends its webhooks to this service, wherever --port put it.
                update["webhook_url"] = f"http://127.0.0.1:{args.port}/webhooks/bakkt"
            if "SANDBOX_STATE_DIR" not in os.environ:
                # Bakkt's PTR keeps its state while ours restarts; so does the sandbox, beside
                # the embedded database, or the two would describe different worlds.
                update["state_dir"] = SANDBOX_STATE_DIR
            sandbox_settings = sandbox_settings.model_copy(update=update)
            try:
                sandbox_server = SandboxServer(sandbox_settings, args.host, args.sandbox_port)
            except SnapshotError as exc:
                print(str(exc), file=sys.stderr)
                raise SystemExit(2) from exc
            # Started before the service, so the service's first Bakkt call finds it listening.
            await sandbox_server.start()
            settings = settings.model_copy(
                update={"bakkt_base_url": f"http://127.0.0.1:{args.sandbox_port}"}
            )
            print(
                f"Bakkt sandbox on http://{args.host}:{args.sandbox_port} "
                f"with its state under {sandbox_settings.state_dir or '(memory)'}"
            )
        public, internal = server_configs(
            settings, create_app(settings), host=args.host, port=args.port
        )
        server = ServiceServer(public, internal)
        root = f"http://{args.host}:{args.port}"
        demo = settings.app_env is AppEnv.DEVELOPMENT
        print(f"fiat-onramp on {root} (docs at /docs{', the demo at /demo' if demo else ''})")
        opener = (
            asyncio.create_task(_open_when_started(server, f"{root}/demo"))
            if args.open_demo and demo
            else None
        )
        try:
            await server.serve()
        finally:
            if opener is not None:
                opener.cancel()
            if sandbox_server is not None:
                # Its shutdown writes the last snapshot.
                await sandbox_server.stop()
    finally:
        if embedded is not None:
            embedded.stop()


async def _open_when_started(server: uvicorn.Server, url: str) -> None:
    # uvicorn.Server offers `started` as a flag only, no event to wait on.
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    import webbrowser

    # False (or nothing at all) on a machine without a browser: the URL is printed either way.
    if not await asyncio.to_thread(webbrowser.open, url):
        print(f"no browser to open here; the demo is at {url}")


def _postgres_running(data_dir: Path) -> bool:
    """A live postmaster owns `data_dir` (a stale postmaster.pid after a crash does not count)."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reset_dev_state(settings: Settings, data_dir: Path = DATA_DIR) -> list[Path]:
    """Forget the embedded database and the sandbox's state together; what was removed.

    Together or not at all: clearing one side only would leave the service and the sandbox
    describing different worlds, which is what keeping the sandbox's state is for.
    """
    if settings.database_url:
        raise SystemExit(
            "--reset clears the embedded database under .data/, but DATABASE_URL is set: that "
            "database would stay as it is while the sandbox forgets everything. Unset "
            "DATABASE_URL, or clear that database and .data/sandbox yourself."
        )
    postgres = data_dir / "postgres"
    if _postgres_running(postgres):
        raise SystemExit(f"{postgres} is in use by a running Postgres: stop `make dev` first")
    sandbox_dir = data_dir / "sandbox"
    if "SANDBOX_STATE_DIR" in os.environ:
        sandbox_dir = Path(os.environ["SANDBOX_STATE_DIR"])
    removed = []
    for path in (postgres, sandbox_dir):
        if path.exists():
            shutil.rmtree(path)
            removed.append(path)
    return removed


def cmd_dev(args: argparse.Namespace) -> int:
    settings = get_settings()
    _configure_logging(settings)
    if args.reset:
        removed = reset_dev_state(settings)
        print("cleared " + (", ".join(map(str, removed)) or "nothing (no state yet)"))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_dev(args, settings))
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from bakkt_sandbox.config import SandboxSettings
    from bakkt_sandbox.persistence import SnapshotError
    from bakkt_sandbox.server import run

    settings = SandboxSettings()
    if args.state_dir is not None:
        settings = settings.model_copy(update={"state_dir": args.state_dir})
    try:
        run(host=args.host, port=args.port, settings=settings)
    except SnapshotError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.app_env.value == "production":
        print("refusing to mint development tokens with APP_ENV=production", file=sys.stderr)
        return 2
    from app.auth.dev_token import mint_dev_token

    print(mint_dev_token(settings, args.party, admin=args.admin, ttl_seconds=args.ttl))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    # The benchmarks live in the source checkout, not in the installed package.
    sys.path.insert(0, str(Path.cwd()))
    try:
        from benchmarks import bakkt_client, service
    except ImportError:
        print("run `fiat-onramp bench` from a source checkout (benchmarks/)", file=sys.stderr)
        return 2
    rest: list[str] = args.bench_args
    if rest[:1] == ["client"]:
        sys.argv = ["benchmarks.bakkt_client", *rest[1:]]
        bakkt_client.main()
        return 0
    return service.main(rest[1:] if rest[:1] == ["service"] else rest)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    _configure_logging(settings)
    _require_database_url(settings, wait_for_server=True)
    from app.recovery.worker import run_standalone

    if args.metrics_port:
        from prometheus_client import start_http_server

        from app.core.metrics import METRICS

        # The workers' own counters (job errors, recovery, Bakkt calls) for a scrape; the
        # database's gauges are the API pods' `/metrics`.
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=METRICS.registry)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_standalone(settings))
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    from app.admin.commands import UsageError, parse, run, usage

    try:
        command = parse(args)
    except UsageError as exc:
        return usage(str(exc))
    settings = get_settings()
    _configure_logging(settings)
    _require_database_url(settings)
    return asyncio.run(run(command, settings))


def _add_admin_parser(sub: Any) -> None:
    """`fiat-onramp admin ...`: the admin API's actions, run against the database directly
    (app/admin/commands.py says why); values are checked by the routes' own models."""
    admin = sub.add_parser(
        "admin", help="operators' actions: list, sync, release, replay, disable, alerts"
    )
    admin.add_argument(
        "--actor", help="your name for the history, recorded as cli:NAME (default: the OS user)"
    )
    admin.set_defaults(func=cmd_admin)
    cmds = admin.add_subparsers(dest="admin_command", required=True)

    def paging(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--limit", type=int, default=50)
        parser.add_argument("--cursor", help="the nextCursor of the page before")

    txns = cmds.add_parser("transactions", help="transactions across parties, oldest first")
    txns.add_argument("--status", action="append", default=[], help="repeatable")
    txns.add_argument("--bucket", help="stuck, unknown, held or overdue")
    txns.add_argument("--party", help="one partnerPartyRef")
    txns.add_argument("--stuck-after-hours", type=int, default=168)
    paging(txns)
    cmds.add_parser("transaction", help="one transaction and its history").add_argument(
        "transaction_id"
    )
    cmds.add_parser("sync", help="ask Bakkt about a transaction now, apply it").add_argument(
        "transaction_id"
    )
    release = cmds.add_parser("release", help="release a held transaction, apply what was held")
    release.add_argument("transaction_id")
    release.add_argument("--note")
    events = cmds.add_parser("events", help="stored webhook events, newest first")
    events.add_argument("--status", action="append", default=[], help="repeatable")
    events.add_argument("--request-id")
    events.add_argument("--needs-operator", action="store_true")
    paging(events)
    cmds.add_parser("replay", help="apply a stored webhook event again").add_argument(
        "event_id", type=int, help="the stored event's id (`events` lists them)"
    )
    cmds.add_parser("account", help="one bank account and its history").add_argument(
        "bank_account_id"
    )
    disable = cmds.add_parser("disable-account", help="stop ACH money through a bank account")
    disable.add_argument("bank_account_id")
    disable.add_argument("--reason", required=True)
    enable = cmds.add_parser("enable-account", help="enable a bank account an operator disabled")
    enable.add_argument("bank_account_id")
    enable.add_argument("--note")
    alerts = cmds.add_parser("alerts", help="operator alerts, newest first (open ones)")
    alerts.add_argument("--all", action="store_true", help="resolved ones too")
    alerts.add_argument("--kind")
    paging(alerts)
    resolve = cmds.add_parser("resolve", help="mark an alert dealt with")
    resolve.add_argument("alert_id", type=int)
    resolve.add_argument("--note")


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """`--since`: an ISO-8601 time (UTC when it names no zone), or `<N>h` / `<N>d` ago."""
    now = now or datetime.now(UTC)
    text = value.strip()
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[-1:].lower() in units and text[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(**{units[text[-1].lower()]: float(text[:-1])})
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither ISO-8601 nor <N>h / <N>d (for example 36h or 7d)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def _reconcile(settings: Settings, since: datetime, parties: list[str] | None) -> bool:
    from app.bakkt.client import BakktClient
    from app.bakkt.setup import bakkt_breaker, bakkt_config
    from app.db import create_engine, create_session_factory
    from app.recovery.reconcile import reconcile

    engine = create_engine(settings)
    try:
        factory = create_session_factory(engine)
        async with BakktClient(bakkt_config(settings), breaker=bakkt_breaker(settings)) as bakkt:
            summary = await reconcile(factory, bakkt, since=since, parties=parties)
    finally:
        await engine.dispose()
    print("\n".join(summary.lines()))
    return summary.ok


def cmd_reconcile(args: argparse.Namespace) -> int:
    settings = get_settings()
    _configure_logging(settings)
    _require_database_url(settings)
    ok = asyncio.run(_reconcile(settings, args.since, args.party or None))
    return 0 if ok else 1


async def _reseal(settings: Settings) -> int:
    from app.db import create_engine, create_session_factory
    from app.partner_webhooks.service import reseal_secrets

    engine = create_engine(settings)
    try:
        async with create_session_factory(engine)() as session:
            done = await reseal_secrets(session, settings)
    finally:
        await engine.dispose()
    print(
        f"sealed again under the first key: {done.resealed}; already under it: {done.current}; "
        f"unreadable: {len(done.unreadable)}"
    )
    for line in done.unreadable:
        print(f"  unreadable: {line}", file=sys.stderr)
    return 1 if done.unreadable else 0


def cmd_seal_webhook_secrets(args: argparse.Namespace) -> int:  # noqa: ARG001
    from app.errors import AppError

    settings = get_settings()
    _configure_logging(settings)
    _require_database_url(settings)
    try:
        return asyncio.run(_reseal(settings))
    except AppError as exc:
        print(f"fiat-onramp seal-webhook-secrets: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fiat-onramp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service (needs DATABASE_URL, migrated)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.set_defaults(func=cmd_serve)

    mig = sub.add_parser("migrate", help="upgrade the database schema")
    mig.add_argument("revision", nargs="?", default="head")
    mig.set_defaults(func=cmd_migrate)

    dev = sub.add_parser(
        "dev", help="embedded Postgres (unless DATABASE_URL is set), migrations, sandbox, service"
    )
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--sandbox-port", type=int, default=8081)
    dev.add_argument("--no-sandbox", action="store_true")
    dev.add_argument(
        "--reset",
        action="store_true",
        help="first forget the embedded database and the sandbox's state (.data/), together",
    )
    dev.add_argument(
        "--open-demo",
        action="store_true",
        help="open the demo (/demo) in the browser once the service listens (`make demo`)",
    )
    dev.set_defaults(func=cmd_dev)

    sandbox = sub.add_parser("sandbox", help="run the local Bakkt sandbox")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8081)
    sandbox.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="keep the state across restarts in a snapshot here (default: in memory only)",
    )
    sandbox.set_defaults(func=cmd_sandbox)

    token = sub.add_parser("token", help="print a development consumer token (HS256 secret)")
    token.add_argument("--party", required=True, help="the partnerPartyRef the token is for")
    token.add_argument("--admin", action="store_true", help="add the admin scope")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    worker = sub.add_parser(
        "worker", help="run the recovery workers on their own (needs DATABASE_URL, migrated)"
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve the workers' metrics on this port at /metrics (default: none)",
    )
    worker.add_argument("--metrics-host", default="0.0.0.0")  # noqa: S104 - a pod's port
    worker.set_defaults(func=cmd_worker)

    rec = sub.add_parser(
        "reconcile", help="compare Bakkt's transactions with ours and repair what differs"
    )
    rec.add_argument(
        "--since",
        required=True,
        type=parse_since,
        help="ISO-8601 time, or how long ago: 36h, 7d",
    )
    rec.add_argument(
        "--party",
        action="append",
        help="only this partnerPartyRef (repeatable); default every party not CLOSED",
    )
    rec.set_defaults(func=cmd_reconcile)

    _add_admin_parser(sub)
    sub.add_parser(
        "seal-webhook-secrets",
        help="seal every admin webhook endpoint's own secrets under the first "
        "PARTNER_WEBHOOK_SEALING_KEYS key (after a rotation, or for rows from before sealing)",
    ).set_defaults(func=cmd_seal_webhook_secrets)

    bench = sub.add_parser(
        "bench",
        help="the service benchmark against the floor (`bench --help`); `bench client`: the "
        "Bakkt client benchmark",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        # Everything after `bench` belongs to the benchmark's own parser, options included.
        args.bench_args = [*extra, *args.bench_args]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # SIGTERM from a container runtime should end the process as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        return _config_error(str(exc))
    except ValidationError as exc:
        if not is_settings_error(exc):
            raise
        return _config_error(describe_settings_error(exc))
    return result


def _config_error(message: str) -> int:
    # One line, exit 2 (a usage error, as argparse's): a traceback would bury the setting's name.
    print(f"fiat-onramp: configuration error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
