from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.config import DEV_WEBHOOK_SECRET, AppEnv, Settings

REAL_SECRETS = {
    "database_url": "postgresql://svc@db:5432/fiat",
    "bakkt_client_secret": "Zk2r9QmW1xLpT7vN4bHs",
    "bakkt_webhook_secrets": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZoVb3G8Z0Y",
    "auth_jwt_secret": "q8Vt1mZr6YbW3nXk0Lp4Hs2Jd9Fg7Ce5",
}


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
    monkeypatch.setenv("BAKKT_WEBHOOK_SECRETS", "whsec_old, whsec_new")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert [s.get_secret_value() for s in settings.bakkt_webhook_secrets] == [
        "whsec_old",
        "whsec_new",
    ]


def test_production_accepts_real_secrets() -> None:
    settings = _settings(app_env="production", **REAL_SECRETS)
    assert settings.app_env is AppEnv.PRODUCTION


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
