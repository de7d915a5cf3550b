"""Settings of the Bakkt sandbox, read from `SANDBOX_*` environment variables.

The development defaults equal the service's, so `fiat-onramp dev` works with no settings.
"""

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings, SettingsConfigDict

FaultMode = Literal["error", "latency", "timeout", "rate_limit", "drop", "accept_then_drop"]


class CamelModel(BaseModel):
    """JSON shapes of the control API: camelCase on the wire, like Bakkt's own API."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class FaultSpec(CamelModel):
    """One injected fault, matched against the operationId of each `/partner/v1` request."""

    operation: str = "*"
    mode: FaultMode
    # Probability that a matching request is hit; drawn from an RNG seeded with `seed` (or the
    # sandbox's `fault_seed`), so a run with the same request order is reproducible.
    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    # Hit at most this many requests, then the fault retires ("the next N requests").
    count: int | None = Field(default=None, ge=1)
    # Let this many matching requests through before the fault starts to apply.
    after: int = Field(default=0, ge=0)
    seed: int | None = None
    status: int = Field(default=503, ge=500, le=599)
    latency_ms: int = Field(default=0, ge=0)
    retry_after: int = Field(default=1, ge=0)
    # How long a `timeout` keeps the request open before closing the connection unanswered.
    hold_seconds: float = Field(default=300.0, gt=0)
    # "after": the operation runs (a transfer is recorded), then the fault replaces the answer.
    phase: Literal["before", "after"] = "before"


class WebhookModes(CamelModel):
    """Delivery switches; each rate is drawn from one RNG seeded with `seed`."""

    duplicate_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    reorder: bool = False
    # Events published within this window are delivered in reverse order when `reorder` is on.
    reorder_window_ms: int = Field(default=200, ge=1)
    drop_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int = 0


class SandboxSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore")

    # The standalone sandbox's log lines (inside `fiat-onramp dev` the service's LOG_FORMAT).
    log_format: Literal["json", "text"] = "json"
    partner_id: str = "5f0c2b9e-6a3d-4c1e-9f7a-2d8e4b6a1c01"
    client_id: str = "dev-client"
    client_secret: SecretStr = SecretStr("dev-client-secret")
    webhook_url: str = "http://127.0.0.1:8000/webhooks/bakkt"
    webhook_secret: SecretStr = SecretStr("whsec_ZmlhdC1vbnJhbXAtZGV2LXdlYmhvb2stc2VjcmV0ISE=")
    # Base URL of the hosted bank-picker page; empty: derived from each request's Host.
    public_url: str = ""

    # Real seconds per business day; 0 freezes the clock (only `/sandbox/clock/advance` moves it).
    time_scale: float = Field(default=20.0, ge=0.0)
    token_ttl: int = Field(default=3600, ge=1)
    idempotency_ttl: float = Field(default=10 * 24 * 3600, gt=0)
    link_url_ttl: float = Field(default=1800.0, gt=0)

    # Lifecycle timings, in business days (docs/bakkt-contract.md A5).
    ach_deposit_days: float = Field(default=3.0, ge=0)
    ach_withdraw_days: float = Field(default=0.05, ge=0)
    wire_days: float = Field(default=0.25, ge=0)
    decline_days: float = Field(default=0.0, ge=0)
    return_days: float = Field(default=1.0, ge=0)
    late_return_days: float = Field(default=2.0, ge=0)
    ach_return_fee: Decimal = Field(default=Decimal("15.00"), ge=0, decimal_places=2)
    magic_values: bool = True

    # Seconds between delivery attempts; one entry per retry, then the delivery is given up.
    webhook_retry_schedule: list[float] = Field(
        default_factory=lambda: [1.0, 5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0]
    )
    webhook_timeout: float = Field(default=10.0, gt=0)
    webhook_concurrency: int = Field(default=32, ge=1)
    webhook_modes: WebhookModes = Field(default_factory=WebhookModes)
    # Delivered or skipped deliveries kept for `GET /sandbox/webhooks`; older ones are forgotten
    # so a long benchmark does not grow without bound. Failed, dropped and pending ones stay.
    webhook_history: int = Field(default=50_000, ge=1)

    faults: list[FaultSpec] = Field(default_factory=list)
    fault_seed: int = 0

    # Keep the state across restarts in a snapshot under this directory (persistence.py); unset
    # keeps it in memory only, as tests want. `fiat-onramp dev` sets it to .data/sandbox.
    state_dir: Path | None = None
    # How often a changed state is written (seconds); it is also written on shutdown.
    state_save_interval: float = Field(default=1.0, gt=0)
