from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import (
    DEV_WEBHOOK_SECRET,
    AppEnv,
    Settings,
    describe_settings_error,
    webhook_secret_key,
)
from bakkt_sandbox.config import SandboxSettings

REPO_ROOT = Path(__file__).resolve().parents[2]

REAL_SECRETS = {
    "database_url": "postgresql://svc@db:5432/fiat",
    "bakkt_client_secret": "Zk2r9QmW1xLpT7vN4bHs",
    # 24 bytes of key, the floor.
    "bakkt_webhook_secrets": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZoVb3G8Z0Y",
    # 32 bytes, the floor.
    "auth_jwt_secret": "q8Vt1mZr6YbW3nXk0Lp4Hs2Jd9Fg7Ce5",
}


def _whsec(key_bytes: int) -> str:
    return "whsec_" + base64.b64encode(bytes(range(7, 7 + key_bytes))).decode()


def _settings(**overrides: object) -> Settings:
    return Settings(_env_file=None, **overrides)  # type: ignore[arg-type]


def test_development_defaults_need_no_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = _settings()
    assert settings.app_env is AppEnv.DEVELOPMENT
    assert settings.database_url is None
    assert settings.bakkt_webhook_secrets[0].get_secret_value() == DEV_WEBHOOK_SECRET


def test_database_url_accepts_plain_postgresql_scheme() -> None:
    settings = _settings(database_url="postgresql://u:p@h:5432/d")
    assert settings.database_url == "postgresql+asyncpg://u:p@h:5432/d"
    assert _settings(database_url="postgresql+asyncpg://h/d").database_url == (
        "postgresql+asyncpg://h/d"
    )


def test_webhook_secrets_split_on_commas_for_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAKKT_WEBHOOK_SECRETS", "whsec_b2xkLWtleQ==, whsec_bmV3LWtleQ==")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert [s.get_secret_value() for s in settings.bakkt_webhook_secrets] == [
        "whsec_b2xkLWtleQ==",
        "whsec_bmV3LWtleQ==",
    ]


def test_production_accepts_real_secrets() -> None:
    assert len(webhook_secret_key(REAL_SECRETS["bakkt_webhook_secrets"])) == 24
    assert len(REAL_SECRETS["auth_jwt_secret"].encode()) == 32
    settings = _settings(app_env="production", **REAL_SECRETS)
    assert settings.app_env is AppEnv.PRODUCTION


def test_env_example_as_copied_validates_with_the_sandboxes_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name.upper(), raising=False)
    settings = Settings(_env_file=REPO_ROOT / ".env.example")  # type: ignore[call-arg]
    sandbox = SandboxSettings()
    assert settings.app_env is AppEnv.DEVELOPMENT
    # No DATABASE_URL: `make dev` starts the embedded Postgres.
    assert settings.database_url is None
    assert settings.bakkt_partner_id == sandbox.partner_id
    assert settings.bakkt_client_id == sandbox.client_id
    assert (
        settings.bakkt_client_secret.get_secret_value() == sandbox.client_secret.get_secret_value()
    )
    assert [s.get_secret_value() for s in settings.bakkt_webhook_secrets] == [
        sandbox.webhook_secret.get_secret_value()
    ]
    assert settings.forwarded_allow_ips == []
    assert settings.auth_jwks_url is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("bakkt_client_secret", "Zk2r9QmW1xLpT7v", "BAKKT_CLIENT_SECRET is shorter than 16"),
        ("bakkt_client_secret", "x", "BAKKT_CLIENT_SECRET is shorter than 16"),
        ("auth_jwt_secret", "a", "AUTH_JWT_SECRET is shorter than 32 bytes"),
        ("auth_jwt_secret", "q8Vt1mZr6YbW3nXk0Lp4Hs2Jd9Fg7Ce", "AUTH_JWT_SECRET is shorter"),
        ("bakkt_webhook_secrets", "whsec_YQ==", "secret 1 has a key shorter than 24 bytes"),
        ("bakkt_webhook_secrets", _whsec(23), "secret 1 has a key shorter than 24 bytes"),
        (
            "bakkt_webhook_secrets",
            REAL_SECRETS["bakkt_webhook_secrets"] + "," + _whsec(8),
            "BAKKT_WEBHOOK_SECRETS secret 2 has a key shorter",
        ),
    ],
)
def test_production_refuses_weak_secrets_naming_the_setting(
    field: str, value: str, message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(app_env="production", **{**REAL_SECRETS, field: value})
    line = describe_settings_error(caught.value)
    assert message in line
    assert "\n" not in line
    for secret in value.split(","):
        if len(secret) >= 8:  # shorter ones occur in any sentence
            assert secret not in line


def test_production_checks_the_hmac_secret_when_jwks_url_is_blank() -> None:
    # A blank AUTH_JWKS_URL (as in .env.example) means HS256 under AUTH_JWT_SECRET.
    with pytest.raises(ValidationError, match="AUTH_JWT_SECRET"):
        _settings(
            app_env="production", **{**REAL_SECRETS, "auth_jwt_secret": "a"}, auth_jwks_url=""
        )


def test_production_with_jwks_needs_no_hmac_secret() -> None:
    settings = _settings(
        app_env="production",
        **{**REAL_SECRETS, "auth_jwt_secret": ""},
        auth_jwks_url="https://idp.example.com/.well-known/jwks.json",
    )
    assert settings.auth_jwt_secret is None


@pytest.mark.parametrize(
    "value",
    ["whsec_replace-with-a-base64-secret", "whsec_", "bm90LXByZWZpeGVk", "whsec_YQ==,whsec_!!"],
)
def test_malformed_webhook_secret_names_the_variable_in_every_environment(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(bakkt_webhook_secrets=value)
    line = describe_settings_error(caught.value)
    assert line.startswith("BAKKT_WEBHOOK_SECRETS: secret ")
    bad = value.split(",")[-1]
    if len(bad) >= 8:
        assert bad not in line


@pytest.mark.parametrize(
    ("field", "value", "name"),
    [
        ("forwarded_allow_ips", "10.0.0.0/8,proxy.internal", "FORWARDED_ALLOW_IPS"),
        ("webhook_allowed_ips", "*", "WEBHOOK_ALLOWED_IPS"),
        ("database_url", "mysql://u@h/d", "DATABASE_URL"),
        ("db_pool_size", "ten", "DB_POOL_SIZE"),
        ("app_env", "prod", "APP_ENV"),
    ],
)
def test_invalid_settings_are_described_by_their_variable(
    field: str, value: str, name: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(**{field: value})
    assert describe_settings_error(caught.value).startswith(name)


def test_forwarded_allow_ips_is_empty_by_default_and_takes_cidrs_or_any() -> None:
    assert _settings().forwarded_allow_ips == []
    assert _settings(forwarded_allow_ips="10.0.0.0/8, 127.0.0.1").forwarded_allow_ips == [
        "10.0.0.0/8",
        "127.0.0.1",
    ]
    assert _settings(forwarded_allow_ips="*").forwarded_allow_ips == ["*"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("bakkt_client_secret", "dev-client-secret", "BAKKT_CLIENT_SECRET"),
        ("bakkt_client_secret", "", "BAKKT_CLIENT_SECRET"),
        ("bakkt_webhook_secrets", "", "BAKKT_WEBHOOK_SECRETS"),
        ("bakkt_webhook_secrets", DEV_WEBHOOK_SECRET, "BAKKT_WEBHOOK_SECRETS"),
        ("auth_jwt_secret", "change-me", "AUTH_JWKS_URL"),
        ("database_url", "", "DATABASE_URL"),
    ],
)
def test_production_refuses_placeholder_or_missing_secrets(
    field: str, value: str, message: str
) -> None:
    values = {**REAL_SECRETS, field: value}
    with pytest.raises(ValidationError, match=message):
        _settings(app_env="production", **values)


def test_secrets_never_appear_in_repr() -> None:
    settings = _settings(**REAL_SECRETS)
    text = repr(settings)
    assert REAL_SECRETS["bakkt_client_secret"] not in text
    assert REAL_SECRETS["auth_jwt_secret"] not in text
