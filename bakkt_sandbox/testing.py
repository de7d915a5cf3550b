"""Test helpers: start a real sandbox in the current event loop, drive it, receive its webhooks.

async with running_sandbox(time_scale=0) as sb:
    token = await sb.access_token()
    ...
    await sb.settle("tx-1")
    assert [t["status"] for t in await sb.transfers()] == ["COMPLETE"]
"""

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, TypedDict, cast

import aiohttp
from aiohttp import web

from bakkt_sandbox.config import FaultMode, SandboxSettings
from bakkt_sandbox.server import SandboxServer

Amount = Decimal | int | float | str


class TransferRecord(TypedDict):
    partnerPartyRef: str
    partnerTransactionRef: str
    idempotencyKey: str
    amount: float
    currency: str
    fiatTransactType: str
    instrumentType: str
    fiatTransactionType: str
    status: str
    requestCount: int
    bankAccountRef: str | None
    createdAt: str
    updatedAt: str


class TransactionRecord(TypedDict):
    partnerTransactionRef: str
    relatedPartnerTransactionRef: str | None
    partnerPartyRef: str
    fiatTransactionType: str
    transactionStatus: str
    amount: float
    currency: str
    reasonCode: str | None
    reasonDescription: str | None
    createdAt: str
    updatedAt: str


class AttemptRecord(TypedDict):
    at: str
    url: str
    statusCode: int | None
    error: str | None
    durationMs: int


class WebhookRecord(TypedDict):
    id: int
    requestId: str
    partnerWebhookType: str
    partnerPartyRef: str
    partnerTransactionRef: str | None
    state: Literal["pending", "delivered", "failed", "dropped", "skipped"]
    duplicateOf: int | None
    createdAt: str
    deliveredAt: str | None
    attempts: list[AttemptRecord]
    event: dict[str, Any]


class FaultRecord(TypedDict):
    id: int
    operation: str
    mode: str
    rate: float
    count: int | None
    after: int
    seed: int | None
    status: int
    latencyMs: int
    retryAfter: int
    holdSeconds: float
    phase: str
    seen: int
    hits: int
    exhausted: bool


class PartyRecord(TypedDict):
    partnerPartyRef: str
    partyStatus: str
    reasonCode: str | None
    statusChangedAt: str
    verificationURL: str | None
    verificationURLExpiry: str | None
    settledAmount: float
    unsettledAmount: float
    wireReferenceNumber: str
    bankAccount: dict[str, Any] | None
    replacedBankAccounts: list[dict[str, Any]]
    transactions: int


class ClockRecord(TypedDict):
    businessDays: float
    timeScale: float
    frozen: bool


class SandboxError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"sandbox control API answered {status}: {body}")
        self.status = status
        self.body = body


def _number(amount: Amount) -> float:
    return float(Decimal(str(amount)))


class SandboxControl:
    """A typed async client of the control API (`/sandbox/...`) of a sandbox at `base_url`."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._own_session = session is None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def aclose(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        async with self.session.request(
            method, self.base_url + path, json=body, params=params
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise SandboxError(resp.status, data)
            return data

    # -- state --------------------------------------------------------------------------------

    async def reset(self) -> None:
        """Forget every party, transfer, webhook and key; restore the start-up faults and modes."""
        await self._call("POST", "/sandbox/reset")

    async def transfers(
        self,
        party_ref: str | None = None,
        *,
        partner_transaction_ref: str | None = None,
        idempotency_key: str | None = None,
    ) -> list[TransferRecord]:
        """Every transfer the sandbox accepted, with how many times each key was requested."""
        params = _params(
            partnerPartyRef=party_ref,
            partnerTransactionRef=partner_transaction_ref,
            idempotencyKey=idempotency_key,
        )
        return cast(
            list[TransferRecord], await self._call("GET", "/sandbox/transfers", None, params)
        )

    async def transactions(self, party_ref: str | None = None) -> list[TransactionRecord]:
        """Every transaction (transfers, inbound wires, fees), oldest first."""
        params = _params(partnerPartyRef=party_ref)
        return cast(
            list[TransactionRecord], await self._call("GET", "/sandbox/transactions", None, params)
        )

    async def party(self, party_ref: str) -> PartyRecord:
        return cast(PartyRecord, await self._call("GET", f"/sandbox/parties/{party_ref}"))

    async def set_party_status(
        self,
        party_ref: str,
        status: str | None = None,
        reason_code: str | None = None,
        *,
        verification_url: str | None = None,
        verification_url_expiry: str | None = None,
    ) -> PartyRecord:
        """Change a party's status and reason (either alone will do); the sandbox sends a
        PARTY_EVENT. A verification URL and expiry go only with DOCUMENT_VERIFICATION."""
        body = {
            key: value
            for key, value in (
                ("status", status),
                ("reasonCode", reason_code),
                ("verificationURL", verification_url),
                ("verificationURLExpiry", verification_url_expiry),
            )
            if value is not None
        }
        return cast(
            PartyRecord, await self._call("POST", f"/sandbox/parties/{party_ref}/status", body)
        )

    async def credit(self, party_ref: str, amount: Amount) -> PartyRecord:
        """Add to a party's settled balance at once (no transaction, no webhook)."""
        body = {"amount": _number(amount)}
        return cast(
            PartyRecord, await self._call("POST", f"/sandbox/parties/{party_ref}/credit", body)
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def _move(
        self, ref: str, action: str, party_ref: str | None, extra: dict[str, Any]
    ) -> TransactionRecord:
        body = {"partnerPartyRef": party_ref, **extra}
        return cast(
            TransactionRecord,
            await self._call("POST", f"/sandbox/transactions/{ref}/{action}", body),
        )

    async def settle(self, ref: str, party_ref: str | None = None) -> TransactionRecord:
        """PENDING -> COMPLETE now."""
        return await self._move(ref, "settle", party_ref, {})

    async def decline(
        self, ref: str, party_ref: str | None = None, reason_code: str | None = None
    ) -> TransactionRecord:
        return await self._move(ref, "decline", party_ref, {"reasonCode": reason_code})

    async def cancel(self, ref: str, party_ref: str | None = None) -> TransactionRecord:
        return await self._move(ref, "cancel", party_ref, {})

    async def return_transfer(
        self,
        ref: str,
        party_ref: str | None = None,
        reason_code: str = "R01",
        fee: Amount | None = None,
    ) -> TransactionRecord:
        """An ACH return: before completion, or after it (then with an ACH_RETURN_FEE)."""
        extra: dict[str, Any] = {"reasonCode": reason_code}
        if fee is not None:
            extra["fee"] = _number(fee)
        return await self._move(ref, "return", party_ref, extra)

    async def inbound_wire(
        self,
        amount: Amount,
        party_ref: str | None = None,
        *,
        wire_reference_number: str | None = None,
        outcome: str | None = None,
    ) -> TransactionRecord:
        """Simulate a wire arriving at Bakkt: a WIRE_DEPOSIT with a Bakkt-assigned ref."""
        body = {
            "amount": _number(amount),
            "partnerPartyRef": party_ref,
            "wireReferenceNumber": wire_reference_number,
            "outcome": outcome,
        }
        return cast(TransactionRecord, await self._call("POST", "/sandbox/wires/inbound", body))

    async def clock(self) -> ClockRecord:
        return cast(ClockRecord, await self._call("GET", "/sandbox/clock"))

    async def advance_clock(self, days: float) -> ClockRecord:
        """Move business time forward; everything that falls due happens before this returns."""
        return cast(ClockRecord, await self._call("POST", "/sandbox/clock/advance", {"days": days}))

    async def set_time_scale(self, seconds_per_day: float) -> ClockRecord:
        """Real seconds per business day from now on; 0 freezes the clock."""
        body = {"timeScale": seconds_per_day}
        return cast(ClockRecord, await self._call("POST", "/sandbox/clock", body))

    # -- faults -------------------------------------------------------------------------------

    async def set_fault(
        self,
        operation: str = "*",
        mode: FaultMode = "error",
        *,
        rate: float = 1.0,
        count: int | None = None,
        after: int = 0,
        seed: int | None = None,
        status: int = 503,
        latency_ms: int = 0,
        retry_after: int = 1,
        hold_seconds: float = 300.0,
        phase: Literal["before", "after"] = "before",
    ) -> FaultRecord:
        """Add a fault on one operationId (or "*"); see docs/sandbox.md for the modes."""
        body = {
            "operation": operation,
            "mode": mode,
            "rate": rate,
            "count": count,
            "after": after,
            "seed": seed,
            "status": status,
            "latencyMs": latency_ms,
            "retryAfter": retry_after,
            "holdSeconds": hold_seconds,
            "phase": phase,
        }
        created = await self._call("POST", "/sandbox/faults", body)
        return cast(FaultRecord, created[0])

    async def faults(self) -> list[FaultRecord]:
        return cast(list[FaultRecord], await self._call("GET", "/sandbox/faults"))

    async def remove_fault(self, fault_id: int) -> None:
        await self._call("DELETE", f"/sandbox/faults/{fault_id}")

    async def clear_faults(self) -> None:
        await self._call("DELETE", "/sandbox/faults")

    # -- webhooks -----------------------------------------------------------------------------

    async def webhooks(
        self,
        webhook_type: str | None = None,
        *,
        party_ref: str | None = None,
        transaction_ref: str | None = None,
        state: str | None = None,
    ) -> list[WebhookRecord]:
        """Every delivery (duplicates included), with its attempts and outcome."""
        params = _params(
            partnerWebhookType=webhook_type,
            partnerPartyRef=party_ref,
            partnerTransactionRef=transaction_ref,
            state=state,
        )
        return cast(list[WebhookRecord], await self._call("GET", "/sandbox/webhooks", None, params))

    async def set_webhook_mode(
        self,
        *,
        url: str | None = None,
        duplicate_rate: float | None = None,
        reorder: bool | None = None,
        reorder_window_ms: int | None = None,
        drop_rate: float | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Change the target URL or the delivery switches; unset arguments keep their value."""
        body = {
            "url": url,
            "duplicateRate": duplicate_rate,
            "reorder": reorder,
            "reorderWindowMs": reorder_window_ms,
            "dropRate": drop_rate,
            "seed": seed,
        }
        return cast(dict[str, Any], await self._call("POST", "/sandbox/webhooks/settings", body))

    async def redeliver_webhooks(
        self, ids: Iterable[int] | None = None, states: Iterable[str] = ("failed", "dropped")
    ) -> int:
        body = {"ids": list(ids) if ids is not None else None, "states": list(states)}
        result = await self._call("POST", "/sandbox/webhooks/redeliver", body)
        return int(result["requeued"])

    async def drain_webhooks(self, within: float = 5.0) -> int:
        """Wait until no delivery is pending; returns how many still are after `within` s."""
        result = await self._call("POST", "/sandbox/webhooks/drain", {"timeout": within})
        return int(result["pending"])

    async def expire_tokens(self) -> None:
        """Make every access token issued so far expired (the next call with one gets 401)."""
        await self._call("POST", "/sandbox/tokens/expire")


def _params(**values: str | None) -> dict[str, str]:
    return {k: v for k, v in values.items() if v is not None}


class RunningSandbox(SandboxControl):
    """A sandbox started by `running_sandbox`: its address, credentials and control API."""

    def __init__(self, server: SandboxServer) -> None:
        super().__init__(server.base_url)
        self.server = server
        self.settings = server.settings
        self.partner_id = self.settings.partner_id
        self.client_id = self.settings.client_id
        self.client_secret = self.settings.client_secret.get_secret_value()
        self.webhook_secret = self.settings.webhook_secret.get_secret_value()

    def party_url(self, party_ref: str, suffix: str = "") -> str:
        """`{base}/partner/v1/partner/{partnerId}/party/{party_ref}{suffix}`."""
        return f"{self.base_url}/partner/v1/partner/{self.partner_id}/party/{party_ref}{suffix}"

    def basic_auth(self) -> str:
        raw = f"{self.client_id}:{self.client_secret}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    async def access_token(self) -> str:
        async with self.session.post(
            self.base_url + "/partner/v1/oauth2/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": self.basic_auth()},
        ) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise SandboxError(resp.status, body)
            return str(body["accessToken"])

    async def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.access_token()}"}


@asynccontextmanager
async def running_sandbox(
    settings: SandboxSettings | None = None, **overrides: Any
) -> AsyncIterator[RunningSandbox]:
    """Start the real sandbox on 127.0.0.1 and an ephemeral port in the current event loop.

    `overrides` are `SandboxSettings` fields (`time_scale=0`, `webhook_url=...`) and win over
    `settings`, which itself defaults to the environment (`SANDBOX_*`).
    """
    base = settings or SandboxSettings()
    if overrides:
        base = SandboxSettings(**{**base.model_dump(), **overrides})
    async with SandboxServer(base, "127.0.0.1", 0) as server:
        sandbox = RunningSandbox(server)
        try:
            yield sandbox
        finally:
            await sandbox.aclose()


# -- receiving webhooks -------------------------------------------------------------------------


def verify_signature(secret: str, headers: "dict[str, str] | Any", body: bytes) -> bool:
    """The Standard Webhooks check (docs/bakkt-contract.md A6) a receiver should make."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(part.removeprefix("v1,"), expected)
        for part in signatures.split()
        if part.startswith("v1,")
    )


@dataclass(slots=True)
class ReceivedWebhook:
    headers: dict[str, str]
    body: bytes
    event: dict[str, Any]
    signature_valid: bool | None
    answered: int
    received_at: float


class WebhookReceiver:
    """Records every webhook POSTed to it; can answer with failures on purpose."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.received: list[ReceivedWebhook] = []
        self.url = ""
        self._failures: list[int] = []
        self.status = 200
        self.delay = 0.0
        self._changed = asyncio.Condition()

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next `count` deliveries with `status` (then `self.status` again)."""
        self._failures.extend([status] * count)

    @property
    def accepted(self) -> list[ReceivedWebhook]:
        """Deliveries answered with a 2xx."""
        return [r for r in self.received if 200 <= r.answered < 300]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [r.event for r in self.accepted]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self._failures.pop(0) if self._failures else self.status
        valid = verify_signature(self.secret, request.headers, body) if self.secret else None
        event = json.loads(body) if body else {}
        self.received.append(
            ReceivedWebhook(dict(request.headers), body, event, valid, status, time.monotonic())
        )
        async with self._changed:
            self._changed.notify_all()
        return web.Response(status=status)

    async def wait_for(
        self, predicate: Callable[[list[ReceivedWebhook]], bool], within: float = 5.0
    ) -> list[ReceivedWebhook]:
        """Wait until `predicate(self.received)` holds; raises TimeoutError otherwise."""
        async with asyncio.timeout(within):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.received))
        return self.received

    async def wait_for_count(self, count: int, within: float = 5.0) -> list[ReceivedWebhook]:
        """Wait until `count` deliveries were accepted (2xx)."""
        await self.wait_for(lambda _: len(self.accepted) >= count, within)
        return self.accepted


@asynccontextmanager
async def webhook_receiver(
    secret: str | None = None, path: str = "/webhooks/bakkt"
) -> AsyncIterator[WebhookReceiver]:
    """A `WebhookReceiver` listening on 127.0.0.1 and an ephemeral port."""
    receiver = WebhookReceiver(secret)
    app = web.Application()
    app.router.add_post(path, receiver.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server  # the bound port is only exposed here
    sockets = getattr(server, "sockets", None) or []
    receiver.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}{path}"
    try:
        yield receiver
    finally:
        await runner.cleanup()
