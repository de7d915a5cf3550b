"""Bakkt's side of the money: parties, links, transfers, balances, lifecycle and idempotency.

Every method here is synchronous. The sandbox runs on one event loop, so a method runs to its
end without another request interleaving: a check and the write that depends on it (idempotency
key, balance) can never race, and no lock is needed.
"""

import asyncio
import base64
import binascii
import hashlib
import heapq
import itertools
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bakkt_sandbox import magic
from bakkt_sandbox.config import SandboxSettings
from bakkt_sandbox.magic import AmountOutcome
from bakkt_sandbox.model import (
    ALLOWED_MOVES,
    DEPOSIT_TYPES,
    WITHDRAW_TYPES,
    ApiError,
    BankAccount,
    LedgerEntry,
    Party,
    PartyStatus,
    Transaction,
    TxStatus,
    TxType,
    invalid_field,
    iso_ms,
    money,
    now_ms,
    parse_amount,
)

Publish = Callable[[dict[str, Any]], None]
log = logging.getLogger("bakkt_sandbox.bank")

# The guide only says the browser is sent to redirectUri. Partner apps come back through their
# own deep links (myapp://...), so any absolute URI is taken except the schemes a browser would
# run or read locally instead of navigating to.
_REDIRECT_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):[^\s]+$")
_SCRIPT_OR_LOCAL_SCHEMES = frozenset(
    {"javascript", "vbscript", "data", "file", "blob", "filesystem", "about", "view-source"}
)


def _redirect_allowed(value: object) -> bool:
    if not isinstance(value, str) or len(value) > 2048:
        return False
    match = _REDIRECT_URI.match(value)
    return match is not None and match.group(1).lower() not in _SCRIPT_OR_LOCAL_SCHEMES


ACH_WITHDRAW_MINIMUM = Decimal("10")
MAX_LINK_REF = 255


class BusinessClock:
    """Business days since start: real time divided by `seconds_per_day`, plus explicit advances."""

    def __init__(self, seconds_per_day: float) -> None:
        self._scale = seconds_per_day
        self._anchor_real = time.monotonic()
        self._anchor_days = 0.0

    def now(self) -> float:
        if self._scale <= 0:
            return self._anchor_days
        return self._anchor_days + (time.monotonic() - self._anchor_real) / self._scale

    def advance(self, days: float) -> None:
        self._anchor_days += days

    def set_scale(self, seconds_per_day: float) -> None:
        self._anchor_days = self.now()
        self._anchor_real = time.monotonic()
        self._scale = seconds_per_day

    def seconds_until(self, day: float) -> float | None:
        if self._scale <= 0:
            return None
        return max(0.0, (day - self.now()) * self._scale)

    def restore(self, days: float) -> None:
        """Resume at `days`: business time does not pass while the sandbox is stopped."""
        self._anchor_days = days
        self._anchor_real = time.monotonic()

    @property
    def scale(self) -> float:
        return self._scale

    def to_json(self) -> dict[str, Any]:
        return {"businessDays": self.now(), "timeScale": self._scale, "frozen": self._scale <= 0}


@dataclass(order=True, slots=True)
class _Timer:
    due: float
    seq: int
    tx: Transaction = field(compare=False)
    version: int = field(compare=False)
    status: TxStatus = field(compare=False)
    reason_code: str | None = field(compare=False, default=None)
    reason_description: str | None = field(compare=False, default=None)


@dataclass(slots=True)
class _KeyRecord:
    entry: LedgerEntry
    # Wall-clock seconds: Bakkt's window is real days, and a key must outlive a restart.
    expires_at: float


@dataclass(slots=True)
class LinkSession:
    """A hosted bank-picker session (docs/bakkt-contract.md A2)."""

    id: str
    party_ref: str
    link_ref: str
    redirect_uri: str | None
    expires_ms: int
    used: bool = False


def _str_field(body: dict[str, Any], name: str, *, max_len: int | None = None) -> str:
    value = body.get(name)
    if value is None:
        raise invalid_field(name, None, f"{name} must not be null.")
    if not isinstance(value, str) or not value.strip():
        raise invalid_field(name, value, f"{name} must be a non-empty string.")
    if max_len is not None and len(value) > max_len:
        raise invalid_field(name, value, f"{name} must be at most {max_len} characters.")
    return value


def _enum_field(body: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = body.get(name)
    if value not in allowed:
        raise invalid_field(name, value, f"{name} must be one of {', '.join(allowed)}.")
    return str(value)


def _digits_field(body: dict[str, Any], name: str, lengths: range) -> str:
    value = _str_field(body, name)
    if not value.isdigit() or len(value) not in lengths:
        raise invalid_field(
            name, value, f"{name} must be {lengths.start}-{lengths.stop - 1} digits."
        )
    return value


class Bank:
    def __init__(self, settings: SandboxSettings, publish: Publish) -> None:
        self.settings = settings
        self._publish = publish
        self._wake = asyncio.Event()
        self._seq = itertools.count()
        # Bumped by every request and every planned move, so a state store knows to save.
        self.revision = 0
        self.reset()

    def reset(self) -> None:
        self.clock = BusinessClock(self.settings.time_scale)
        self.parties: dict[str, Party] = {}
        self.ledger: list[LedgerEntry] = []
        self.link_sessions: dict[str, LinkSession] = {}
        self._keys: dict[str, _KeyRecord] = {}
        self._timers: list[_Timer] = []
        self._wake.set()

    # -- parties ------------------------------------------------------------------------------

    def party(self, ref: str) -> Party:
        """The party named `ref`: any ref is a party on first use (magic prefixes aside)."""
        party = self.parties.get(ref)
        if party is None:
            if ref.startswith(magic.UNKNOWN_PARTY_PREFIX):
                raise ApiError(400, "PARTY_ACCOUNT_NOT_FOUND", "Partner Party Ref not found")
            status = magic.initial_party_status(ref)
            party = Party(ref, status, magic.DEFAULT_REASON[status], status_changed_ms=now_ms())
            self.parties[ref] = party
        return party

    def ensure_party(self, ref: str) -> Party:
        """Like `party`, but the control API may also create a party with an `unknown-` ref."""
        if ref not in self.parties and ref.startswith(magic.UNKNOWN_PARTY_PREFIX):
            self.parties[ref] = Party(
                ref,
                PartyStatus.ACTIVE,
                magic.DEFAULT_REASON[PartyStatus.ACTIVE],
                status_changed_ms=now_ms(),
            )
        return self.party(ref)

    @staticmethod
    def _refuse_status(party: Party) -> None:
        if party.status is PartyStatus.SUSPENDED:
            raise ApiError(400, "PARTY_SUSPENDED", "Party Suspended")
        raise ApiError(400, "PARTY_INVALID_OPERATION", "Party status not valid")

    def active_party(self, ref: str) -> Party:
        party = self.party(ref)
        if party.status is not PartyStatus.ACTIVE:
            self._refuse_status(party)
        return party

    def set_party_status(
        self,
        ref: str,
        status: PartyStatus | None = None,
        reason_code: str | None = None,
        verification_url: str | None = None,
        verification_expiry_ms: int | None = None,
    ) -> Party:
        """Set a party's status and reason as Bakkt's compliance would, and send the PARTY_EVENT.

        Either may be left out: a known reason code implies its status (magic.REASON_STATUS), a
        status its usual reason. Any other code is sent as given, as Bakkt may add codes.
        """
        if status is None:
            status = magic.REASON_STATUS.get(reason_code or "")
            if status is None:
                raise ApiError(
                    400,
                    "INVALID_REQUEST",
                    "status is required with a reason code that implies none",
                    "invalid control request",
                )
        party = self.ensure_party(ref)
        party.status = status
        party.reason_code = reason_code or magic.DEFAULT_REASON[status]
        party.status_changed_ms = now_ms()
        party.verification_url = None
        party.verification_expiry_ms = None
        if party.reason_code == "DOCUMENT_VERIFICATION":
            party.verification_url = (
                verification_url or f"https://verify.sandbox.bakkt.invalid/{uuid.uuid4()}"
            )
            party.verification_expiry_ms = verification_expiry_ms or (
                party.status_changed_ms + magic.VERIFICATION_URL_TTL_MS
            )
        expiry = party.verification_expiry_ms
        self._publish(
            self._event(
                "PARTY_EVENT",
                ref,
                {
                    "partyStatus": status.value,
                    "reasonCode": party.reason_code,
                    "verificationURL": party.verification_url,
                    "verificationURLExpiry": iso_ms(expiry) if expiry is not None else None,
                },
            )
        )
        return party

    def credit(self, ref: str, amount: Decimal) -> Party:
        party = self.ensure_party(ref)
        party.settled += amount
        return party

    def wire_reference(self, ref: str) -> str:
        # Stable per party across restarts: derived, not stored.
        digest = hashlib.sha256(f"{self.settings.partner_id}:{ref}".encode()).digest()
        return "BKT" + base64.b32encode(digest)[:10].decode()

    def party_by_wire_reference(self, reference: str) -> Party | None:
        for party in self.parties.values():
            if self.wire_reference(party.ref) == reference:
                return party
        return None

    # -- events -------------------------------------------------------------------------------

    @staticmethod
    def _event(kind: str, party_ref: str, fields: dict[str, Any]) -> dict[str, Any]:
        # Common envelope: docs/bakkt-contract.md A6.
        return {
            "requestId": str(uuid.uuid4()),
            "partnerPartyRef": party_ref,
            "partnerWebhookType": kind,
            "eventTime": iso_ms(now_ms()),
            **fields,
        }

    def _fiat_event(self, tx: Transaction) -> None:
        self._publish(self._event("FIAT_EVENT", tx.party_ref, tx.to_json()))

    def _link_event(
        self,
        party_ref: str,
        link_ref: str,
        status: str,
        reason_code: str | None,
        account: BankAccount | None,
    ) -> None:
        # Assumed shape: docs/bakkt-contract.md A6 (BANK_ACCOUNT_LINK).
        self._publish(
            self._event(
                "BANK_ACCOUNT_LINK",
                party_ref,
                {
                    "partnerTransactionRef": link_ref,
                    "linkStatus": status,
                    "reasonCode": reason_code,
                    "bankName": account.bank_name if account else None,
                    "accountMask": account.account_mask if account else None,
                    "accountType": account.account_type if account else None,
                },
            )
        )

    # -- linking ------------------------------------------------------------------------------

    def link(self, party: Party, account: BankAccount) -> None:
        account.linked_ms = now_ms()
        if party.bank_account is not None:
            # Superseded, not unlinked: Bakkt keeps one account per party and says nothing
            # about the old one (docs/bakkt-contract.md A6 lists no event for it).
            party.replaced_accounts.append(party.bank_account)
        party.bank_account = account
        self._link_event(party.ref, account.link_ref, "LINKED", None, account)

    def link_failed(
        self, party: Party, link_ref: str, reason: str, account: BankAccount | None
    ) -> None:
        self._link_event(party.ref, link_ref, "FAILED", reason, account)

    def unlink(self, party: Party, instrument: str, link_ref: str | None) -> None:
        account = party.bank_account
        if instrument not in ("ACH", "DEBIT") or account is None:
            raise ApiError(
                400, "LINKED_BANK_ACCOUNT_NOT_FOUND", "Active bank account not found for party"
            )
        party.bank_account = None
        self._link_event(party.ref, link_ref or account.link_ref, "UNLINKED", None, account)

    def plaid_link(self, party_ref: str, body: dict[str, Any]) -> None:
        token = _str_field(body, "processorToken")
        link_ref = _str_field(body, "partnerTransactionRef", max_len=MAX_LINK_REF)
        party = self.active_party(party_ref)
        outcome = magic.processor_token_outcome(token) if self.settings.magic_values else None
        mask = f"{int(hashlib.sha256(token.encode()).hexdigest(), 16) % 10000:04d}"
        account = BankAccount(link_ref, "First Platypus Bank", mask, "CHECKING", "", "plaid")
        if outcome is magic.TokenOutcome.UNSUPPORTED_SYNC:
            raise ApiError(
                400,
                "UNSUPPORTED_FINANCIAL_INSTITUTION",
                "Financial Institution provided is unsupported at this time.",
            )
        if outcome is magic.TokenOutcome.INVALID:
            raise ApiError(
                400, "BANK_LINK_ITEM_NOT_FOUND", f"No associated plaid item found for id {token}"
            )
        if outcome is magic.TokenOutcome.EXPIRED:
            raise ApiError(400, "STORED_AUTH_INVALID", "The current link status is not active")
        if outcome is magic.TokenOutcome.UNSUPPORTED_ASYNC:
            account.bank_name = "Unsupported Savings & Loan"
            self.link_failed(party, link_ref, "UNSUPPORTED_FINANCIAL_INSTITUTION", account)
            return
        self.link(party, account)

    def ach_link(self, party_ref: str, body: dict[str, Any]) -> None:
        account_number = _digits_field(body, "accountNumber", range(4, 18))
        routing = _digits_field(body, "routingNumber", range(9, 10))
        account_type = _str_field(body, "accountType").upper()
        link_ref = _str_field(body, "partnerTransactionRef", max_len=MAX_LINK_REF)
        party = self.active_party(party_ref)
        account = BankAccount(
            link_ref, "Sandbox National Bank", account_number[-4:], account_type, routing, "ach"
        )
        outcome = magic.ach_account_outcome(account_number) if self.settings.magic_values else None
        if self.settings.magic_values and routing == magic.UNSUPPORTED_ROUTING_NUMBER:
            account.bank_name = "Unsupported Savings & Loan"
            self.link_failed(party, link_ref, "UNSUPPORTED_FINANCIAL_INSTITUTION", account)
            return
        if outcome is magic.AchAccountOutcome.FAIL:
            self.link_failed(party, link_ref, magic.ACH_LINK_FAILURE_REASON, account)
            return
        if outcome is magic.AchAccountOutcome.RETURN_FIRST_DEPOSIT:
            account.return_first_deposit = magic.ACH_FIRST_DEPOSIT_RETURN_CODE
        self.link(party, account)

    def manual_link(self, party_ref: str, body: dict[str, Any]) -> None:
        account_number = _digits_field(body, "accountNumber", range(4, 18))
        routing = _digits_field(body, "routingNumber", range(9, 10))
        account_type = _str_field(body, "accountType").upper()
        bank_name = body.get("bankName")
        if bank_name is not None and not isinstance(bank_name, str):
            raise invalid_field("bankName", bank_name, "bankName must be a string.")
        party = self.active_party(party_ref)
        # The manual endpoint has no partnerTransactionRef; the link gets a Bakkt-assigned one.
        account = BankAccount(
            f"bakkt-manual-{secrets.token_hex(6)}",
            bank_name if isinstance(bank_name, str) and bank_name else "Sandbox National Bank",
            account_number[-4:],
            account_type,
            routing,
            "manual",
        )
        self.link(party, account)

    def create_link_session(self, party_ref: str, body: dict[str, Any]) -> LinkSession:
        link_ref = _str_field(body, "partnerTransactionRef", max_len=MAX_LINK_REF)
        redirect = body.get("redirectUri")
        if redirect is not None and not _redirect_allowed(redirect):
            raise invalid_field(
                "redirectUri", redirect, "redirectUri must be an http(s) URL or an app deep link."
            )
        self.active_party(party_ref)
        session = LinkSession(
            secrets.token_urlsafe(18),
            party_ref,
            link_ref,
            redirect,
            now_ms() + int(self.settings.link_url_ttl * 1000),
        )
        self.link_sessions[session.id] = session
        return session

    # -- transfers ----------------------------------------------------------------------------

    def transfer(self, party_ref: str, body: dict[str, Any]) -> LedgerEntry:
        key = _str_field(body, "idempotencyKey")
        self._check_key(key)
        ref = _str_field(body, "partnerTransactionRef")
        amount = parse_amount(body.get("amount"))
        _enum_field(body, "currency", ("USD",))
        direction = _enum_field(body, "fiatTransactType", ("DEPOSIT", "WITHDRAW"))
        instrument = _enum_field(body, "instrumentType", ("ACH", "DEBIT", "WIRE"))
        details = body.get("wireWithdrawDetails")
        if details is not None and not isinstance(details, dict):
            raise invalid_field(
                "wireWithdrawDetails", details, "wireWithdrawDetails must be an object."
            )

        party = self.party(party_ref)
        allowed = party.status is PartyStatus.ACTIVE or (
            direction == "WITHDRAW" and party.status is PartyStatus.LIQUIDATED
        )
        if not allowed:
            self._refuse_status(party)
        if instrument == "DEBIT":
            raise ApiError(400, "OPERATION_NOT_ALLOWED", "Debit transaction is not allowed")
        if instrument == "ACH":
            if party.bank_account is None:
                raise ApiError(
                    400, "BANK_ACCOUNT_NOT_FOUND", "Active bank account not found for party"
                )
            if direction == "WITHDRAW" and amount < ACH_WITHDRAW_MINIMUM:
                raise invalid_field(
                    "amount",
                    money(amount),
                    "The amount is below the minimum withdrawal amount of $10.",
                )
        if instrument == "WIRE" and direction == "WITHDRAW":
            for name in ("wireRoutingNumber", "wireAccountNumber", "wireBankName"):
                value = (details or {}).get(name)
                if not isinstance(value, str) or not value.strip():
                    raise invalid_field(
                        f"wireWithdrawDetails.{name}",
                        value,
                        f"{name} is required for a wire withdrawal.",
                    )
        if ref in party.transactions:
            raise invalid_field(
                "partnerTransactionRef",
                ref,
                "partnerTransactionRef was already used for this party.",
            )
        if direction == "WITHDRAW" and party.settled < amount:
            raise ApiError(
                400,
                "INSUFFICIENT_BALANCE",
                "The account does not have enough available balance for action of value "
                f"{amount.normalize():f} dollars",
            )

        tx_type = TxType(f"{instrument}_{direction}")
        ts = now_ms()
        tx = Transaction(
            party_ref, ref, tx_type, amount, TxStatus.PENDING, ts, ts, idempotency_key=key
        )
        self._create(party, tx)
        account = party.bank_account if instrument == "ACH" else None
        entry = LedgerEntry(
            tx, key, direction, instrument, bank_account_ref=account.link_ref if account else None
        )
        self.ledger.append(entry)
        # Only accepted transfers are remembered: a 4xx leaves the key free for a corrected retry,
        # as the guide says Bakkt saves "the first successful request" per key.
        self._keys[key] = _KeyRecord(entry, time.time() + self.settings.idempotency_ttl)
        if account is not None and direction == "DEPOSIT" and account.return_first_deposit:
            code, account.return_first_deposit = account.return_first_deposit, None
            settle = self.settings.ach_deposit_days
            self._schedule(
                tx,
                min(self.settings.return_days, settle / 2),
                TxStatus.RETURNED,
                code,
                magic.NACHA_DESCRIPTIONS[code],
            )
        else:
            self._plan(tx)
        return entry

    def _check_key(self, key: str) -> None:
        record = self._keys.get(key)
        if record is None:
            return
        if record.expires_at <= time.time():
            del self._keys[key]
            return
        record.entry.request_count += 1
        # Assumed body: docs/bakkt-contract.md A7.
        raise ApiError(
            409,
            "IDEMPOTENCY_KEY_IN_USE",
            "IDEMPOTENCY_KEY_IN_USE",
            "Idempotency key was used previously",
            extra={"originalResponse": {"status": 200, "body": None}},
        )

    def sweep_keys(self) -> None:
        now = time.time()
        for key in [k for k, r in self._keys.items() if r.expires_at <= now]:
            del self._keys[key]

    def inbound_wire(self, party: Party, amount: Decimal, outcome: TxStatus | None) -> Transaction:
        ts = now_ms()
        tx = Transaction(
            party.ref,
            f"bakkt-wire-{secrets.token_hex(6)}",
            TxType.WIRE_DEPOSIT,
            amount,
            TxStatus.PENDING,
            ts,
            ts,
        )
        self._create(party, tx)
        if outcome is TxStatus.DECLINED or party.status is not PartyStatus.ACTIVE:
            self._schedule(
                tx,
                self.settings.wire_days,
                TxStatus.DECLINED,
                "WIRE_REJECTED",
                "Wire rejected: party may not receive deposits",
            )
        elif outcome is not TxStatus.PENDING:
            self._schedule(tx, self.settings.wire_days, TxStatus.COMPLETE)
        return tx

    def _create(self, party: Party, tx: Transaction) -> None:
        party.transactions[tx.ref] = tx
        if tx.type in DEPOSIT_TYPES:
            party.unsettled += tx.amount
        else:
            party.settled -= tx.amount
        self._fiat_event(tx)

    # -- lifecycle ----------------------------------------------------------------------------

    def _plan(self, tx: Transaction) -> None:
        s = self.settings
        settle_days = {
            TxType.ACH_DEPOSIT: s.ach_deposit_days,
            TxType.ACH_WITHDRAW: s.ach_withdraw_days,
        }.get(tx.type, s.wire_days)
        is_ach = tx.type in (TxType.ACH_DEPOSIT, TxType.ACH_WITHDRAW)
        outcome = magic.amount_outcome(tx.amount) if s.magic_values else AmountOutcome.NORMAL
        if outcome is AmountOutcome.DECLINE:
            self._schedule(tx, s.decline_days, TxStatus.DECLINED, *magic.DECLINE_REASON)
        elif outcome is AmountOutcome.CANCEL:
            self._schedule(tx, s.decline_days, TxStatus.CANCELLED, *magic.CANCEL_REASON)
        elif outcome is AmountOutcome.RETURN_BEFORE and is_ach:
            code = magic.RETURN_BEFORE_CODE
            days = min(s.return_days, settle_days / 2)
            self._schedule(tx, days, TxStatus.RETURNED, code, magic.NACHA_DESCRIPTIONS[code])
        elif outcome is AmountOutcome.RETURN_AFTER and is_ach:
            code = magic.RETURN_AFTER_CODE
            self._schedule(tx, settle_days, TxStatus.COMPLETE)
            self._schedule(
                tx,
                settle_days + s.late_return_days,
                TxStatus.RETURNED,
                code,
                magic.NACHA_DESCRIPTIONS[code],
            )
        elif outcome is not AmountOutcome.STAY_PENDING:
            self._schedule(tx, settle_days, TxStatus.COMPLETE)

    def _schedule(
        self,
        tx: Transaction,
        days: float,
        status: TxStatus,
        reason_code: str | None = None,
        reason_description: str | None = None,
    ) -> None:
        due = self.clock.now() + days
        heapq.heappush(
            self._timers,
            _Timer(
                due, next(self._seq), tx, tx.plan_version, status, reason_code, reason_description
            ),
        )
        self._wake.set()

    def run_due(self) -> int:
        """Apply every planned move whose business time has come; returns how many ran."""
        now = self.clock.now()
        ran = 0
        while self._timers and self._timers[0].due <= now:
            timer = heapq.heappop(self._timers)
            tx = timer.tx
            if timer.version != tx.plan_version or timer.status not in ALLOWED_MOVES[tx.status]:
                continue
            self._move(tx, timer.status, timer.reason_code, timer.reason_description)
            ran += 1
        if ran:
            self.revision += 1
        return ran

    # -- what a state store saves and restores (bakkt_sandbox/persistence.py) -----------------

    def key_records(self) -> list[tuple[str, LedgerEntry, float]]:
        """Live idempotency keys: key, the accepted transfer, wall-clock expiry."""
        return [(key, r.entry, r.expires_at) for key, r in self._keys.items()]

    def restore_key(self, key: str, entry: LedgerEntry, expires_at: float) -> None:
        self._keys[key] = _KeyRecord(entry, expires_at)

    def planned_moves(
        self,
    ) -> list[tuple[float, Transaction, int, TxStatus, str | None, str | None]]:
        """Moves still to come, in due order: due day, transaction, plan version, status, reason."""
        return [
            (t.due, t.tx, t.version, t.status, t.reason_code, t.reason_description)
            for t in sorted(self._timers)
        ]

    def restore_move(
        self,
        due: float,
        tx: Transaction,
        version: int,
        status: TxStatus,
        reason_code: str | None,
        reason_description: str | None,
    ) -> None:
        heapq.heappush(
            self._timers,
            _Timer(due, next(self._seq), tx, version, status, reason_code, reason_description),
        )
        self._wake.set()

    def advance(self, days: float) -> int:
        self.clock.advance(days)
        ran = self.run_due()
        self._wake.set()
        return ran

    def next_wait(self) -> float:
        """Real seconds until the next planned move (at most 1 s, so scale changes are seen)."""
        if not self._timers:
            return 1.0
        wait = self.clock.seconds_until(self._timers[0].due)
        return 1.0 if wait is None else min(1.0, max(wait, 0.001))

    async def run_timers(self) -> None:
        last_sweep = time.monotonic()
        while True:
            try:
                self.run_due()
            except Exception:  # a bug in one move must not stop every later one
                log.exception("planned transaction move failed")
            if time.monotonic() - last_sweep > 10:
                self.sweep_keys()
                last_sweep = time.monotonic()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.next_wait())
            except TimeoutError:
                pass

    def find_transaction(self, ref: str, party_ref: str | None = None) -> Transaction:
        if party_ref is not None:
            party = self.parties.get(party_ref)
            tx = party.transactions.get(ref) if party else None
            if tx is None:
                raise ApiError(404, "TRANSACTION_NOT_FOUND", f"Transaction {ref} not found")
            return tx
        found = [p.transactions[ref] for p in self.parties.values() if ref in p.transactions]
        if not found:
            raise ApiError(404, "TRANSACTION_NOT_FOUND", f"Transaction {ref} not found")
        if len(found) > 1:
            raise ApiError(
                409, "AMBIGUOUS_REFERENCE", "Several parties use this ref: pass partnerPartyRef"
            )
        return found[0]

    def control_move(
        self,
        tx: Transaction,
        status: TxStatus,
        reason_code: str | None = None,
        reason_description: str | None = None,
        fee: Decimal | None = None,
    ) -> None:
        """An explicit move from the control API: it replaces whatever was planned."""
        if status not in ALLOWED_MOVES[tx.status]:
            raise ApiError(
                409,
                "INVALID_TRANSITION",
                f"{tx.ref} is {tx.status.value}: it cannot become {status.value}",
            )
        tx.plan_version += 1
        self._move(tx, status, reason_code, reason_description, fee)

    def _move(
        self,
        tx: Transaction,
        status: TxStatus,
        reason_code: str | None,
        reason_description: str | None,
        fee: Decimal | None = None,
    ) -> None:
        party = self.parties[tx.party_ref]
        previous = tx.status
        deposit = tx.type in DEPOSIT_TYPES
        withdraw = tx.type in WITHDRAW_TYPES
        # Balance effect, docs/bakkt-contract.md §7: deposits sit in unsettled until COMPLETE;
        # withdrawals leave settled on acceptance and come back if they fail.
        if previous is TxStatus.PENDING:
            if deposit:
                party.unsettled -= tx.amount
                if status is TxStatus.COMPLETE:
                    party.settled += tx.amount
            elif withdraw and status is not TxStatus.COMPLETE:
                party.settled += tx.amount
        elif previous is TxStatus.COMPLETE and status is TxStatus.RETURNED:
            if deposit:
                party.settled -= tx.amount
            elif withdraw:
                party.settled += tx.amount
        tx.status = status
        tx.reason_code = reason_code
        tx.reason_description = reason_description
        tx.updated_ms = max(now_ms(), tx.updated_ms)
        self._fiat_event(tx)

        is_ach = tx.type in (TxType.ACH_DEPOSIT, TxType.ACH_WITHDRAW)
        if status is TxStatus.RETURNED and is_ach:
            fee_amount = self.settings.ach_return_fee if fee is None else fee
            if previous is TxStatus.COMPLETE and fee_amount > 0:
                ts = now_ms()
                fee_tx = Transaction(
                    tx.party_ref,
                    f"bakkt-fee-{secrets.token_hex(6)}",
                    TxType.ACH_RETURN_FEE,
                    fee_amount,
                    TxStatus.COMPLETE,
                    ts,
                    ts,
                    related_ref=tx.ref,
                    reason_code=reason_code,
                    reason_description=reason_description,
                )
                party.transactions[fee_tx.ref] = fee_tx
                party.settled -= fee_amount
                self._fiat_event(fee_tx)
            account = party.bank_account
            if reason_code in magic.ACCOUNT_DISABLING_CODES and account is not None:
                party.bank_account = None
                self._link_event(party.ref, account.link_ref, "UNLINKED", reason_code, account)

    # -- reads --------------------------------------------------------------------------------

    def get_transaction(self, party_ref: str, ref: str) -> Transaction:
        party = self.party(party_ref)
        tx = party.transactions.get(ref)
        if tx is None:
            raise ApiError(
                400, "TRANSACTION_NOT_FOUND", f"No transaction with partnerTransactionRef {ref}"
            )
        return tx

    def list_transactions(
        self,
        party_ref: str,
        updated_since_ms: int | None,
        statuses: set[str],
        page_size: int,
        page_token: str | None,
    ) -> tuple[list[Transaction], str | None]:
        party = self.party(party_ref)
        after = _decode_page_token(page_token) if page_token else None
        rows = sorted(
            (
                tx
                for tx in party.transactions.values()
                if (updated_since_ms is None or tx.updated_ms >= updated_since_ms)
                and (not statuses or tx.status.value in statuses)
            ),
            key=lambda tx: (tx.updated_ms, tx.ref),
        )
        if after is not None:
            rows = [tx for tx in rows if (tx.updated_ms, tx.ref) > after]
        page = rows[:page_size]
        next_token = None
        if len(rows) > page_size:
            last = page[-1]
            next_token = _encode_page_token(last.updated_ms, last.ref)
        return page, next_token


def _encode_page_token(updated_ms: int, ref: str) -> str:
    return base64.urlsafe_b64encode(f"{updated_ms}:{ref}".encode()).decode().rstrip("=")


def _decode_page_token(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        ms, ref = raw.split(":", 1)
        return int(ms), ref
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise invalid_field("pageToken", token, "pageToken is not valid.") from exc
