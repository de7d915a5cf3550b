"""Keeping the sandbox's state across restarts: one JSON snapshot, written atomically.

Bakkt's PTR keeps its parties, accounts and transfers when a partner's stack restarts; a sandbox
that forgot them would leave the service's database describing a world the sandbox no longer
has. A snapshot file rather than tables in the service's Postgres: the sandbox shares nothing
with the service and must run where there is no database at all (a partner's CI, `fiat-onramp
sandbox`). Its state is small and lives in one process, so a whole-state snapshot is simple,
and an atomic rename means a crash leaves either the old snapshot or the new one, never half.

What is kept: parties (status, reason, balances, current and replaced bank accounts, every
transaction), the transfer ledger, live idempotency keys (expiring on the wall clock), planned
lifecycle moves, the business clock's position, hosted-link sessions, the token signing key (so
tokens issued before a restart stay valid), and webhook deliveries not yet delivered (pending
ones are sent again after the restart). Not kept: faults, webhook switches, delivered webhook
history: they are a test's knobs and logs, not Bakkt's state.

Business time does not pass while the sandbox is stopped: it resumes where it was saved.
"""

import asyncio
import contextlib
import json
import logging
import os
import time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakkt_sandbox.bank import LinkSession
from bakkt_sandbox.model import (
    BankAccount,
    LedgerEntry,
    Party,
    PartyStatus,
    Transaction,
    TxStatus,
    TxType,
)
from bakkt_sandbox.webhooks import Attempt, Delivery

if TYPE_CHECKING:
    from bakkt_sandbox.runtime import Sandbox

log = logging.getLogger("bakkt_sandbox.persistence")

FORMAT = 1
STATE_FILE = "state.json"
# Deliveries in these states are still owed or worth redelivering; the rest is history.
KEPT_DELIVERY_STATES = frozenset({"pending", "failed", "dropped"})


class SnapshotError(Exception):
    """A snapshot that cannot be read: refuse to start rather than silently start empty."""


# -- encoding ---------------------------------------------------------------------------------


def _account(a: BankAccount) -> dict[str, Any]:
    return {
        "linkRef": a.link_ref,
        "bankName": a.bank_name,
        "accountMask": a.account_mask,
        "accountType": a.account_type,
        "routingNumber": a.routing_number,
        "source": a.source,
        "linkedMs": a.linked_ms,
        "returnFirstDeposit": a.return_first_deposit,
    }


def _tx(t: Transaction) -> dict[str, Any]:
    return {
        "ref": t.ref,
        "type": t.type.value,
        "amount": str(t.amount),
        "status": t.status.value,
        "createdMs": t.created_ms,
        "updatedMs": t.updated_ms,
        "relatedRef": t.related_ref,
        "reasonCode": t.reason_code,
        "reasonDescription": t.reason_description,
        "idempotencyKey": t.idempotency_key,
        "planVersion": t.plan_version,
    }


def _party(p: Party) -> dict[str, Any]:
    return {
        "ref": p.ref,
        "status": p.status.value,
        "reasonCode": p.reason_code,
        "statusChangedMs": p.status_changed_ms,
        "verificationUrl": p.verification_url,
        "verificationExpiryMs": p.verification_expiry_ms,
        "settled": str(p.settled),
        "unsettled": str(p.unsettled),
        "bankAccount": _account(p.bank_account) if p.bank_account else None,
        "replacedAccounts": [_account(a) for a in p.replaced_accounts],
        "transactions": [_tx(t) for t in p.transactions.values()],
    }


def _delivery(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "event": d.event,
        "createdMs": d.created_ms,
        "duplicateOf": d.duplicate_of,
        "state": d.state,
        "deliveredMs": d.delivered_ms,
        "attempts": [
            {
                "atMs": a.at_ms,
                "url": a.url,
                "status": a.status,
                "error": a.error,
                "durationMs": a.duration_ms,
            }
            for a in d.attempts
        ],
    }


def snapshot(sandbox: "Sandbox") -> dict[str, Any]:
    """The whole state as JSON-ready data; synchronous, so it is one consistent moment."""
    bank = sandbox.bank
    return {
        "format": FORMAT,
        "savedAtMs": int(time.time() * 1000),
        "businessDays": bank.clock.now(),
        "signingKey": sandbox.tokens.signing_key_pem(),
        "tokenGeneration": sandbox.tokens.generation,
        "parties": [_party(p) for p in bank.parties.values()],
        "ledger": [
            {
                "partyRef": e.transaction.party_ref,
                "ref": e.transaction.ref,
                "idempotencyKey": e.idempotency_key,
                "fiatTransactType": e.fiat_transact_type,
                "instrumentType": e.instrument_type,
                "requestCount": e.request_count,
                "bankAccountRef": e.bank_account_ref,
            }
            for e in bank.ledger
        ],
        "keys": [
            {
                "key": key,
                "partyRef": e.transaction.party_ref,
                "ref": e.transaction.ref,
                "expiresAt": expires,
            }
            for key, e, expires in bank.key_records()
        ],
        "plannedMoves": [
            {
                "due": due,
                "partyRef": tx.party_ref,
                "ref": tx.ref,
                "version": version,
                "status": status.value,
                "reasonCode": code,
                "reasonDescription": description,
            }
            for due, tx, version, status, code, description in bank.planned_moves()
        ],
        "linkSessions": [
            {
                "id": s.id,
                "partyRef": s.party_ref,
                "linkRef": s.link_ref,
                "redirectUri": s.redirect_uri,
                "expiresMs": s.expires_ms,
                "used": s.used,
            }
            for s in bank.link_sessions.values()
        ],
        "deliveries": [
            _delivery(d) for d in sandbox.webhooks.deliveries if d.state in KEPT_DELIVERY_STATES
        ],
    }


# -- decoding ---------------------------------------------------------------------------------


def _read_account(a: dict[str, Any]) -> BankAccount:
    return BankAccount(
        a["linkRef"],
        a["bankName"],
        a["accountMask"],
        a["accountType"],
        a["routingNumber"],
        a["source"],
        a["linkedMs"],
        a["returnFirstDeposit"],
    )


def _read_party(p: dict[str, Any]) -> Party:
    party = Party(
        p["ref"],
        PartyStatus(p["status"]),
        p["reasonCode"],
        settled=Decimal(p["settled"]),
        unsettled=Decimal(p["unsettled"]),
        bank_account=_read_account(p["bankAccount"]) if p["bankAccount"] else None,
        replaced_accounts=[_read_account(a) for a in p["replacedAccounts"]],
        status_changed_ms=p["statusChangedMs"],
        verification_url=p["verificationUrl"],
        verification_expiry_ms=p["verificationExpiryMs"],
    )
    for t in p["transactions"]:
        party.transactions[t["ref"]] = Transaction(
            party.ref,
            t["ref"],
            TxType(t["type"]),
            Decimal(t["amount"]),
            TxStatus(t["status"]),
            t["createdMs"],
            t["updatedMs"],
            related_ref=t["relatedRef"],
            reason_code=t["reasonCode"],
            reason_description=t["reasonDescription"],
            idempotency_key=t["idempotencyKey"],
            plan_version=t["planVersion"],
        )
    return party


def restore(sandbox: "Sandbox", data: dict[str, Any]) -> None:
    """Put a snapshot's state into a sandbox that has just been created (nothing running yet)."""
    if data.get("format") != FORMAT:
        raise SnapshotError(f"snapshot format {data.get('format')!r}, this sandbox reads {FORMAT}")
    bank = sandbox.bank
    bank.reset()
    bank.clock.restore(float(data["businessDays"]))
    sandbox.tokens.restore(data["signingKey"], int(data["tokenGeneration"]))
    for p in data["parties"]:
        party = _read_party(p)
        bank.parties[party.ref] = party

    def tx(party_ref: str, ref: str) -> Transaction:
        return bank.parties[party_ref].transactions[ref]

    entries: dict[tuple[str, str], LedgerEntry] = {}
    for e in data["ledger"]:
        entry = LedgerEntry(
            tx(e["partyRef"], e["ref"]),
            e["idempotencyKey"],
            e["fiatTransactType"],
            e["instrumentType"],
            e["requestCount"],
            e["bankAccountRef"],
        )
        bank.ledger.append(entry)
        entries[(e["partyRef"], e["ref"])] = entry
    now = time.time()
    for k in data["keys"]:
        if k["expiresAt"] > now:
            bank.restore_key(k["key"], entries[(k["partyRef"], k["ref"])], k["expiresAt"])
    for m in data["plannedMoves"]:
        bank.restore_move(
            m["due"],
            tx(m["partyRef"], m["ref"]),
            m["version"],
            TxStatus(m["status"]),
            m["reasonCode"],
            m["reasonDescription"],
        )
    for s in data["linkSessions"]:
        bank.link_sessions[s["id"]] = LinkSession(
            s["id"], s["partyRef"], s["linkRef"], s["redirectUri"], s["expiresMs"], s["used"]
        )
    sandbox.webhooks.restore(
        [
            Delivery(
                d["id"],
                d["event"],
                d["createdMs"],
                d["duplicateOf"],
                d["state"],
                [
                    Attempt(a["atMs"], a["url"], a["status"], a["error"], a["durationMs"])
                    for a in d["attempts"]
                ],
                d["deliveredMs"],
            )
            for d in data["deliveries"]
        ]
    )


# -- the file ---------------------------------------------------------------------------------


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash at any point leaves the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    # The rename is durable only once the directory entry is.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateStore:
    """The snapshot of one sandbox under `directory`: loaded at start, saved when the state has
    changed (checked every `interval` seconds), at least every `max_age` seconds so the clock's
    position stays near, and once more on shutdown."""

    def __init__(self, directory: Path, interval: float = 1.0, max_age: float = 30.0) -> None:
        self.path = directory / STATE_FILE
        self.interval = interval
        self.max_age = max_age
        self._saved_revision: int | None = None
        self._saved_at = 0.0
        self.saves = 0

    def load(self, sandbox: "Sandbox") -> bool:
        """Restore the snapshot if there is one; False when there is none (a first start)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return False
        try:
            restore(sandbox, json.loads(raw))
        except (ValueError, KeyError, TypeError, SnapshotError) as exc:
            raise SnapshotError(
                f"cannot read the sandbox's saved state {self.path} ({exc!s:.200}); "
                "move it away or start afresh with `make reset` (fiat-onramp dev --reset)"
            ) from exc
        self._saved_revision = _revision(sandbox)
        self._saved_at = time.monotonic()
        log.info(
            "Bakkt sandbox state restored from %s (%d parties)",
            self.path,
            len(sandbox.bank.parties),
        )
        return True

    def save(self, sandbox: "Sandbox") -> None:
        revision = _revision(sandbox)
        data = json.dumps(snapshot(sandbox), separators=(",", ":")).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, data)
        self._saved_revision = revision
        self._saved_at = time.monotonic()
        self.saves += 1

    def due(self, sandbox: "Sandbox") -> bool:
        return (
            _revision(sandbox) != self._saved_revision
            or time.monotonic() - self._saved_at >= self.max_age
        )

    async def run(self, sandbox: "Sandbox") -> None:
        """Save whenever due, until cancelled; the caller saves once more after stopping."""
        while True:
            await asyncio.sleep(self.interval)
            if self.due(sandbox):
                try:
                    self.save(sandbox)
                except OSError:  # a full disk must not stop the sandbox; the next save retries
                    log.exception("could not save the sandbox's state to %s", self.path)


def _revision(sandbox: "Sandbox") -> int:
    return sandbox.bank.revision + sandbox.webhooks.revision
