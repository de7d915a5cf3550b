"""The Bakkt client: the one object in the service that talks to Bakkt.

One instance per process, around one long-lived `httpx.AsyncClient`. Every call carries the
current request's id as `x-tracking-id`. Retries happen only where a repeat cannot do harm; the
rules are in docs/bakkt-client.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
import jwt
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from app.bakkt import _wire as wire
from app.bakkt.breaker import BreakerState, CircuitBreaker, CircuitOpen
from app.bakkt.config import BakktConfig
from app.bakkt.errors import (
    BakktAuthFailed,
    BakktError,
    BakktOutcomeUnknown,
    BakktRateLimited,
    BakktRejected,
    BakktUnavailable,
    BakktUnsendable,
)
from app.bakkt.transport import TRANSPORT_ERRORS, build_http_client, classify
from app.bakkt.types import (
    BakktTransaction,
    Balance,
    Instrument,
    LinkUrl,
    TransactionStatus,
    TransferRequest,
    WireInstructions,
)
from app.core.backoff import backoff
from app.core.context import current_request_id
from app.core.metrics import METRICS, Metrics

log = logging.getLogger("app.bakkt")
tracer = trace.get_tracer("app.bakkt")

T = TypeVar("T")

_PREFIX = "/partner/v1"
_JSON = "application/json;charset=UTF-8"
# Rejections that, after a resent unlink, mean an earlier attempt already did the work.
_NOTHING_LINKED = frozenset(
    {"BANK_ACCOUNT_NOT_FOUND", "LINKED_BANK_ACCOUNT_NOT_FOUND", "PLAID_ACCOUNT_NOT_FOUND"}
)


@dataclass(frozen=True, slots=True)
class _Policy:
    """How one kind of call may be repeated."""

    # Safe to send again after an attempt that may have reached Bakkt (a timeout, a dropped
    # connection, a 5xx).
    resend_after_maybe_sent: bool
    # A failure after an attempt that may have reached Bakkt ends as BakktOutcomeUnknown
    # (the call changes state at Bakkt) rather than BakktUnavailable.
    changes_state: bool
    single_attempt: bool = False


_READ = _Policy(resend_after_maybe_sent=True, changes_state=False)
_HEARTBEAT = _Policy(resend_after_maybe_sent=False, changes_state=False, single_attempt=True)
# Resent with the same idempotency key (transfer) or naturally idempotent (unlink).
_IDEMPOTENT_WRITE = _Policy(resend_after_maybe_sent=True, changes_state=True)
# Links carry no idempotency key: a second send could link twice, so they are resent only when
# the first provably never left.
_ONCE_WRITE = _Policy(resend_after_maybe_sent=False, changes_state=True)


@dataclass(slots=True)
class _Exchange:
    response: httpx.Response
    # An earlier attempt of this call may have reached Bakkt before this response came.
    resent: bool
    # Secret values we sent (tokens, account numbers) that Bakkt may echo in an error text.
    sent_secrets: tuple[str, ...]

    def body(self) -> Any:
        return wire.loads(self.response.content) if self.response.content else None

    def error_body(self) -> Any:
        try:
            return self.body()
        except wire.BadShape:
            return None

    def rejection(self, status: int | None = None, body: Any = None) -> BakktRejected:
        """This 4xx (or the one a 409 replays, when status and body are given) as an error."""
        if status is None:
            status, body = self.response.status_code, self.error_body()
        error = wire.ApiError(body, redact=self.sent_secrets)
        return BakktRejected(
            status, error.bakkt_type, error.description, error.detail, error.details
        )


class _TokenCache:
    """Bearer token, cached, renewed a margin before expiry, fetched by one caller at a time."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[tuple[str, float | None]]],
        margin: float,
        clock: Callable[[], float],
    ) -> None:
        self._fetch = fetch
        self._margin = margin
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        self._inflight: asyncio.Task[str] | None = None

    async def get(self) -> str:
        if self._token is not None and self._clock() < self._renew_at:
            return self._token
        task = self._inflight
        if task is None:
            task = self._inflight = asyncio.create_task(self._refresh())
            task.add_done_callback(self._settled)
        # Shielded: a caller giving up must not cancel the fetch the others are waiting on.
        return await asyncio.shield(task)

    def invalidate(self, stale: str) -> None:
        # Only the token that was refused: 50 callers hitting the same 401 cause one refresh.
        if self._token == stale:
            self._token = None

    async def _refresh(self) -> str:
        started = self._clock()
        token, lifetime = await self._fetch()
        if lifetime is None:
            lifetime = _jwt_lifetime(token)
        self._token = token
        self._renew_at = started + lifetime - min(self._margin, lifetime / 2)
        return token

    def _settled(self, task: asyncio.Task[str]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved here so a failure nobody awaited is not reported twice


def _jwt_lifetime(token: str) -> float:
    """Seconds left on a JWT by its own `exp`, for a token response without `expiresIn`."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        return max(float(claims["exp"]) - time.time(), 0.0)
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        log.warning("bakkt token has neither expiresIn nor a readable exp; renewing in 60 s")
        return 60.0


def path_segment(value: str) -> str:
    """One path segment toward Bakkt: `/`, `?`, `#` and `%` are percent-encoded. `.` and `..`
    are refused, not encoded: yarl (under the aiohttp transport) decodes `%2E` and then resolves
    the dot segment, so `..` would reach another Bakkt endpoint whatever its spelling."""
    if value in (".", ".."):
        raise BakktUnsendable("a dot segment cannot be a Bakkt reference in a path")
    return quote(value, safe="")


class BakktClient:
    def __init__(
        self,
        config: BakktConfig,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        breaker: CircuitBreaker | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics or METRICS
        # Shared with callers that want to refuse work before calling (docs/recovery.md).
        self.breaker = breaker
        if breaker is not None:
            breaker.on_change = self._metrics.circuit
        self._http = http if http is not None else build_http_client(config)
        self._sleep = sleep
        self._rng = random.SystemRandom()
        self._tokens = _TokenCache(self._fetch_token, config.token_refresh_margin, clock)
        self._party_root = f"{_PREFIX}/partner/{path_segment(config.partner_id)}/party"
        # Whether Bakkt answered the latest heartbeat; None before the first (the `bakkt_up`
        # gauge on /metrics).
        self.last_heartbeat_ok: bool | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- operations --------------------------------------------------------------------------

    async def heartbeat(self) -> str:
        """Bakkt's answer to a ping ("PONG: ..."); one attempt, so it reports what it sees.
        Bakkt's guide offers it for exactly "is Bakkt available": the breaker's probe and the
        `bakkt_up` gauge are built on it."""
        try:
            ex = await self._exchange(
                "heartbeat",
                "POST",
                f"{_PREFIX}/heartbeat",
                _HEARTBEAT,
                json=wire.heartbeat_body(str(uuid.uuid4())),
            )
            answer = self._parse(ex, wire.heartbeat)
        except BakktError:
            self.last_heartbeat_ok = False
            raise
        self.last_heartbeat_ok = True
        return answer

    async def create_link_url(
        self, party_ref: str, link_ref: str, redirect_uri: str | None = None
    ) -> LinkUrl:
        # docs/bakkt-contract.md A2. Read-like: a repeat at worst leaves an unused URL to expire.
        ex = await self._exchange(
            "link_url",
            "POST",
            self._party(party_ref, "bankAccountLinking/linkUrl"),
            _READ,
            json=wire.link_url_body(link_ref, redirect_uri),
        )
        return self._parse(ex, wire.link_url)

    async def link_plaid(self, party_ref: str, link_ref: str, processor_token: str) -> None:
        """Ask Bakkt to link the account behind a Plaid processor token.

        The result arrives as a BANK_ACCOUNT_LINK webhook carrying `link_ref`.
        """
        ex = await self._exchange(
            "link_plaid",
            "POST",
            self._party(party_ref, "plaidAccount/link"),
            _ONCE_WRITE,
            json=wire.plaid_link_body(link_ref, processor_token),
            about=("link_plaid", link_ref),
        )
        self._accepted(ex)

    async def link_ach(
        self,
        party_ref: str,
        link_ref: str,
        account_number: str,
        routing_number: str,
        account_type: str,
    ) -> None:
        ex = await self._exchange(
            "link_ach",
            "POST",
            self._party(party_ref, "bankAccountLinking/ach"),
            _ONCE_WRITE,
            json=wire.ach_link_body(link_ref, account_number, routing_number, account_type),
            about=("link_ach", link_ref),
        )
        self._accepted(ex)

    async def unlink(
        self, party_ref: str, link_ref: str, instrument: Instrument | str = Instrument.ACH
    ) -> None:
        ex = await self._exchange(
            "unlink",
            "POST",
            self._party(party_ref, "bankAccountLinking/unlink"),
            _IDEMPOTENT_WRITE,
            json=wire.unlink_body(link_ref, str(instrument)),
            about=("unlink", link_ref),
        )
        if ex.response.is_success:
            self._accepted(ex)
            return
        error = ex.rejection()
        if ex.resent and error.bakkt_type in _NOTHING_LINKED:
            log.info("bakkt unlink %s: already unlinked by an earlier attempt", link_ref)
            return
        raise error

    async def transfer(self, req: TransferRequest) -> None:
        """Submit a deposit or withdrawal; returns once Bakkt has accepted it.

        Raises BakktRejected (nothing happened), BakktOutcomeUnknown (it may have happened),
        BakktUnavailable or BakktRateLimited (it certainly did not reach Bakkt), BakktAuthFailed.
        """
        ex = await self._exchange(
            "transfer",
            "POST",
            self._party(req.party_ref, "transfer"),
            _IDEMPOTENT_WRITE,
            json=wire.transfer_body(req),
            about=("transfer", req.transaction_ref),
        )
        status = ex.response.status_code
        if ex.response.is_success:
            return
        if status == 409:
            self._idempotent_replay(req, ex)
            return
        rejection = ex.rejection()
        if ex.resent:
            # An earlier attempt may have been accepted and caused this rejection (the balance
            # it debited, say): only Bakkt's record can tell.
            await self._confirm_rejection(req, rejection)
            return
        raise rejection

    async def get_transaction(
        self, party_ref: str, transaction_ref: str
    ) -> BakktTransaction | None:
        """Bakkt's record of one transaction; None when Bakkt never accepted it."""
        # docs/bakkt-contract.md A3.
        ex = await self._exchange(
            "get_transaction",
            "GET",
            self._party(party_ref, f"transactions/{path_segment(transaction_ref)}"),
            _READ,
        )
        if ex.response.is_success:
            return self._parse(ex, lambda body: wire.transaction(wire.mapping(body, "transaction")))
        error = ex.rejection()
        if error.bakkt_type == wire.TRANSACTION_NOT_FOUND:
            return None
        raise error

    async def iter_transactions(
        self,
        party_ref: str,
        *,
        updated_since: datetime | None = None,
        statuses: Iterable[TransactionStatus | str] | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[BakktTransaction]:
        """Every transaction of the party, oldest update first, one page fetched at a time."""
        # docs/bakkt-contract.md A4.
        if not 1 <= page_size <= 500:
            raise ValueError("page_size must be within 1..500")
        if updated_since is not None and updated_since.tzinfo is None:
            raise ValueError("updated_since must be timezone-aware")
        page_token: str | None = None
        while True:
            query = httpx.QueryParams(
                tuple(wire.transactions_query(page_size, updated_since, statuses or (), page_token))
            )
            ex = await self._exchange(
                "list_transactions",
                "GET",
                self._party(party_ref, "transactions"),
                _READ,
                params=query,
            )
            if not ex.response.is_success:
                raise ex.rejection()
            items, page_token = self._parse(ex, wire.transaction_page)
            for item in items:
                yield item
            if not page_token:
                return

    async def wire_instructions(self, party_ref: str) -> WireInstructions:
        """The party's inbound wire details. Never cache them (docs/bakkt-contract.md §2.9)."""
        ex = await self._exchange(
            "wire_instructions", "GET", self._party(party_ref, "wire-instructions"), _READ
        )
        return self._parse(ex, wire.wire_instructions)

    async def balance(self, party_ref: str, currency: str = "USD") -> Balance:
        ex = await self._exchange(
            "balance", "GET", self._party(party_ref, "fiatAccount/balance"), _READ
        )
        return self._parse(ex, lambda body: wire.balance(body, currency))

    # --- transfer outcomes -------------------------------------------------------------------

    def _idempotent_replay(self, req: TransferRequest, ex: _Exchange) -> None:
        """A 409: the key was used before. Its original response decides
        (docs/bakkt-contract.md A7)."""
        error = wire.ApiError(ex.error_body())
        if error.original is None:
            raise BakktOutcomeUnknown(
                "transfer", req.transaction_ref, "409 without the original response"
            )
        status, body = error.original
        if 200 <= status < 300:
            log.info("bakkt transfer %s: already accepted (409 replay)", req.transaction_ref)
            return
        if 400 <= status < 500:
            raise ex.rejection(status, body)
        raise BakktOutcomeUnknown(
            "transfer", req.transaction_ref, f"409 replaying an original status {status}"
        )

    async def _confirm_rejection(self, req: TransferRequest, rejection: BakktRejected) -> None:
        try:
            found = await self.get_transaction(req.party_ref, req.transaction_ref)
        except BakktError as exc:
            raise BakktOutcomeUnknown(
                "transfer", req.transaction_ref, f"{rejection} after a resend; look-up failed"
            ) from exc
        if found is None:
            raise rejection
        log.info(
            "bakkt transfer %s: resend rejected (%s) but an earlier attempt was accepted",
            req.transaction_ref,
            rejection.bakkt_type,
        )

    # --- plumbing ----------------------------------------------------------------------------

    def _party(self, party_ref: str, tail: str) -> str:
        return f"{self._party_root}/{path_segment(party_ref)}/{tail}"

    async def _fetch_token(self) -> tuple[str, float | None]:
        try:
            token = await self._request_token()
        except BaseException:
            self._metrics.bakkt_token_refreshes.labels("failed").inc()
            raise
        self._metrics.bakkt_token_refreshes.labels("ok").inc()
        return token

    async def _request_token(self) -> tuple[str, float | None]:
        # docs/bakkt-contract.md A1: Basic client credentials, grant_type as a form field.
        ex = await self._exchange(
            "token",
            "POST",
            f"{_PREFIX}/oauth2/token",
            _READ,
            data={"grant_type": "client_credentials"},
            auth=False,
        )
        if ex.response.status_code in (400, 401, 403):
            error = wire.ApiError(ex.error_body())
            raise BakktAuthFailed(
                f"Bakkt refused the client credentials: {ex.response.status_code} "
                f"{error.bakkt_type}"
            )
        return self._parse(ex, wire.token)

    def _accepted(self, ex: _Exchange) -> None:
        if not ex.response.is_success:
            raise ex.rejection()
        if wire.reports_failure(ex.error_body()):
            raise BakktRejected(
                ex.response.status_code, None, "Bakkt answered success=false without a reason"
            )

    def _parse(self, ex: _Exchange, reader: Callable[[Any], T]) -> T:
        if not ex.response.is_success:
            raise ex.rejection()
        try:
            return reader(ex.body())
        except wire.BadShape as exc:
            raise BakktUnavailable(
                f"unreadable Bakkt response to {ex.response.request.url.path}: {exc}",
                status=ex.response.status_code,
            ) from None

    async def _exchange(
        self,
        operation: str,
        method: str,
        path: str,
        policy: _Policy,
        *,
        json: Mapping[str, Any] | None = None,
        data: Mapping[str, str] | None = None,
        params: httpx.QueryParams | None = None,
        about: tuple[str, str] | None = None,
        auth: bool = True,
    ) -> _Exchange:
        """One call: its span (the `traceparent` every attempt carries), its count by outcome
        and its duration, retries included."""
        started = time.perf_counter()
        outcome = "ok"
        with tracer.start_as_current_span(
            f"bakkt {operation}",
            kind=SpanKind.CLIENT,
            attributes={"bakkt.operation": operation, "http.request.method": method},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                ex = await self._guarded(
                    method,
                    path,
                    policy,
                    json=json,
                    data=data,
                    params=params,
                    about=about,
                    auth=auth,
                )
            except BaseException as exc:
                outcome = _outcome_of(exc)
                if isinstance(exc, BakktError | asyncio.CancelledError):
                    span.set_status(Status(StatusCode.ERROR, outcome))
                raise
            else:
                status = ex.response.status_code
                outcome = "ok" if status < 400 else "rejected"
                span.set_attribute("http.response.status_code", status)
                return ex
            finally:
                span.set_attribute("bakkt.outcome", outcome)
                metrics = self._metrics
                metrics.bakkt_requests.labels(operation, outcome).inc()
                metrics.bakkt_duration.labels(operation).observe(time.perf_counter() - started)

    async def _guarded(
        self,
        method: str,
        path: str,
        policy: _Policy,
        *,
        json: Mapping[str, Any] | None,
        data: Mapping[str, str] | None,
        params: httpx.QueryParams | None,
        about: tuple[str, str] | None,
        auth: bool,
    ) -> _Exchange:
        send = functools.partial(
            self._attempts, method, path, policy, json=json, data=data, params=params, about=about
        )
        # The token fetch (auth=False) runs inside a bearer call and is judged with it.
        if self.breaker is None or not auth:
            return await send(auth=auth)
        if policy is not _HEARTBEAT and self.breaker.state is BreakerState.HALF_OPEN:
            await self._probe()
        with self.breaker.guard():
            return await send(auth=auth)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _probe(self) -> None:
        """After the cooldown the breaker lets one call through to learn whether Bakkt is back.
        That call is a heartbeat, never the caller's own request: a transfer must not be the
        experiment. Any answer closes the breaker and the request follows; no answer keeps it
        open, and the request fails fast as it would have while open."""
        assert self.breaker is not None  # noqa: S101 - only called with a breaker
        try:
            await self.heartbeat()
        except (BakktUnavailable, BakktOutcomeUnknown):
            raise CircuitOpen(self.breaker.retry_after()) from None
        except BakktError:
            # An answer, if not a PONG: Bakkt is reachable, which is all the probe asks.
            pass

    async def _attempts(
        self,
        method: str,
        path: str,
        policy: _Policy,
        *,
        json: Mapping[str, Any] | None,
        data: Mapping[str, str] | None,
        params: httpx.QueryParams | None,
        about: tuple[str, str] | None,
        auth: bool,
    ) -> _Exchange:
        """Send until Bakkt gives a final answer (2xx or 4xx) or the policy says stop.

        5xx, 429 and transport failures never come back as a response: they are retried or
        raised as BakktUnavailable / BakktRateLimited / BakktOutcomeUnknown. `about` is the
        (operation, our reference) an unknown outcome is reported under.
        """
        cfg = self._config
        attempts = 1 if policy.single_attempt else cfg.max_attempts
        tracking_id = current_request_id() or str(uuid.uuid4())
        content = wire.dumps(json) if json is not None else None
        maybe_sent = False
        op = f"{method} {path}"

        def give_up(last: str, *, rate_limited: float | None = None) -> BakktError:
            if maybe_sent and policy.changes_state:
                operation, reference = about or (method, path)
                return BakktOutcomeUnknown(operation, reference, last)
            if rate_limited is not None:
                return BakktRateLimited(rate_limited)
            return BakktUnavailable(f"{op}: {last}")

        for attempt in range(1, attempts + 1):
            last_attempt = attempt == attempts
            started = time.perf_counter()
            try:
                response = await self._send(
                    method,
                    path,
                    content=content,
                    data=data,
                    params=params,
                    tracking_id=tracking_id,
                    auth=auth,
                )
            except TRANSPORT_ERRORS as exc:
                self._metrics.bakkt_reachable(False)
                failure = classify(exc)
                maybe_sent = maybe_sent or failure.may_have_reached_bakkt
                log.warning(
                    "bakkt %s attempt %d/%d failed: %s (tracking %s)",
                    op,
                    attempt,
                    attempts,
                    failure.message,
                    tracking_id,
                )
                resendable = policy.resend_after_maybe_sent or not failure.may_have_reached_bakkt
                if last_attempt or not resendable:
                    raise give_up(failure.message) from None
                await self._sleep(self._backoff(attempt))
                continue
            except BakktError as exc:
                # The token could not be had for this attempt; an earlier one may still have
                # reached Bakkt, and that is what the caller must hear.
                if maybe_sent and policy.changes_state:
                    raise give_up(f"no token for a resend: {exc}") from exc
                raise

            status = response.status_code
            self._metrics.bakkt_reachable(status < 500)
            if attempt > 1:
                trace.get_current_span().add_event(
                    "bakkt.retry", {"attempt": attempt, "http.response.status_code": status}
                )
            log.log(
                _log_level(status),
                "bakkt %s -> %d in %.1f ms (attempt %d, tracking %s)",
                op,
                status,
                (time.perf_counter() - started) * 1000,
                attempt,
                tracking_id,
            )
            if status == 429:
                retry_after = _retry_after(response)
                wait = retry_after if retry_after is not None else self._backoff(attempt)
                if last_attempt or wait > cfg.max_retry_after:
                    raise give_up("429 rate limited", rate_limited=retry_after or wait)
                await self._sleep(wait)
                continue
            if status >= 500:
                maybe_sent = True
                if last_attempt or not policy.resend_after_maybe_sent:
                    raise give_up(f"{status} from Bakkt")
                await self._sleep(self._backoff(attempt))
                continue
            if status == 401 and auth:
                raise BakktAuthFailed(f"{op}: 401 from Bakkt even with a fresh token")
            return _Exchange(response, maybe_sent, wire.sensitive_values(json))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None,
        data: Mapping[str, str] | None,
        params: httpx.QueryParams | None,
        tracking_id: str,
        auth: bool,
    ) -> httpx.Response:
        """One attempt. A 401 on a bearer call gets one new token and one resend (never a
        transfer executed twice: Bakkt refused the first send outright)."""
        headers = {"x-tracking-id": tracking_id, "Accept": "application/json"}
        # `traceparent` of the call's span, when tracing is on (nothing is added otherwise).
        propagate.inject(headers)
        if content is not None:
            headers["Content-Type"] = _JSON
        basic = (
            None
            if auth
            else httpx.BasicAuth(
                self._config.client_id, self._config.client_secret.get_secret_value()
            )
        )
        for renewed in (False, True):
            if auth:
                token = await self._tokens.get()
                headers["Authorization"] = f"Bearer {token}"
            response = await self._http.request(
                method, path, content=content, data=data, params=params, headers=headers, auth=basic
            )
            if response.status_code != 401 or not auth or renewed:
                return response
            log.info("bakkt %s %s: 401, renewing the token once", method, path)
            self._tokens.invalidate(token)
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        cfg = self._config
        capped = backoff(attempt, base=cfg.backoff_base, cap=cfg.backoff_cap)
        return capped * (1.0 - cfg.backoff_jitter * self._rng.random())


def _outcome_of(exc: BaseException) -> str:
    """The `outcome` label of a call that raised."""
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if isinstance(exc, BakktRejected | BakktUnsendable):
        return "rejected"
    if isinstance(exc, BakktRateLimited):
        return "rate_limited"
    if isinstance(exc, BakktAuthFailed):
        return "auth_failed"
    if isinstance(exc, BakktOutcomeUnknown):
        return "unknown"
    return "unavailable"


def _log_level(status: int) -> int:
    # 4xx are answers (a look-up of an unknown ref is routine); 5xx and 429 are trouble.
    if status >= 500 or status == 429:
        return logging.WARNING
    return logging.INFO if status >= 400 else logging.DEBUG


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
