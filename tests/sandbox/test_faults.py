"""Fault injection per operation: 5xx, latency, timeouts, 429, drops, and accept-then-drop."""

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest

from bakkt_sandbox.config import FaultSpec, SandboxSettings
from bakkt_sandbox.testing import RunningSandbox, SandboxError, running_sandbox
from tests.sandbox.conftest import Partner, http_client, make_partner


async def test_error_fault_answers_5xx_with_a_public_api_error_for_the_next_n_requests(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await bakkt_sandbox.set_fault("transferFiatCurrency", "error", status=502, count=2)
    codes = [(await partner.transfer(linked_party, 10)).status_code for _ in range(3)]
    assert codes == [502, 502, 200]
    # Nothing was recorded for the failed calls: the fault struck before the operation ran.
    assert len(await bakkt_sandbox.transfers(linked_party)) == 1
    [fault] = await bakkt_sandbox.faults()
    assert (fault["hits"], fault["exhausted"]) == (2, True)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (500, "INTERNAL_SERVER_ERROR"),
        (502, "BAD_GATEWAY"),
        (503, "SERVICE_UNAVAILABLE"),
        (504, "GATEWAY_TIMEOUT"),
        (599, "INTERNAL_SERVER_ERROR"),
    ],
)
async def test_error_fault_body_is_a_public_api_error(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str, status: int, kind: str
) -> None:
    await bakkt_sandbox.set_fault("getFiatAccountBalance", "error", status=status)
    resp = await partner.get(party, "/fiatAccount/balance")
    assert resp.status_code == status
    assert resp.json()["type"] == kind


async def test_faults_apply_only_to_their_operation(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    await bakkt_sandbox.set_fault("heartbeat", "error")
    assert (await partner.get(party, "/fiatAccount/balance")).status_code == 200
    resp = await partner.http.post(
        bakkt_sandbox.base_url + "/partner/v1/heartbeat", json={}, headers=partner.headers
    )
    assert resp.status_code == 503
    assert resp.json()["type"] == "SERVICE_UNAVAILABLE"


async def test_wildcard_fault_hits_every_operation_including_the_token(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    await bakkt_sandbox.set_fault("*", "error", count=2)
    assert (await partner.get(party, "/fiatAccount/balance")).status_code == 503
    with pytest.raises(SandboxError) as err:
        await bakkt_sandbox.access_token()
    assert err.value.status == 503


async def test_after_skips_the_first_matching_requests(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    await bakkt_sandbox.set_fault("getFiatAccountBalance", "error", after=2, count=1)
    codes = [(await partner.get(party, "/fiatAccount/balance")).status_code for _ in range(4)]
    assert codes == [200, 200, 503, 200]


async def test_a_rate_with_a_seed_hits_the_same_requests_every_run(party: str) -> None:
    patterns = []
    for _ in range(2):
        async with running_sandbox(time_scale=0, webhook_url="") as sb, http_client() as http:
            partner = await make_partner(sb, http)
            await sb.set_fault("getFiatAccountBalance", "error", rate=0.3, seed=42)
            patterns.append(
                [(await partner.get(party, "/fiatAccount/balance")).status_code for _ in range(30)]
            )
    assert patterns[0] == patterns[1]
    assert 3 <= patterns[0].count(503) <= 18


async def test_latency_fault_delays_the_answer(
    bakkt_sandbox: RunningSandbox, partner: Partner, party: str
) -> None:
    await bakkt_sandbox.set_fault("getFiatAccountBalance", "latency", latency_ms=300, count=1)
    started = time.monotonic()
    resp = await partner.get(party, "/fiatAccount/balance")
    assert resp.status_code == 200
    assert time.monotonic() - started >= 0.3
    await partner.get(party, "/fiatAccount/balance")
    # That the second request was not delayed is the fault's own count, not a stopwatch: an
    # upper bound on elapsed time fails on a loaded machine.
    [fault] = await bakkt_sandbox.faults()
    assert (fault["seen"], fault["hits"], fault["exhausted"]) == (1, 1, True)


async def test_timeout_fault_never_answers_and_records_nothing(
    bakkt_sandbox: RunningSandbox, linked_party: str
) -> None:
    await bakkt_sandbox.set_fault("transferFiatCurrency", "timeout", hold_seconds=2, count=1)
    async with http_client(timeout=0.3) as http:
        partner = await make_partner(bakkt_sandbox, http)
        # A timeout, not a closed connection: the sandbox held the request past the client's
        # 0.3 s (it lets go only at 2 s). No stopwatch bound, which a loaded machine can break.
        with pytest.raises(httpx.TimeoutException):
            await partner.transfer(linked_party, 10, ref="to-1")
    assert await bakkt_sandbox.transfers(linked_party) == []


async def test_timeout_after_processing_records_the_transfer(
    bakkt_sandbox: RunningSandbox, linked_party: str
) -> None:
    await bakkt_sandbox.set_fault(
        "transferFiatCurrency", "timeout", hold_seconds=2, count=1, phase="after"
    )
    async with http_client(timeout=0.3) as http:
        partner = await make_partner(bakkt_sandbox, http)
        with pytest.raises(httpx.TimeoutException):
            await partner.transfer(linked_party, 10, ref="to-2")
    assert [t["partnerTransactionRef"] for t in await bakkt_sandbox.transfers(linked_party)] == [
        "to-2"
    ]


async def test_rate_limit_fault_answers_429_with_retry_after(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await bakkt_sandbox.set_fault("transferFiatCurrency", "rate_limit", retry_after=7, count=1)
    resp = await partner.transfer(linked_party, 10)
    assert resp.status_code == 429
    assert resp.headers["Retry-After"] == "7"
    assert resp.json()["type"] == "RATE_LIMITED"
    assert await bakkt_sandbox.transfers(linked_party) == []


async def raw_transfer(sb: RunningSandbox, token: str, party: str, body: dict[str, Any]) -> bytes:
    """POST a transfer over a bare socket and return every byte the server sent back."""
    host, port = sb.server.host, sb.server.port
    payload = json.dumps(body).encode()
    path = f"/partner/v1/partner/{sb.partner_id}/party/{party}/transfer"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head.encode() + payload)
    await writer.drain()
    received = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    return received


async def test_accept_then_drop_records_the_transfer_and_closes_without_an_answer(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await bakkt_sandbox.set_fault("transferFiatCurrency", "accept_then_drop", count=1)
    key = str(uuid.uuid4())
    body = {
        "amount": 10,
        "currency": "USD",
        "fiatTransactType": "DEPOSIT",
        "instrumentType": "ACH",
        "partnerTransactionRef": "atd-1",
        "idempotencyKey": key,
    }
    # The connection ends (EOF) before a single response byte.
    assert await raw_transfer(bakkt_sandbox, partner.token, linked_party, body) == b""
    [entry] = await bakkt_sandbox.transfers(linked_party)
    assert (entry["partnerTransactionRef"], entry["status"]) == ("atd-1", "PENDING")
    # The retry the guide prescribes: same key, and the 409 says the original was accepted.
    retry = await partner.transfer(linked_party, 10, ref="atd-1", key=key)
    assert retry.status_code == 409
    assert retry.json()["originalResponse"]["status"] == 200
    [entry] = await bakkt_sandbox.transfers(linked_party)
    assert entry["requestCount"] == 2


async def test_drop_before_processing_records_nothing(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await bakkt_sandbox.set_fault("transferFiatCurrency", "drop", count=1)
    # httpx-aiohttp reports a server disconnect as ConnectTimeout, plain httpx as
    # RemoteProtocolError: both are transport errors.
    with pytest.raises(httpx.TransportError):
        await partner.transfer(linked_party, 10)
    assert await bakkt_sandbox.transfers(linked_party) == []


async def test_error_after_processing_records_the_transfer_behind_a_5xx(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await bakkt_sandbox.set_fault(
        "transferFiatCurrency", "error", status=500, phase="after", count=1
    )
    key = str(uuid.uuid4())
    assert (await partner.transfer(linked_party, 10, ref="eap", key=key)).status_code == 500
    assert len(await bakkt_sandbox.transfers(linked_party)) == 1
    assert (await partner.transfer(linked_party, 10, ref="eap", key=key)).status_code == 409


async def test_faults_can_be_listed_removed_and_cleared(bakkt_sandbox: RunningSandbox) -> None:
    await bakkt_sandbox.clear_faults()
    first = await bakkt_sandbox.set_fault("heartbeat", "latency", latency_ms=5)
    await bakkt_sandbox.set_fault("getTransactions", "error")
    assert [f["operation"] for f in await bakkt_sandbox.faults()] == [
        "heartbeat",
        "getTransactions",
    ]
    await bakkt_sandbox.remove_fault(first["id"])
    assert [f["operation"] for f in await bakkt_sandbox.faults()] == ["getTransactions"]
    await bakkt_sandbox.clear_faults()
    assert await bakkt_sandbox.faults() == []
    with pytest.raises(SandboxError) as err:
        await bakkt_sandbox.remove_fault(first["id"])
    assert err.value.status == 404


async def test_an_unknown_operation_or_mode_is_refused(bakkt_sandbox: RunningSandbox) -> None:
    with pytest.raises(SandboxError) as unknown_op:
        await bakkt_sandbox.set_fault("makeMoney", "error")
    assert unknown_op.value.status == 400
    with pytest.raises(SandboxError) as unknown_mode:
        await bakkt_sandbox.set_fault("heartbeat", "explode")  # type: ignore[arg-type]
    assert unknown_mode.value.status == 400


async def test_initial_faults_come_from_settings_and_survive_a_reset(party: str) -> None:
    spec = FaultSpec(operation="getFiatAccountBalance", mode="error", status=504)
    async with running_sandbox(time_scale=0, webhook_url="", faults=[spec]) as sb:
        async with http_client() as http:
            partner = await make_partner(sb, http)
            assert (await partner.get(party, "/fiatAccount/balance")).status_code == 504
            await sb.clear_faults()
            assert (await partner.get(party, "/fiatAccount/balance")).status_code == 200
            await sb.reset()
            assert (await partner.get(party, "/fiatAccount/balance")).status_code == 504


def test_initial_faults_parse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SANDBOX_FAULTS",
        '[{"operation": "transferFiatCurrency", "mode": "accept_then_drop", "count": 3},'
        ' {"operation": "*", "mode": "latency", "latencyMs": 20}]',
    )
    faults = SandboxSettings().faults
    assert [(f.operation, f.mode, f.count, f.latency_ms) for f in faults] == [
        ("transferFiatCurrency", "accept_then_drop", 3, 0),
        ("*", "latency", None, 20),
    ]


async def test_the_first_terminal_fault_wins_and_latencies_add_up(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str
) -> None:
    await bakkt_sandbox.set_fault("transferFiatCurrency", "latency", latency_ms=100, count=1)
    await bakkt_sandbox.set_fault("*", "latency", latency_ms=100, count=1)
    await bakkt_sandbox.set_fault("transferFiatCurrency", "accept_then_drop", count=1)
    await bakkt_sandbox.set_fault("transferFiatCurrency", "rate_limit", count=1)
    started = time.monotonic()
    with pytest.raises(httpx.TransportError):
        await partner.transfer(linked_party, 10, ref="first-wins")
    assert time.monotonic() - started >= 0.2
    hits = [f["hits"] for f in await bakkt_sandbox.faults()]
    assert hits == [1, 1, 1, 0]
    # The rate-limit fault is still armed for the next request.
    assert (await partner.transfer(linked_party, 10)).status_code == 429
