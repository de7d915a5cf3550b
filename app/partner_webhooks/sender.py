"""The one HTTP client of partner webhooks, and one signed attempt to deliver one event.

One `httpx.AsyncClient` per process over aiohttp (as the Bakkt client's default transport),
never following a redirect, with the SSRF guard's resolver inside the connector in production.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from app.config import AppEnv, Settings
from app.partner_webhooks.signing import signed_headers
from app.partner_webhooks.targets import GuardedResolver, TargetRefused, refused_literal

log = logging.getLogger("app.partner_webhooks")

USER_AGENT = "fiat-onramp-webhooks/1"


class Outcome:
    DELIVERED = "delivered"
    HTTP_ERROR = "http_error"  # a 4xx or 5xx (410 included)
    REDIRECT = "redirect"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    REFUSED = "refused"  # the SSRF guard: nothing was sent


@dataclass(frozen=True, slots=True)
class Attempt:
    outcome: str
    status: int | None
    latency_ms: int
    error: str | None = None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.outcome == Outcome.DELIVERED

    @property
    def gone(self) -> bool:
        """410 Gone: the receiver says this endpoint no longer exists."""
        return self.status == 410


def redacted(url: str) -> str:
    """A URL as it may appear in a log line or an alert: no query (partners put tokens there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds (RFC 9110 §10.2.3: delay-seconds or an HTTP-date); None if absent
    or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class _NoCookies(httpx.Cookies):
    """The client is shared by every endpoint: a cookie one receiver sets must never be sent
    to it (or anyone) again. Ignoring them also spares urllib's cookie parsing on every answer,
    a twelfth of a send's CPU."""

    def extract_cookies(self, response: httpx.Response) -> None:  # noqa: ARG002
        return None


def guard_enabled(settings: Settings) -> bool:
    return (
        settings.app_env is AppEnv.PRODUCTION and not settings.partner_webhook_allow_private_targets
    )


def _refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, TargetRefused):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Sender:
    def __init__(self, settings: Settings) -> None:
        self.guard = guard_enabled(settings)
        self.timeout = settings.partner_webhook_timeout
        limit = settings.partner_webhook_max_connections
        guard = self.guard

        def session() -> aiohttp.ClientSession:
            # Built on first use, inside the running loop, as aiohttp requires.
            connector = aiohttp.TCPConnector(
                limit=limit,
                resolver=GuardedResolver() if guard else None,
            )
            return aiohttp.ClientSession(
                connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
            )

        self.http = httpx.AsyncClient(
            transport=AiohttpTransport(client=session, trust_env=False),
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            trust_env=False,
            headers={"user-agent": USER_AGENT, "content-type": "application/json"},
        )
        # httpx has no switch for its cookie jar; this is the one it extracts into.
        self.http._cookies = _NoCookies()
        # Parsed once per URL, not once per send.
        self._urls: dict[str, httpx.URL] = {}

    async def aclose(self) -> None:
        await self.http.aclose()

    async def send(self, url: str, keys: Sequence[bytes], msg_id: str, body: bytes) -> Attempt:
        """POST one event; never raises for anything the receiver or the network does."""
        started = time.perf_counter()

        def elapsed() -> int:
            return int((time.perf_counter() - started) * 1000)

        if self.guard and refused_literal(url):
            return Attempt(Outcome.REFUSED, None, 0, "target refused: a non-public address")
        headers = signed_headers(keys, msg_id, int(time.time()), body)
        try:
            # The whole attempt, connection and answer included, within the timeout.
            async with asyncio.timeout(self.timeout):
                parsed = self._urls.get(url)
                if parsed is None:
                    parsed = self._urls[url] = httpx.URL(url)
                async with self.http.stream("POST", parsed, content=body, headers=headers) as reply:
                    status = reply.status_code
                    retry_after = reply.headers.get("retry-after")
        except TimeoutError:
            return Attempt(Outcome.TIMEOUT, None, elapsed(), f"no answer within {self.timeout:g} s")
        except (httpx.HTTPError, aiohttp.ClientError, OSError) as exc:
            if _refused(exc):
                return Attempt(Outcome.REFUSED, None, elapsed(), _REFUSED_NAME)
            # httpx-aiohttp maps every aiohttp connection error (a refused connection too) to
            # httpx.ConnectTimeout; the aiohttp exception it chains from tells the truth.
            cause = exc.__cause__ if isinstance(exc.__cause__, aiohttp.ClientError) else exc
            if isinstance(cause, aiohttp.ServerTimeoutError) or (
                cause is exc and isinstance(exc, httpx.TimeoutException)
            ):
                return Attempt(
                    Outcome.TIMEOUT, None, elapsed(), f"timeout ({type(cause).__name__})"
                )
            return Attempt(
                Outcome.CONNECTION, None, elapsed(), f"connection failed ({type(cause).__name__})"
            )
        latency = elapsed()
        if 200 <= status < 300:
            return Attempt(Outcome.DELIVERED, status, latency)
        if 300 <= status < 400:
            return Attempt(
                Outcome.REDIRECT,
                status,
                latency,
                f"HTTP {status}: a redirect is a failure (redirects are not followed)",
            )
        return Attempt(
            Outcome.HTTP_ERROR,
            status,
            latency,
            f"HTTP {status}",
            retry_after=parse_retry_after(retry_after),
        )


_REFUSED_NAME = "target refused: resolves only to non-public addresses"
