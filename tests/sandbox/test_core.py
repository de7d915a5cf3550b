"""Token, transfer, idempotency, look-ups, balance and the transfer ledger."""

import asyncio
import base64
import time
import uuid

import httpx
import jwt

from bakkt_sandbox.testing import RunningSandbox, running_sandbox
from tests.sandbox.conftest import Partner, http_client, make_partner


async def test_token_is_an_rs256_jwt_whose_lifetime_equals_expires_in(
    bakkt_sandbox: RunningSandbox, http: httpx.AsyncClient
) -> None:
    resp = await http.post(
        bakkt_sandbox.base_url + "/partner/v1/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": bakkt_sandbox.basic_auth()},
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["tokenType"] == "Bearer"
    assert isinstance(body["expiresIn"], str)
    header = jwt.get_unverified_header(body["accessToken"])
    claims = jwt.decode(body["accessToken"], options={"verify_signature": False})
    assert header["alg"] == "RS256"
    assert claims["exp"] - claims["iat"] == int(body["expiresIn"]) == 3600


async def test_transfer_is_accepted_with_an_empty_200_and_recorded(
    partner: Partner, linked_party: str, bakkt_sandbox: RunningSandbox
) -> None:
    resp = await partner.transfer(linked_party, 125.5, ref="t-1", key="k-core-1")
    assert resp.status_code == 200
    assert resp.content == b""
    tx = await partner.transaction(linked_party, "t-1")
    assert tx["transactionStatus"] == "PENDING"
    assert tx["fiatTransactionType"] == "ACH_DEPOSIT"
    assert tx["amount"] == 125.5
    ledger = await bakkt_sandbox.transfers(linked_party)
    assert [
        (t["partnerTransactionRef"], t["idempotencyKey"], t["requestCount"]) for t in ledger
    ] == [("t-1", "k-core-1", 1)]
    assert (await partner.balance(linked_party))["unsettledAmount"] == 125.5


async def test_reused_key_gets_409_with_the_original_response_and_no_second_transfer(
    partner: Partner, linked_party: str, bakkt_sandbox: RunningSandbox
) -> None:
    key = str(uuid.uuid4())
    first = await partner.transfer(linked_party, 50, ref="t-a", key=key)
    again = await partner.transfer(linked_party, 50, ref="t-a", key=key)
    assert first.status_code == 200
    assert again.status_code == 409
    body = again.json()
    assert body["type"] == "IDEMPOTENCY_KEY_IN_USE"
    assert body["originalResponse"] == {"status": 200, "body": None}
    ledger = await bakkt_sandbox.transfers(idempotency_key=key)
    assert len(ledger) == 1
    assert ledger[0]["requestCount"] == 2


async def test_concurrent_reuse_of_a_key_creates_exactly_one_transfer(
    bakkt_sandbox: RunningSandbox, linked_party: str
) -> None:
    key = str(uuid.uuid4())
    async with http_client() as http:
        partner = await make_partner(bakkt_sandbox, http)
        results = await asyncio.gather(
            *(partner.transfer(linked_party, 20, ref="t-race", key=key) for _ in range(40))
        )
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) == 1
    assert codes.count(409) == 39
    ledger = await bakkt_sandbox.transfers(idempotency_key=key)
    assert len(ledger) == 1
    assert ledger[0]["requestCount"] == 40


async def test_many_concurrent_distinct_transfers_are_all_recorded_once(
    bakkt_sandbox: RunningSandbox, linked_party: str
) -> None:
    async with http_client() as http:
        partner = await make_partner(bakkt_sandbox, http)
        results = await asyncio.gather(
            *(partner.transfer(linked_party, 1, ref=f"many-{i}") for i in range(200))
        )
        balance = await partner.balance(linked_party)
    assert {r.status_code for r in results} == {200}
    ledger = await bakkt_sandbox.transfers(linked_party)
    assert sorted(t["partnerTransactionRef"] for t in ledger) == sorted(
        f"many-{i}" for i in range(200)
    )
    assert balance["unsettledAmount"] == 200


async def test_an_expired_key_may_be_used_again(linked_party: str) -> None:
    async with running_sandbox(time_scale=0, webhook_url="", idempotency_ttl=0.2) as sb:
        async with http_client() as http:
            partner = await make_partner(sb, http)
            await partner.link(linked_party)
            assert (await partner.transfer(linked_party, 5, ref="e-1", key="k")).status_code == 200
            time.sleep(0.25)  # noqa: ASYNC251 - the TTL is measured on the monotonic clock
            assert (await partner.transfer(linked_party, 5, ref="e-2", key="k")).status_code == 200
            assert len(await sb.transfers(linked_party)) == 2


async def test_basic_auth_header_is_required_for_a_token(
    bakkt_sandbox: RunningSandbox, http: httpx.AsyncClient
) -> None:
    bad = "Basic " + base64.b64encode(b"dev-client:wrong").decode()
    resp = await http.post(
        bakkt_sandbox.base_url + "/partner/v1/oauth2/token",
        params={"grant_type": "client_credentials"},
        headers={"Authorization": bad},
    )
    assert resp.status_code == 401
    assert resp.json()["type"] == "UNAUTHORIZED"
