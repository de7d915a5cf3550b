"""Webhook delivery: Standard Webhooks signatures, at-least-once with retries, and the switches
that make delivery misbehave on purpose (docs/bakkt-contract.md A6)."""

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bakkt_sandbox.config import SandboxSettings, WebhookModes
from bakkt_sandbox.model import iso_ms, now_ms

log = logging.getLogger("bakkt_sandbox.webhooks")


def secret_bytes(secret: str) -> bytes:
    """The key of a `whsec_<base64>` secret, as Standard Webhooks defines it."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@dataclass(slots=True)
class Attempt:
    at_ms: int
    url: str
    status: int | None
    error: str | None
    duration_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "at": iso_ms(self.at_ms),
            "url": self.url,
            "statusCode": self.status,
            "error": self.error,
            "durationMs": self.duration_ms,
        }


@dataclass(slots=True)
class Delivery:
    id: int
    event: dict[str, Any]
    created_ms: int
    duplicate_of: int | None = None
    # pending -> delivered | failed (retries exhausted); dropped/skipped are never sent.
    state: str = "pending"
    attempts: list[Attempt] = field(default_factory=list)
    delivered_ms: int | None = None
    # Serialized at the first attempt and shared with duplicates: every redelivery of an
    # event carries the same bytes (and so the same signature input apart from the timestamp).
    body: bytes | None = None

    @property
    def request_id(self) -> str:
        return str(self.event["requestId"])

    def to_json(self) -> dict[str, Any]:
        ev = self.event
        return {
            "id": self.id,
            "requestId": self.request_id,
            "partnerWebhookType": ev.get("partnerWebhookType"),
            "partnerPartyRef": ev.get("partnerPartyRef"),
            "partnerTransactionRef": ev.get("partnerTransactionRef"),
            "state": self.state,
            "duplicateOf": self.duplicate_of,
            "createdAt": iso_ms(self.created_ms),
            "deliveredAt": iso_ms(self.delivered_ms) if self.delivered_ms else None,
            "attempts": [a.to_json() for a in self.attempts],
            "event": ev,
        }


class WebhookDispatcher:
    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.url = settings.webhook_url
        self._secret = secret_bytes(settings.webhook_secret.get_secret_value())
        self.set_modes(settings.webhook_modes)
        self.deliveries: list[Delivery] = []
        self._by_id: dict[int, Delivery] = {}
        # Bumped by every attempt, so a state store knows a delivery's state changed.
        self.revision = 0
        self._ids = itertools.count(1)
        # Bumped by reset: attempts and retries started before it are forgotten.
        self._generation = 0
        self._queue: asyncio.Queue[tuple[int, Delivery]] = asyncio.Queue()
        self._reorder_buffer: list[Delivery] = []
        self._reorder_handle: asyncio.TimerHandle | None = None
        self._retry_handles: set[asyncio.TimerHandle] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def set_modes(self, modes: WebhookModes) -> None:
        self.modes = modes
        self._rng = random.Random(modes.seed)  # noqa: S311 - not crypto

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.settings.webhook_concurrency),
            timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout),
        )
        self._workers = [
            asyncio.create_task(self._work()) for _ in range(self.settings.webhook_concurrency)
        ]
        # Deliveries restored from a state store that were still owed: at least once, so again.
        for delivery in self.deliveries:
            if delivery.state == "pending":
                self._queue.put_nowait((self._generation, delivery))

    def restore(self, deliveries: list[Delivery]) -> None:
        """Take back deliveries a state store kept; pending ones are sent once `start` runs."""
        self.deliveries = deliveries
        self._by_id = {d.id: d for d in deliveries}
        self._ids = itertools.count(max((d.id for d in deliveries), default=0) + 1)

    async def stop(self) -> None:
        self._cancel_timers()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def reset(self) -> None:
        self._generation += 1
        self._cancel_timers()
        self.deliveries = []
        self._by_id = {}
        self._reorder_buffer = []
        while not self._queue.empty():
            self._queue.get_nowait()
        self.set_modes(self.settings.webhook_modes)
        self.url = self.settings.webhook_url

    def _cancel_timers(self) -> None:
        for handle in self._retry_handles:
            handle.cancel()
        self._retry_handles.clear()
        if self._reorder_handle is not None:
            self._reorder_handle.cancel()
            self._reorder_handle = None

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, event: dict[str, Any]) -> None:
        first = self._record(event, None)
        copies = [first]
        modes = self.modes
        if modes.duplicate_rate and self._rng.random() < modes.duplicate_rate:
            copies.append(self._record(event, first.id))
        for delivery in copies:
            if modes.drop_rate and self._rng.random() < modes.drop_rate:
                delivery.state = "dropped"
            elif not self.url:
                delivery.state = "skipped"
            else:
                self._enqueue(delivery)

    def _record(self, event: dict[str, Any], duplicate_of: int | None) -> Delivery:
        delivery = Delivery(next(self._ids), event, now_ms(), duplicate_of)
        self.deliveries.append(delivery)
        self._by_id[delivery.id] = delivery
        if len(self.deliveries) > self.settings.webhook_history * 5 // 4:
            self._forget_finished()
        return delivery

    def _forget_finished(self) -> None:
        finished = [d for d in self.deliveries if d.state in ("delivered", "skipped")]
        forget = {d.id for d in finished[: len(finished) - self.settings.webhook_history]}
        if forget:
            self.deliveries = [d for d in self.deliveries if d.id not in forget]
            for delivery_id in forget:
                del self._by_id[delivery_id]

    def _enqueue(self, delivery: Delivery) -> None:
        if not self.modes.reorder:
            self._queue.put_nowait((self._generation, delivery))
            return
        self._reorder_buffer.append(delivery)
        if self._reorder_handle is None:
            loop = asyncio.get_running_loop()
            self._reorder_handle = loop.call_later(
                self.modes.reorder_window_ms / 1000, self._flush_reorder
            )

    def _flush_reorder(self) -> None:
        self._reorder_handle = None
        buffered, self._reorder_buffer = self._reorder_buffer, []
        for delivery in reversed(buffered):
            self._queue.put_nowait((self._generation, delivery))

    def redeliver(self, ids: list[int] | None, states: set[str]) -> int:
        chosen = (
            [self._by_id[i] for i in ids if i in self._by_id]
            if ids
            else [d for d in self.deliveries if d.state in states]
        )
        count = 0
        for delivery in chosen:
            if delivery.state == "pending":
                continue
            delivery.state = "pending"
            self._queue.put_nowait((self._generation, delivery))
            count += 1
        return count

    def pending(self) -> int:
        return sum(1 for d in self.deliveries if d.state == "pending")

    def get(self, delivery_id: int) -> Delivery | None:
        return self._by_id.get(delivery_id)

    # -- delivering ---------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            generation, delivery = await self._queue.get()
            if generation != self._generation or delivery.state != "pending":
                continue
            try:
                await self._attempt(delivery, generation)
            except Exception:  # a delivery bug must not kill the worker
                log.exception("webhook delivery %s failed unexpectedly", delivery.id)

    async def _attempt(self, delivery: Delivery, generation: int) -> None:
        url = self.url
        if not url:
            delivery.state = "skipped"
            return
        assert self._session is not None  # noqa: S101 - workers run only after start()
        if delivery.body is None:
            original = self._by_id.get(delivery.duplicate_of or delivery.id, delivery)
            if original.body is None:
                original.body = json.dumps(delivery.event, separators=(",", ":")).encode()
            delivery.body = original.body
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "bakkt-sandbox/1",
            "webhook-id": delivery.request_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secret, delivery.request_id, timestamp, delivery.body),
        }
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            async with self._session.post(url, data=delivery.body, headers=headers) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if generation != self._generation:
            return
        delivery.attempts.append(
            Attempt(now_ms(), url, status, error, int((time.monotonic() - started) * 1000))
        )
        self.revision += 1
        if status is not None and 200 <= status < 300:
            delivery.state = "delivered"
            delivery.delivered_ms = now_ms()
            return
        retry = len(delivery.attempts) - 1
        schedule = self.settings.webhook_retry_schedule
        if retry >= len(schedule):
            delivery.state = "failed"
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def requeue() -> None:
            self._retry_handles.discard(handle)
            if generation == self._generation and delivery.state == "pending":
                self._queue.put_nowait((generation, delivery))

        handle = loop.call_later(schedule[retry], requeue)
        self._retry_handles.add(handle)

    async def drain(self, within: float) -> int:
        """Wait until no delivery is pending (or `within` seconds pass); returns how many are."""
        deadline = time.monotonic() + within
        while True:
            left = self.pending()
            if left == 0 or time.monotonic() >= deadline:
                return left
            await asyncio.sleep(0.01)
