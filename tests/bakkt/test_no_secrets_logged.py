"""Nothing secret leaves the client through logs, exception texts or reprs."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from app.bakkt import (
    BakktError,
    TransferDirection,
    TransferMethod,
    TransferRequest,
    WireDestination,
)
from bakkt_sandbox.testing import RunningSandbox
from tests.bakkt.conftest import Traffic, make_client, sandbox_config

PROCESSOR_TOKEN = "processor-sandbox-7c1d9e44b2"
ACCOUNT_NUMBER = "99887766554433"
WIRE_ACCOUNT = "55443322110099"
BAD_ACCOUNT = "4444333322x"


async def test_secret_tokens_and_account_numbers_never_reach_logs_or_errors(
    sandbox: RunningSandbox, transport: str, traffic: Traffic, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[str] = []
    with caplog.at_level(logging.DEBUG):
        async with make_client(sandbox, transport, traffic) as client:
            await client.link_plaid("alice", "l-1", PROCESSOR_TOKEN)
            await client.unlink("alice", "l-1")
            await client.link_ach("alice", "l-2", ACCOUNT_NUMBER, "021000021", "CHECKING")
            await sandbox.credit("alice", "1000")
            await sandbox.set_fault("transferFiatCurrency", "accept_then_drop", count=1)
            await client.transfer(
                TransferRequest(
                    party_ref="alice",
                    transaction_ref="w-1",
                    idempotency_key="k-w-1",
                    direction=TransferDirection.WITHDRAW,
                    method=TransferMethod.WIRE,
                    amount=Decimal("100"),
                    wire=WireDestination("021000021", WIRE_ACCOUNT, "Bank"),
                )
            )
            await sandbox.expire_tokens()  # a 401 and a token renewal, logged
            await client.balance("alice")
            # Rejections that echo the refused value (docs/bakkt-contract.md §5.1 rejectedValue).
            for call in (
                client.link_ach("bob", "l-3", BAD_ACCOUNT, "021000021", "CHECKING"),
                client.link_plaid("bob", "l-4", "processor-invalid-" + PROCESSOR_TOKEN),
            ):
                try:
                    await call
                except BakktError as exc:
                    errors.append(f"{exc!s} {exc!r} {vars(exc)!r}")
    assert len(errors) == 2
    bearer_tokens = {
        r.headers["authorization"].removeprefix("Bearer ")
        for r in traffic.requests
        if r.headers.get("authorization", "").startswith("Bearer ")
    }
    assert len(bearer_tokens) == 2
    secrets = {
        sandbox.client_secret,
        PROCESSOR_TOKEN,
        ACCOUNT_NUMBER,
        WIRE_ACCOUNT,
        BAD_ACCOUNT,
        *bearer_tokens,
    }
    text = caplog.text + "\n".join(errors)
    assert "bakkt" in caplog.text  # the client did log
    for secret in secrets:
        assert secret not in text


def test_config_repr_hides_the_client_secret(sandbox: RunningSandbox) -> None:
    config = sandbox_config(sandbox, "httpx")
    assert sandbox.client_secret not in repr(config)
    assert sandbox.client_secret not in str(config)
