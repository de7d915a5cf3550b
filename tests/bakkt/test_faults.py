"""Every fault mode of the sandbox, on both transports, checked against the sandbox's ledger.

The invariant throughout: whatever the network does, Bakkt never records two transfers for one
TransferRequest, and the client only says "rejected" when nothing happened.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from pydantic import SecretStr

from app.bakkt import (
    BakktClient,
    BakktConfig,
    BakktOutcomeUnknown,
    BakktRateLimited,
    BakktUnavailable,
    TransferRequest,
)
from bakkt_sandbox.testing import RunningSandbox
from tests.bakkt.conftest import Traffic
from tests.bakkt.test_operations import deposit, linked_party, party

TRANSFER = "transferFiatCurrency"
BALANCE = "getFiatAccountBalance"
MAX_ATTEMPTS = 4  # BakktConfig's default, which the test clients keep


async def _only_transfer(sandbox: RunningSandbox, party_ref: str) -> int:
    """The request count of the party's single transfer; fails if there are none or two."""
    [record] = await sandbox.transfers(party_ref)
    return record["requestCount"]


# --- 5xx -------------------------------------------------------------------------------------


async def test_transfer_5xx_is_resent_with_the_same_key_until_accepted(
    client: BakktClient, sandbox: RunningSandbox, traffic: Traffic
) -> None:
    ref = await linked_party(client)
    await sandbox.set_fault(TRANSFER, "error", status=503, count=2)
    req = deposit(ref)
    await client.transfer(req)
    sent = traffic.to("/transfer")
    assert len(sent) == 3
    assert {r.content for r in sent} == {sent[0].content}  # same body, same idempotencyKey
    assert await _only_transfer(sandbox, ref) == 1


async def test_transfer_5xx_after_execution_resolves_through_the_409_replay(
    client: BakktClient, sandbox: RunningSandbox
) -> None:
    ref = await linked_party(client)
    await sandbox.set_fault(TRANSFER, "error", status=500, count=1, phase="after")
    await client.transfer(deposit(ref))
    assert await _only_transfer(sandbox, ref) == 2


async def test_transfer_5xx_until_attempts_run_out_is_outcome_unknown(
    client: BakktClient, sandbox: RunningSandbox, traffic: Traffic
) -> None:
    ref = await linked_party(client)
    await sandbox.set_fault(TRANSFER, "error", status=502)
    req = deposit(ref)
    with pytest.raises(BakktOutcomeUnknown) as caught:
        await client.transfer(req)
    assert (caught.value.operation, caught.value.reference) == ("transfer", req.transaction_ref)
    assert len(traffic.to("/transfer")) == MAX_ATTEMPTS
    assert await sandbox.transfers(ref) == []


async def test_read_5xx_is_retried_then_unavailable(
    client: BakktClient, sandbox: RunningSandbox, traffic: Traffic
) -> None:
    await sandbox.set_fault(BALANCE, "error", count=1)
    await client.balance(party())
    await sandbox.set_fault(BALANCE, "error")
    with pytest.raises(BakktUnavailable) as caught:
        await client.balance(party())
    assert "503" in str(caught.value)
    assert len(traffic.to("/fiatAccount/balance")) == 2 + MAX_ATTEMPTS


async def test_link_5xx_is_not_resent_and_its_outcome_is_unknown(
    client: BakktClient, sandbox: RunningSandbox, traffic: Traffic
) -> None:
    ref = party()
    await sandbox.set_fault("linkBankAccountAchAsync", "error", phase="after", count=1)
    with pytest.raises(BakktOutcomeUnknown):
        await client.link_ach(ref, "l-1", "123456789", "021000021", "CHECKING")
    assert len(traffic.to("/bankAccountLinking/ach")) == 1
    assert (await sandbox.party(ref))["bankAccount"] is not None


# --- latency and timeouts --------------------------------------------------------------------


async def test_latency_within_the_read_timeout_is_waited_out(
    client: BakktClient, sandbox: RunningSandbox, traffic: Traffic
) -> None:
    ref = await linked_party(client)
    await sandbox.set_fault(TRANSFER, "latency", latency_ms=200)
    started = time.perf_counter()
    await client.transfer(deposit(ref))
    assert time.perf_counter() - started >= 0.2
    assert len(traffic.to("/transfer")) == 1
    assert await _only_transfer(sandbox, ref) == 1


async def test_latency_beyond_the_read_timeout_never_makes_two_transfers(
    client: BakktClient, sandbox: RunningSandbox, traffic: Traffic
) -> None:
    ref = await linked_party(client)
    # The first send waits 1.5 s at Bakkt, then runs although the client gave up at 1 s.
    await sandbox.set_fault(TRANSFER, "latency", latency_ms=1500, count=1)
    await client.transfer(deposit(ref))
    assert len(traffic.to("/transfer")) >= 2
    await asyncio.sleep(1.0)  # let the abandoned first send finish at the sandbox
    assert len(await sandbox.transfers(ref)) == 1


async def test_transfer_timeout_is_resent_with_the_same_key(
    client: BakktClient, sandbox: RunningSandbox, traffic: Traffic
) -> None:
    ref = await linked_party(client)
    await sandbox.set_fault(TRANSFER, "timeout", count=1, hold_seconds=3.0)
    await client.transfer(deposit(ref))
    assert len(traffic.to("/transfer")) == 2
    assert await _only_transfer(sandbox, ref) == 1


async def test_transfer_timeout_after_execution_never_makes_two_transfers(
    client: BakktClient, sandbox: RunningSandbox
) -> None:
    ref = await linked_party(client)
    await sandbox.set_fault(TRANSFER, "timeout", count=1, hold_seconds=3.0, phase="after")
    await client.transfer(deposit(ref))
    assert await _only_transfer(sandbox, ref) == 2


async def test_read_timeouts_until_attempts_run_out_are_unavailable(
    client: BakktClient, sandbox: RunningSandbox, traffic: Traffic
) -> None:
    await sandbox.set_fault(BALANCE, "timeout", hold_seconds=3.0)
    with pytest.raises(BakktUnavailable):
        await client.balance(party())
    assert len(traffic.to("/fiatAccount/balance")) == MAX_ATTEMPTS


# --- 429 -------------------------------------------------------------------------------------


async def test_429_waits_for_retry_after_then_succeeds(
    client: BakktClient, sandbox: RunningSandbox, traffic: Traffic
) -> None:
    ref = await linked_party(client)
    await sandbox.set_fault(TRANSFER, "rate_limit", retry_after=1, count=1)
    started = time.perf_counter()
    await client.transfer(deposit(ref))
    assert time.perf_counter() - started >= 1.0
    assert len(traffic.to("/transfer")) == 2
    assert await _only_transfer(sandbox, ref) == 1


async def test_429_on_every_attempt_is_rate_limited_and_nothing_happened(
    client: BakktClient, sandbox: RunningSandbox, traffic: Traffic
) -> None:
    ref = await linked_party(client)
    await sandbox.set_fault(TRANSFER, "rate_limit", retry_after=0)
    with pytest.raises(BakktRateLimited):
        await client.transfer(deposit(ref))
    assert len(traffic.to("/transfer")) == MAX_ATTEMPTS
    assert await sandbox.transfers(ref) == []


async def test_429_asking_for_longer_than_the_budget_is_not_waited_out(
    client: BakktClient, sandbox: RunningSandbox, traffic: Traffic
) -> None:
    await sandbox.set_fault(BALANCE, "rate_limit", retry_after=30)
    started = time.perf_counter()
    with pytest.raises(BakktRateLimited) as caught:
        await client.balance(party())
    assert caught.value.retry_after == 30
    assert time.perf_counter() - started < 1.0
    assert len(traffic.to("/fiatAccount/balance")) == 1


# --- dropped connections ---------------------------------------------------------------------


async def test_accept_then_drop_is_resent_and_settled_by_the_409_replay(
    client: BakktClient, sandbox: RunningSandbox, traffic: Traffic
) -> None:
    ref = await linked_party(client)
    await sandbox.set_fault(TRANSFER, "accept_then_drop", count=1)
    await client.transfer(deposit(ref))
    assert len(traffic.to("/transfer")) == 2
    assert await _only_transfer(sandbox, ref) == 2


async def test_accept_then_drop_on_every_attempt_is_outcome_unknown_with_one_transfer(
    client: BakktClient, sandbox: RunningSandbox
) -> None:
    ref = await linked_party(client)
    await sandbox.set_fault(TRANSFER, "accept_then_drop")
    req = deposit(ref)
    with pytest.raises(BakktOutcomeUnknown):
        await client.transfer(req)
    assert await _only_transfer(sandbox, ref) == MAX_ATTEMPTS
    await sandbox.clear_faults()
    # The look-up that settles an unknown outcome finds it.
    found = await client.get_transaction(ref, req.transaction_ref)
    assert found is not None


async def test_many_concurrent_transfers_under_mixed_faults_are_each_recorded_once(
    client: BakktClient, sandbox: RunningSandbox
) -> None:
    ref = await linked_party(client)
    await sandbox.set_fault(TRANSFER, "accept_then_drop", rate=0.2, seed=1)
    await sandbox.set_fault(TRANSFER, "error", rate=0.2, seed=2)
    await sandbox.set_fault(TRANSFER, "error", rate=0.1, seed=3, phase="after")
    requests = [deposit(ref, ref=f"mix-{i}-{ref}") for i in range(40)]
    outcomes = await _gather_outcomes(client, requests)
    ledger = {t["partnerTransactionRef"]: t for t in await sandbox.transfers(ref)}
    assert len(await sandbox.transfers(ref)) == len(ledger)  # never two for one reference
    for req, outcome in zip(requests, outcomes, strict=True):
        if outcome is None:
            assert req.transaction_ref in ledger  # accepted means Bakkt has it
        else:
            assert isinstance(outcome, BakktOutcomeUnknown)


async def test_link_dropped_before_an_answer_is_not_resent(
    client: BakktClient, sandbox: RunningSandbox, traffic: Traffic
) -> None:
    ref = party()
    await sandbox.set_fault("addBankAccount", "accept_then_drop", count=1)
    with pytest.raises(BakktOutcomeUnknown) as caught:
        await client.link_plaid(ref, "link-9", "processor-ok")
    assert (caught.value.operation, caught.value.reference) == ("link_plaid", "link-9")
    assert len(traffic.to("/plaidAccount/link")) == 1
    assert (await sandbox.party(ref))["bankAccount"] is not None


async def test_reads_dropped_before_an_answer_are_retried(
    client: BakktClient, sandbox: RunningSandbox, traffic: Traffic
) -> None:
    await sandbox.set_fault(BALANCE, "drop", count=2)
    await client.balance(party())
    [fault] = await sandbox.faults()
    assert fault["hits"] == 2
    # aiohttp itself resends an idempotent GET once on a reused connection that dropped, so
    # the client may have made fewer attempts than the sandbox saw; never more.
    assert 2 <= len(traffic.to("/fiatAccount/balance")) <= 3


# --- nobody listening ------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("transport_name", ["aiohttp", "httpx"])
async def test_transfer_to_nobody_is_unavailable_not_unknown(transport_name: str) -> None:
    config = BakktConfig(
        base_url=f"http://127.0.0.1:{_closed_port()}",
        partner_id="p",
        client_id="c",
        client_secret=SecretStr("s"),
        transport=transport_name,  # type: ignore[arg-type]
        backoff_base=0.0,
    )
    async with BakktClient(config) as client:
        with pytest.raises(BakktUnavailable):
            await client.transfer(deposit("alice"))
        with pytest.raises(BakktUnavailable):
            await client.link_plaid("alice", "l", "processor-ok")


# --- helpers ---------------------------------------------------------------------------------


async def _gather_outcomes(
    client: BakktClient, requests: list[TransferRequest]
) -> list[BaseException | None]:
    results = await asyncio.gather(*(client.transfer(r) for r in requests), return_exceptions=True)
    return [r if isinstance(r, BaseException) else None for r in results]
