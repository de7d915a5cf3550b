"""Everything the Bakkt client needs to know about where Bakkt is and how patient to be."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import SecretStr


@dataclass(frozen=True, slots=True)
class BakktConfig:
    base_url: str
    partner_id: str
    client_id: str
    client_secret: SecretStr = field(repr=False)

    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    write_timeout: float = 10.0
    pool_timeout: float = 5.0
    max_connections: int = 64
    # Chosen by benchmarks/bakkt_client.py; see docs/bakkt-client.md for the figures.
    transport: Literal["aiohttp", "httpx"] = "aiohttp"

    # Attempts per call, the first included. Transfers and reads both use it.
    max_attempts: int = 4
    backoff_base: float = 0.2
    backoff_cap: float = 5.0
    # 1.0 is "full jitter": each wait is drawn from [0, capped backoff). 0.0 waits exactly.
    backoff_jitter: float = 1.0
    # A 429 asking us to wait longer than this is not waited out inside a caller's request.
    max_retry_after: float = 10.0

    # The token is renewed this long before it expires (at most half its lifetime).
    token_refresh_margin: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0.0 <= self.backoff_jitter <= 1.0:
            raise ValueError("backoff_jitter must be within [0, 1]")
        for name in ("connect_timeout", "read_timeout", "write_timeout", "pool_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
