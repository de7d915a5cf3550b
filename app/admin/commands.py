"""`fiat-onramp admin ...`: the admin API's actions from a shell, calling `AdminService` against
the database directly (and Bakkt, for a sync), not the HTTP API.

Why directly: the on-call engineer runs it inside a pod (`kubectl exec`), which has the
database and Bakkt settings already, and it must work when the API is not reachable or not
ready; in production admin tokens come from the partner's identity provider, which a pod cannot
mint. Whoever can run it holds the database credentials anyway, so the database is the trust
boundary, and the actor is the name given with `--actor` (default: the OS user), recorded as
`cli:<name>` so the history tells it from a verified token subject. The same service and the
same rules as the routes: the output is the routes' JSON.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from app.admin import schemas
from app.admin.service import AdminService
from app.bakkt import BakktClient
from app.bakkt.setup import bakkt_breaker, bakkt_config
from app.config import Settings
from app.db import create_engine, create_session_factory
from app.errors import AppError

ACTOR_PREFIX = "cli:"


def actor_of(args: argparse.Namespace) -> str | None:
    name: str | None = args.actor
    if not name:
        try:
            name = getpass.getuser()
        except (OSError, KeyError):  # a container user without a passwd entry
            return None
    try:
        schemas.storable(name)
    except ValueError:
        raise ValueError("--actor holds NUL or a lone surrogate") from None
    return f"{ACTOR_PREFIX}{name}"[:255]


class UsageError(ValueError):
    """Bad arguments: exit 2 before anything connects."""


@dataclass(frozen=True, slots=True)
class Command:
    actor: str
    call: Callable[[AdminService], Awaitable[BaseModel]]


def parse(args: argparse.Namespace) -> Command:
    """The service call for the parsed arguments, every value checked by the routes' own
    models; raises UsageError."""
    try:
        actor = actor_of(args)
        if actor is None:
            raise UsageError("cannot tell who you are: pass --actor NAME")
        return Command(actor, _command(args, actor))
    except ValidationError as exc:
        raise UsageError(_describe(exc)) from None
    except UsageError:
        raise
    except ValueError as exc:
        raise UsageError(str(exc)) from None


async def run(command: Command, settings: Settings, *, bakkt: BakktClient | None = None) -> int:
    """Run one admin command and print its JSON; 0 when it did it, 1 when it was refused (the
    problem's code and detail on stderr)."""
    engine = create_engine(settings)
    try:
        factory = create_session_factory(engine)
        if bakkt is not None:
            result = await command.call(AdminService(factory, bakkt, settings))
        else:
            config, breaker = bakkt_config(settings), bakkt_breaker(settings)
            async with BakktClient(config, breaker=breaker) as client:
                result = await command.call(AdminService(factory, client, settings))
    except AppError as exc:
        print(f"fiat-onramp admin: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    print(json.dumps(result.model_dump(mode="json", by_alias=True), indent=2))
    return 0


def usage(message: str) -> int:
    print(f"fiat-onramp admin: {message}", file=sys.stderr)
    return 2


Call = Callable[[AdminService], Awaitable[BaseModel]]


def _command(args: argparse.Namespace, actor: str) -> Call:
    name: str = args.admin_command
    if name == "transactions":
        q = schemas.AdminTransactionQuery.model_validate(
            {
                "status": args.status,
                "bucket": args.bucket,
                "partyRef": args.party,
                "stuckAfterHours": args.stuck_after_hours,
                "limit": args.limit,
                "cursor": args.cursor,
            }
        )
        return lambda s: s.list_transactions(q)
    if name == "events":
        eq = schemas.WebhookEventQuery.model_validate(
            {
                "status": args.status,
                "requestId": args.request_id,
                "needsOperator": True if args.needs_operator else None,
                "limit": args.limit,
                "cursor": args.cursor,
            }
        )
        return lambda s: s.list_webhook_events(eq)
    if name == "alerts":
        aq = schemas.AlertQuery.model_validate(
            {
                "includeResolved": args.all,
                "kind": args.kind,
                "limit": args.limit,
                "cursor": args.cursor,
            }
        )
        return lambda s: s.list_alerts(aq)
    if name == "transaction":
        txn_id = _uuid(args.transaction_id)
        return lambda s: s.get_transaction(txn_id)
    if name == "sync":
        txn_id = _uuid(args.transaction_id)
        return lambda s: s.sync_transaction(txn_id, actor=actor)
    if name == "release":
        txn_id = _uuid(args.transaction_id)
        note = _note(args.note)
        return lambda s: s.release(txn_id, actor=actor, note=note)
    if name == "replay":
        event_id = _id(args.event_id)
        return lambda s: s.replay_webhook_event(event_id, actor=actor)
    if name == "account":
        account_id = _uuid(args.bank_account_id)
        return lambda s: s.get_bank_account(account_id)
    if name == "disable-account":
        account_id = _uuid(args.bank_account_id)
        reason = schemas.DisableRequest.model_validate({"reason": args.reason}).reason
        return lambda s: s.disable_bank_account(account_id, actor=actor, reason=reason)
    if name == "enable-account":
        account_id = _uuid(args.bank_account_id)
        note = _note(args.note)
        return lambda s: s.enable_bank_account(account_id, actor=actor, note=note)
    if name == "resolve":
        alert_id = _id(args.alert_id)
        note = _note(args.note)
        return lambda s: s.resolve_alert(alert_id, actor=actor, note=note)
    raise ValueError(f"unknown admin command {name!r}")  # pragma: no cover - argparse refuses it


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a UUID") from None


def _id(value: int) -> int:
    if not 0 < value < 2**63:
        raise ValueError(f"{value} is not a stored id")
    return value


def _note(text: str | None) -> str | None:
    # The routes' check: length, and no NUL or lone surrogate (argv decodes undecodable bytes
    # to surrogates).
    return schemas.NoteRequest.model_validate({"note": text}).note


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
    )
