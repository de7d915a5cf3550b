"""The redaction filter: secrets leave no trace in a message, its arguments, `extra` fields or
an exception's text, in either format."""

from __future__ import annotations

import io
import json
import logging

import pytest

from app.core.logs import guarded_handler, register_secrets

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl"
SECRETS = {
    "bearer": "opaque-bearer-0123456789",
    "jwt": JWT,
    "processor": "processor-sandbox-7c1d9e44b2aa",
    "account": "99887766554433",
    "whsec": "whsec_ZmlhdC1vbnJhbXAtdGVzdA==",
    "registered": "a-registered-secret-value-42",
    "db_password": "pa55-w0rd-db",
}


@pytest.fixture
def logger() -> tuple[logging.Logger, dict[str, io.StringIO]]:
    register_secrets([SECRETS["registered"]])
    outs = {fmt: io.StringIO() for fmt in ("json", "text")}
    log = logging.getLogger("app.test_redaction")
    log.handlers = [guarded_handler(fmt, out) for fmt, out in outs.items()]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log, outs


def test_secrets_are_removed_from_message_args_extra_and_exception(
    logger: tuple[logging.Logger, dict[str, io.StringIO]],
) -> None:
    log, outs = logger
    log.info("Authorization: Bearer %s", SECRETS["bearer"])
    log.info("token %s for %s", JWT, "alice")
    log.warning("linking %s account %s", SECRETS["processor"], SECRETS["account"])
    log.info("db postgresql://app:%s@db:5432/x", SECRETS["db_password"])
    log.info("config %s", SECRETS["registered"])
    log.info(
        "body",
        extra={
            "body": {"accountNumber": "1234", "processorToken": SECRETS["processor"]},
            "secret": SECRETS["whsec"],
            "note": f"Bearer {SECRETS['bearer']}",
        },
    )
    try:
        raise ValueError(f"refused {SECRETS['account']} with {SECRETS['whsec']}")
    except ValueError:
        log.exception("failed")
    for fmt, out in outs.items():
        written = out.getvalue()
        for name, value in SECRETS.items():
            assert value not in written, (fmt, name)
        assert "****4433" in written  # the last 4 digits stay, as on a statement
        assert "Traceback" in written
    records = [json.loads(line) for line in outs["json"].getvalue().splitlines()]
    assert records[5]["body"] == {"accountNumber": "[REDACTED]", "processorToken": "[REDACTED]"}
    assert records[5]["secret"] == "[REDACTED]"
    assert records[2]["message"] == "linking [REDACTED] account ****4433"


def test_ordinary_values_are_left_alone(
    logger: tuple[logging.Logger, dict[str, io.StringIO]],
) -> None:
    log, outs = logger
    text = (
        "bakkt POST /partner/v1/party/p-12345678/transfer -> 202 in 12.5 ms "
        "(tracking 7f2d15b0-b3a6-4bcf-81fe-c47ed19c5501) amount 25.00 ref 1234567"
    )
    log.info(text)
    assert json.loads(outs["json"].getvalue())["message"] == text
