"""The Bakkt client's configuration and circuit breaker, built from the service's settings.

Kept in the Bakkt package (not in `app.main`) so the API, the workers and the command line all
build the client the same way without importing the application factory.
"""

from __future__ import annotations

from app.bakkt.breaker import CircuitBreaker
from app.bakkt.config import BakktConfig
from app.config import Settings


def bakkt_config(settings: Settings) -> BakktConfig:
    return BakktConfig(
        base_url=settings.bakkt_base_url,
        partner_id=settings.bakkt_partner_id,
        client_id=settings.bakkt_client_id,
        client_secret=settings.bakkt_client_secret,
        connect_timeout=settings.bakkt_connect_timeout,
        read_timeout=settings.bakkt_read_timeout,
        pool_timeout=settings.bakkt_pool_timeout,
        write_timeout=settings.bakkt_write_timeout,
        max_connections=settings.bakkt_max_connections,
        transport=settings.bakkt_transport,
        max_attempts=settings.bakkt_transfer_max_attempts,
        backoff_base=settings.bakkt_retry_backoff_base,
        backoff_cap=settings.bakkt_retry_backoff_cap,
        backoff_jitter=settings.bakkt_backoff_jitter,
        max_retry_after=settings.bakkt_max_retry_after,
        token_refresh_margin=settings.bakkt_token_refresh_margin,
    )


def bakkt_breaker(settings: Settings) -> CircuitBreaker | None:
    """The process's circuit breaker toward Bakkt; None when BAKKT_BREAKER_FAILURES is 0."""
    if settings.bakkt_breaker_failures == 0:
        return None
    return CircuitBreaker(
        failure_threshold=settings.bakkt_breaker_failures,
        cooldown=settings.bakkt_breaker_cooldown,
    )
