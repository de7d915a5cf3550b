"""The one place that picks how bytes reach Bakkt, and that reads transport failures.

httpx's API is kept either way; only the transport under it changes, by `BakktConfig.transport`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from app.bakkt.config import BakktConfig

# httpx logs every request at INFO ("HTTP Request: POST ..."): a line per Bakkt call on the money
# path, with the party's ref in the URL, that says nothing the client's own logs and metrics do
# not. Its warnings still come through.
logging.getLogger("httpx").setLevel(logging.WARNING)


def build_http_client(config: BakktConfig) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=config.max_connections,
        max_keepalive_connections=config.max_connections,
    )
    transport: httpx.AsyncBaseTransport
    if config.transport == "aiohttp":
        # Honours connect/read/pool timeouts; aiohttp has no separate write timeout.
        transport = AiohttpTransport(limits=limits, trust_env=False)
    else:
        transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    return httpx.AsyncClient(
        base_url=config.base_url,
        transport=transport,
        timeout=httpx.Timeout(
            connect=config.connect_timeout,
            read=config.read_timeout,
            write=config.write_timeout,
            pool=config.pool_timeout,
        ),
        trust_env=False,
        follow_redirects=False,
    )


@dataclass(frozen=True, slots=True)
class TransportFailure:
    # False only when the request provably never left this process (no connection was made).
    may_have_reached_bakkt: bool
    message: str


# Exceptions a transport can raise: httpx's own, and aiohttp's that httpx-aiohttp does not map.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TransportError,
    aiohttp.ClientError,
    TimeoutError,
)


def classify(exc: BaseException) -> TransportFailure:
    """What a transport exception says about whether the request reached Bakkt."""
    # httpx-aiohttp maps every aiohttp connection error, a dropped connection included, to
    # httpx.ConnectTimeout; the aiohttp exception it chains from tells the truth.
    cause = exc.__cause__ if isinstance(exc.__cause__, aiohttp.ClientError) else exc
    if isinstance(cause, aiohttp.ClientError):
        if isinstance(cause, aiohttp.ConnectionTimeoutError):
            return TransportFailure(False, "connect timeout")
        if isinstance(cause, aiohttp.ClientConnectorError):
            return TransportFailure(False, "connection failed")
        if isinstance(cause, aiohttp.ServerTimeoutError):
            return TransportFailure(True, "read timeout")
        return TransportFailure(True, f"connection lost ({type(cause).__name__})")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return TransportFailure(False, type(exc).__name__)
    return TransportFailure(True, type(exc).__name__)
