"""The service's one settings object, read from the environment and `.env`."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.core.rates import Rate, parse_rate

DEV_PARTNER_ID = "5f0c2b9e-6a3d-4c1e-9f7a-2d8e4b6a1c01"
DEV_CLIENT_ID = "dev-client"
DEV_CLIENT_SECRET = "dev-client-secret"  # noqa: S105 - development default, refused in production
DEV_WEBHOOK_SECRET = "whsec_ZmlhdC1vbnJhbXAtZGV2LXdlYmhvb2stc2VjcmV0ISE="  # noqa: S105
DEV_JWT_SECRET = "dev-jwt-secret-change-me-0123456789abcdef"  # noqa: S105

# A secret that still carries one of these markers was copied from a default or an example.
_PLACEHOLDER_MARKERS = ("change-me", "changeme", "example", "placeholder", "dev-", "secret")

# Production floors (docs/configuration.md). HMAC keys: 32 bytes, the output size of SHA-256 (RFC
# 2104 §3 and RFC 7518 §3.2 for HS256); a shorter key lowers the forging cost below the hash's.
# Standard Webhooks secrets: 24 bytes of key, the size the spec's own generators draw. Bakkt's
# client secret is chosen by Bakkt, not by us, so the floor only has to catch hand-typed values:
# 16 characters of a random base62 string are ~95 bits, and no issued secret is shorter.
MIN_HMAC_KEY_BYTES = 32
MIN_WEBHOOK_KEY_BYTES = 24
MIN_CLIENT_SECRET_CHARS = 16


class AppEnv(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


def _is_placeholder(value: str) -> bool:
    lowered = value.lower()
    return not value or any(marker in lowered for marker in _PLACEHOLDER_MARKERS)


def webhook_secret_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (base64 after `whsec_`); ValueError if not."""
    text = secret.strip()
    if not text.startswith("whsec_"):
        raise ValueError("does not start with `whsec_`")
    try:
        key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not `whsec_` followed by base64") from None
    if not key:
        raise ValueError("has an empty key after `whsec_`")
    return key


def webhook_url_problem(url: str) -> str | None:
    """Why `url` cannot be a partner webhook target (None when it can): an absolute http(s)
    URL with a host and no credentials. Where it resolves to is judged when sending."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https"):
        return "must start with https:// or http://"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not carry a user or password (the signature authenticates us)"
    if port == 0:
        return "has port 0"
    if parts.fragment:
        return "must not have a #fragment"
    return None


def _ip_networks(setting: str, entries: list[str], *, allow_any: bool) -> list[str]:
    for entry in entries:
        if allow_any and entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{setting} holds {entry!r}, not an IP address or CIDR") from None
    return entries


# An origin as a browser sends it: scheme, host, optional port; no path, not even a slash.
_ORIGIN = re.compile(r"^(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?$")
_ROUTE_KEY = re.compile(r"^(GET|HEAD|POST|PUT|PATCH|DELETE) (/\S*)$")

RateSetting = Annotated[Rate, NoDecode, BeforeValidator(parse_rate)]


def _route_rates(value: object) -> object:
    """`RATE_LIMIT_ROUTES`: comma-separated `METHOD /path/template=N/unit` entries."""
    if not isinstance(value, str):
        return value
    rates: dict[str, Rate] = {}
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        route, sep, rate = entry.rpartition("=")
        route = " ".join(route.split())
        if not sep or not _ROUTE_KEY.match(route):
            raise ValueError(
                f"entry {entry!r} is not `METHOD /path/template=N/unit` "
                "(for example `POST /v1/parties/{partyRef}/deposits=10/minute`)"
            )
        try:
            rates[route] = parse_rate(rate)
        except ValueError as exc:
            raise ValueError(f"entry {entry!r}: {rate.strip()!r} {exc}") from None
    return rates


def normalize_database_url(url: str) -> str:
    """Accept `postgresql://` (what most tools print) and give SQLAlchemy its asyncpg form."""
    for prefix in (
        "postgresql://",
        "postgres://",
        "postgresql+psycopg2://",
        "postgresql+psycopg://",
    ):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    app_env: AppEnv = AppEnv.DEVELOPMENT
    log_level: str = "INFO"
    # JSON lines or plain text; unset: text in development, JSON otherwise (docs/operations.md).
    log_format: Literal["json", "text"] | None = None

    # Unset means: `fiat-onramp dev` and the tests start an embedded Postgres.
    database_url: str | None = None
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_statement_timeout_ms: int = Field(default=15_000, ge=0)

    bakkt_base_url: str = "http://127.0.0.1:8081"
    bakkt_partner_id: str = DEV_PARTNER_ID
    bakkt_client_id: str = DEV_CLIENT_ID
    bakkt_client_secret: SecretStr = SecretStr(DEV_CLIENT_SECRET)
    bakkt_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    bakkt_connect_timeout: float = Field(default=3.0, gt=0)
    bakkt_read_timeout: float = Field(default=10.0, gt=0)
    bakkt_pool_timeout: float = Field(default=5.0, gt=0)
    bakkt_max_connections: int = Field(default=64, ge=1)
    bakkt_transfer_max_attempts: int = Field(default=4, ge=1)
    bakkt_retry_backoff_base: float = Field(default=0.2, ge=0)
    bakkt_retry_backoff_cap: float = Field(default=5.0, ge=0)
    bakkt_backoff_jitter: float = Field(default=1.0, ge=0, le=1)
    bakkt_write_timeout: float = Field(default=10.0, gt=0)
    # A 429 asking for a longer wait than this is not waited out inside a consumer's request.
    bakkt_max_retry_after: float = Field(default=10.0, ge=0)
    bakkt_token_refresh_margin: float = Field(default=60.0, ge=0)

    # Comma-separated so a secret can rotate: the new one is added, the old one removed later.
    bakkt_webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=lambda: [SecretStr(DEV_WEBHOOK_SECRET)]
    )
    webhook_static_token: SecretStr | None = None
    webhook_allowed_ips: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_max_body_bytes: int = Field(default=256 * 1024, ge=1024)

    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (IPs, CIDRs, or `*`). Empty:
    # the client address is the TCP peer's, so no local process can fake a webhook source.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Bounds on a request's header block, enforced before the HTTP parser buffers it
    # (app/serving.py); past them the connection is answered 431 and closed.
    max_request_header_bytes: int = Field(default=32 * 1024, ge=1024)
    max_request_headers: int = Field(default=100, ge=16)

    auth_jwt_secret: SecretStr | None = SecretStr(DEV_JWT_SECRET)
    auth_jwks_url: str | None = None
    auth_issuer: str = "fiat-onramp-dev"
    auth_audience: str = "fiat-onramp"
    auth_party_claim: str = "sub"
    auth_admin_scope: str = "funding:admin"

    idempotency_ttl_days: int = Field(default=10, ge=1)
    max_request_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Per-party limits applied when a party has no row of its own; amounts in dollars.
    default_limit_per_transaction: Decimal = Decimal("25000")
    default_limit_per_day: Decimal = Decimal("50000")
    default_limit_per_30_days: Decimal = Decimal("250000")

    workers_enabled: bool = True

    # Rate limits per party and per route, counted in each process (docs/operations.md says why
    # and how to size them for N replicas). A route's own entry in `rate_limit_routes` wins over
    # the reads (GET, HEAD) or writes default.
    rate_limit_enabled: bool = True
    rate_limit_reads: RateSetting = Rate(600, 60.0)
    rate_limit_writes: RateSetting = Rate(60, 60.0)
    rate_limit_routes: Annotated[dict[str, Rate], NoDecode, BeforeValidator(_route_rates)] = Field(
        default_factory=dict
    )

    # Browser apps: the origins allowed to call the API (none by default: no CORS headers).
    cors_allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Cookies or TLS client certificates from the browser; bearer tokens do not need it.
    cors_allow_credentials: bool = False
    cors_max_age: int = Field(default=600, ge=0, le=86400)
    # Strict-Transport-Security in production; 0 leaves the header out.
    hsts_max_age: int = Field(default=63_072_000, ge=0)

    # The operations listener: /metrics, /docs, /redoc and /openapi.json (plus the probes) on a
    # port of their own, off the public listener.
    internal_port: int | None = Field(default=None, ge=1, le=65535)
    # Defaults to the host the public listener binds (`serve --host`).
    internal_host: str | None = None
    # Whether the public listener also serves the operations routes. Unset: only while there is
    # no internal port, and never in production.
    public_ops_routes: bool | None = None
    # /docs, /redoc and /openapi.json at all.
    docs_enabled: bool = True

    # SIGTERM: requests in flight get this long to finish, then they are cancelled.
    shutdown_timeout: float = Field(default=40.0, gt=0)
    # How long an idle keep-alive connection is kept open. Longer than the idle timeout of
    # whatever sits in front (AWS ALB 60 s, GCP 600 s: set it above that one): the side that
    # closes an idle connection first races a request being sent on it, and the client (or the
    # balancer, as a 502) gets a reset instead of an answer. uvicorn's own default is 5 s.
    http_keep_alive_timeout: float = Field(default=75.0, gt=0)

    # Each process renews a heartbeat row this often; a consumer's idempotency claim whose
    # holding process has not renewed for `process_stale_after` seconds is taken over by the next
    # retry (docs/recovery.md, "A crash while a request holds its key"). Keep stale_after at
    # least three intervals, so one slow renewal is not a death.
    process_heartbeat_interval: float = Field(default=2.0, gt=0)
    process_stale_after: float = Field(default=6.0, gt=0)
    # A hosted-link bank account still PENDING this long after its link URL expired is FAILED
    # with reason `link_expired` (the page was abandoned); the recovery job looks this often.
    hosted_link_expiry_margin: float = Field(default=3600.0, ge=0)
    recovery_link_expiry_interval: float = Field(default=60.0, gt=0)

    # Circuit breaker toward Bakkt (app/bakkt/breaker.py); 0 failures turns it off.
    bakkt_breaker_failures: int = Field(default=5, ge=0)
    bakkt_breaker_cooldown: float = Field(default=30.0, gt=0)

    # Recovery workers (docs/recovery.md). Intervals are seconds between cycles, jittered ±20%.
    recovery_settle_interval: float = Field(default=5.0, gt=0)
    recovery_sweep_interval: float = Field(default=15.0, gt=0)
    recovery_rematch_interval: float = Field(default=5.0, gt=0)
    recovery_batch_size: int = Field(default=50, ge=1)
    recovery_concurrency: int = Field(default=8, ge=1)
    # A claimed transaction is left to its claimer this long (longer than every attempt of one
    # Bakkt call), then any worker may take it again.
    recovery_claim_lease: float = Field(default=300.0, gt=0)
    # A SUBMITTING transaction younger than this may still have its API request in flight.
    recovery_submitting_grace: float = Field(default=120.0, gt=0)
    recovery_unknown_backoff_base: float = Field(default=10.0, gt=0)
    recovery_unknown_backoff_cap: float = Field(default=600.0, gt=0)
    recovery_sweep_first_check: float = Field(default=60.0, gt=0)
    recovery_sweep_backoff_cap: float = Field(default=3600.0, gt=0)
    # Bakkt keeps idempotency keys 10 days (DECISIONS.md A7); resend only this long before that.
    recovery_resend_margin_hours: float = Field(default=24.0, ge=0)
    # Expected settlement windows, from the transaction's creation; past them an alert fires.
    # The margin covers ACH cut-off times and bank holidays (not modelled).
    overdue_ach_deposit_business_days: int = Field(default=3, ge=0)
    overdue_ach_deposit_margin_hours: float = Field(default=24.0, ge=0)
    overdue_ach_withdrawal_hours: float = Field(default=24.0, gt=0)
    overdue_wire_hours: float = Field(default=24.0, gt=0)
    # Scheduled reconciliation: every this many hours, from the last successful run's start less
    # the overlap; the first run looks back `reconcile_initial_lookback_hours`.
    reconcile_interval_hours: float = Field(default=24.0, gt=0)
    reconcile_initial_lookback_hours: float = Field(default=48.0, gt=0)
    reconcile_overlap_minutes: float = Field(default=60.0, ge=0)
    # Retention: stored webhook bodies are cleared after this many days; history is kept.
    webhook_body_retention_days: int = Field(default=90, ge=1)
    retention_interval: float = Field(default=3600.0, gt=0)

    # Webhooks to the partner's back end (app/partner_webhooks, docs/partner-webhooks.md).
    # Endpoints from settings, each signed with every secret (several during a rotation); more
    # endpoints come from the admin routes.
    partner_webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    partner_webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # AES-256 keys (base64 of 32 bytes, comma-separated) sealing admin endpoints' own secrets in
    # the database; the first seals, all open (rotation). Empty: a development key outside
    # production; in production, admin endpoints with their own secrets are refused until set.
    partner_webhook_sealing_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # In production, targets resolving to private, loopback, link-local (and other non-public)
    # addresses are refused (SSRF) unless this is set.
    partner_webhook_allow_private_targets: bool = False
    partner_webhook_timeout: float = Field(default=15.0, gt=0)
    # Waits after the 1st, 2nd ... failure of an event (Standard Webhooks' example schedule);
    # the last one repeats until the endpoint is disabled. Each is jittered by +-10%.
    partner_webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [
            5.0,
            300.0,
            1800.0,
            7200.0,
            18000.0,
            36000.0,
            50400.0,
            72000.0,
            86400.0,
        ]
    )
    partner_webhook_disable_after_days: float = Field(default=5.0, gt=0)
    partner_webhook_interval: float = Field(default=1.0, gt=0)
    # Parties delivered to at once per process, and events sent in a row to one party per claim.
    partner_webhook_concurrency: int = Field(default=64, ge=1)
    partner_webhook_batch: int = Field(default=20, ge=1)
    # A claimed (endpoint, party) lane is left to its claimer this long, then any worker may
    # take it again; longer than a claim's sends can take (see dispatcher.py).
    partner_webhook_lease: float = Field(default=120.0, gt=0)
    partner_webhook_max_connections: int = Field(default=64, ge=1)
    partner_webhook_log_retention_days: int = Field(default=30, ge=1)

    # Events (docs/events.md): the sequencer is woken by each writer's commit and polls this
    # often besides, and runs at most once per min_gap (a busy minute's commits are numbered
    # in batches); an SSE stream sends a heartbeat comment this often when it has nothing to
    # send; each process's stream hub looks for new events this often when no notice came.
    events_sequencer_interval: float = Field(default=1.0, gt=0)
    events_sequencer_min_gap: float = Field(default=0.05, ge=0)
    events_stream_heartbeat: float = Field(default=15.0, gt=0)
    events_stream_poll_interval: float = Field(default=5.0, gt=0)

    @field_validator("database_url", "log_format", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("database_url")
    @classmethod
    def _asyncpg_driver(cls, value: str | None) -> str | None:
        if not value:
            return value
        url = normalize_database_url(value)
        try:
            parsed = make_url(url)
        except ArgumentError:
            # The value is not echoed: it may carry a password.
            raise ValueError(
                "is not a database URL (postgresql://user:password@host:5432/name)"
            ) from None
        if parsed.get_backend_name() != "postgresql":
            raise ValueError("must be a postgresql:// URL")
        return url

    @field_validator(
        "bakkt_webhook_secrets",
        "webhook_allowed_ips",
        "forwarded_allow_ips",
        "partner_webhook_urls",
        "partner_webhook_secrets",
        "partner_webhook_sealing_keys",
        "partner_webhook_retry_schedule",
        "cors_allowed_origins",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("bakkt_webhook_secrets", "partner_webhook_secrets")
    @classmethod
    def _whsec_format(cls, value: list[SecretStr]) -> list[SecretStr]:
        for position, secret in enumerate(value, start=1):
            try:
                webhook_secret_key(secret.get_secret_value())
            except ValueError as exc:
                # Which one, never its value: the message reaches the terminal and the logs.
                raise ValueError(f"secret {position} of {len(value)} {exc}") from None
        return value

    @field_validator("partner_webhook_sealing_keys")
    @classmethod
    def _sealing_key_format(cls, value: list[SecretStr]) -> list[SecretStr]:
        from app.partner_webhooks.sealing import sealing_key

        for position, key in enumerate(value, start=1):
            try:
                sealing_key(key.get_secret_value())
            except ValueError as exc:
                raise ValueError(f"key {position} of {len(value)} {exc}") from None
        return value

    @field_validator("partner_webhook_urls")
    @classmethod
    def _webhook_urls(cls, value: list[str]) -> list[str]:
        for position, url in enumerate(value, start=1):
            problem = webhook_url_problem(url)
            if problem is not None:
                # By position: a URL may carry a token in its query.
                raise ValueError(f"URL {position} of {len(value)} {problem}")
        if len(set(value)) != len(value):
            raise ValueError("lists a URL twice")
        return value

    @field_validator("partner_webhook_retry_schedule")
    @classmethod
    def _retry_schedule(cls, value: list[float]) -> list[float]:
        if not value or any(wait < 0 for wait in value):
            raise ValueError("must be one or more waits in seconds, none negative")
        return value

    @field_validator("webhook_allowed_ips")
    @classmethod
    def _allowed_ips(cls, value: list[str]) -> list[str]:
        return _ip_networks("WEBHOOK_ALLOWED_IPS", value, allow_any=False)

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _forwarded_ips(cls, value: list[str]) -> list[str]:
        return _ip_networks("FORWARDED_ALLOW_IPS", value, allow_any=True)

    @field_validator("cors_allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme://host[:port] in lower case, "
                    "without a path or a trailing slash (https://app.example.com)"
                )
        if "*" in value and len(value) > 1:
            raise ValueError("`*` allows every origin: list origins, or `*` alone")
        return value

    @field_validator("internal_host", "internal_port", "public_ops_routes", mode="before")
    @classmethod
    def _blank_optional_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _cors_credentials(self) -> Settings:
        # Browsers refuse `*` with credentials anyway; saying so here beats a silent failure.
        if self.cors_allow_credentials and "*" in self.cors_allowed_origins:
            raise ValueError(
                "CORS_ALLOWED_ORIGINS `*` with CORS_ALLOW_CREDENTIALS: list the origins instead"
            )
        return self

    @property
    def ops_routes_public(self) -> bool:
        """Whether the public listener serves /metrics, /docs, /redoc and /openapi.json."""
        if self.public_ops_routes is not None:
            return self.public_ops_routes
        return self.internal_port is None and self.app_env is not AppEnv.PRODUCTION

    @field_validator("auth_jwt_secret", "webhook_static_token", "auth_jwks_url", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _partner_webhooks_signed(self) -> Settings:
        if self.partner_webhook_urls and not self.partner_webhook_secrets:
            raise ValueError(
                "PARTNER_WEBHOOK_URLS is set but PARTNER_WEBHOOK_SECRETS is empty: "
                "every delivery must be signed"
            )
        if self.partner_webhook_lease < self.partner_webhook_timeout + 10:
            # A lane's last send must end before its lease does (dispatcher.py).
            raise ValueError(
                "PARTNER_WEBHOOK_LEASE must be at least PARTNER_WEBHOOK_TIMEOUT + 10 seconds"
            )
        return self

    @model_validator(mode="after")
    def _refuse_weak_secrets_in_production(self) -> Settings:
        if self.app_env is not AppEnv.PRODUCTION:
            return self
        problems: list[str] = []
        for position, secret in enumerate(self.partner_webhook_secrets, start=1):
            text = secret.get_secret_value().strip()
            if _is_placeholder(text.removeprefix("whsec_")):
                problems.append(f"PARTNER_WEBHOOK_SECRETS secret {position} is a placeholder")
            elif len(webhook_secret_key(text)) < MIN_WEBHOOK_KEY_BYTES:
                problems.append(
                    f"PARTNER_WEBHOOK_SECRETS secret {position} has a key shorter than "
                    f"{MIN_WEBHOOK_KEY_BYTES} bytes"
                )
        from app.partner_webhooks.sealing import DEV_SEALING_KEY

        for position, key in enumerate(self.partner_webhook_sealing_keys, start=1):
            if key.get_secret_value().strip() == DEV_SEALING_KEY:
                problems.append(
                    f"PARTNER_WEBHOOK_SEALING_KEYS key {position} is the development key"
                )
        if not self.database_url:
            problems.append("DATABASE_URL must be set")
        client_secret = self.bakkt_client_secret.get_secret_value()
        if _is_placeholder(client_secret) or client_secret == DEV_CLIENT_SECRET:
            problems.append("BAKKT_CLIENT_SECRET is empty or a placeholder")
        elif len(client_secret) < MIN_CLIENT_SECRET_CHARS:
            problems.append(
                f"BAKKT_CLIENT_SECRET is shorter than {MIN_CLIENT_SECRET_CHARS} characters"
            )
        if not self.bakkt_webhook_secrets:
            problems.append("BAKKT_WEBHOOK_SECRETS is empty")
        for position, secret in enumerate(self.bakkt_webhook_secrets, start=1):
            text = secret.get_secret_value()
            if text.strip() == DEV_WEBHOOK_SECRET or _is_placeholder(
                text.strip().removeprefix("whsec_")
            ):
                problems.append(f"BAKKT_WEBHOOK_SECRETS secret {position} is a placeholder")
            elif len(webhook_secret_key(text)) < MIN_WEBHOOK_KEY_BYTES:
                problems.append(
                    f"BAKKT_WEBHOOK_SECRETS secret {position} has a key shorter than "
                    f"{MIN_WEBHOOK_KEY_BYTES} bytes"
                )
        if self.auth_jwks_url is None:
            # Without a JWKS, consumer tokens are HS256 under this secret: a weak one lets anyone
            # mint an admin token.
            jwt_secret = self.auth_jwt_secret.get_secret_value() if self.auth_jwt_secret else ""
            if _is_placeholder(jwt_secret):
                problems.append("AUTH_JWT_SECRET is empty or a placeholder (or set AUTH_JWKS_URL)")
            elif len(jwt_secret.encode()) < MIN_HMAC_KEY_BYTES:
                problems.append(
                    f"AUTH_JWT_SECRET is shorter than {MIN_HMAC_KEY_BYTES} bytes "
                    "(or set AUTH_JWKS_URL)"
                )
        if "*" in self.cors_allowed_origins:
            problems.append("CORS_ALLOWED_ORIGINS must list origins, not `*`")
        insecure = [o for o in self.cors_allowed_origins if o.startswith("http://")]
        if insecure:
            problems.append(f"CORS_ALLOWED_ORIGINS must be https:// origins ({insecure[0]})")
        if problems:
            raise ValueError("refusing to start in production: " + "; ".join(problems))
        return self

    @property
    def resolved_log_format(self) -> Literal["json", "text"]:
        if self.log_format is not None:
            return self.log_format
        return "text" if self.app_env is AppEnv.DEVELOPMENT else "json"

    def secret_values(self) -> list[str]:
        """Every secret these settings hold, for the log redaction to remove by value."""
        secrets = [
            *self.bakkt_webhook_secrets,
            *self.partner_webhook_secrets,
            *self.partner_webhook_sealing_keys,
            self.bakkt_client_secret,
            self.webhook_static_token,
            self.auth_jwt_secret,
        ]
        # `model_copy(update=...)` skips validation: a plain string may stand where a
        # SecretStr would.
        values = [
            s.get_secret_value() if isinstance(s, SecretStr) else str(s) for s in secrets if s
        ]
        if self.database_url:
            password = make_url(self.database_url).password
            if password:
                values.append(str(password))
        return values


# The environment prefix of each settings class the command line loads, by pydantic's title.
_ENV_PREFIXES = {"Settings": "", "SandboxSettings": "SANDBOX_"}


def is_settings_error(exc: ValidationError) -> bool:
    return exc.title in _ENV_PREFIXES


def describe_settings_error(exc: ValidationError) -> str:
    """One line for a person: each problem with the environment variable it names, never the
    value given (it may be a secret)."""
    prefix = _ENV_PREFIXES.get(exc.title, "")
    parts: list[str] = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        message = error["msg"].removeprefix("Value error, ")
        loc = error["loc"]
        if loc:
            name = prefix + str(loc[0]).upper()
            parts.append(message if message.startswith(name) else f"{name}: {message}")
        else:
            parts.append(message)
    return "; ".join(" ".join(part.split()) for part in parts)


@lru_cache
def get_settings() -> Settings:
    return Settings()
