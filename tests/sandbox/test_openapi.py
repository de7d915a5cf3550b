"""Drive every operation of the reconstructed Bakkt OpenAPI files and validate each answer.

The files are kept in the repository as test data (`tests/data/bakkt-openapi/`, whose README says
where they come from), so these tests run in any clone.
"""

import copy
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from bakkt_sandbox.testing import RunningSandbox
from tests.sandbox.conftest import Partner

OPENAPI_DIR = Path(__file__).resolve().parents[1] / "data" / "bakkt-openapi"


def load_specs() -> list[dict[str, Any]]:
    paths = sorted(OPENAPI_DIR.glob("*.yml"))
    # A missing directory fails loudly instead of leaving the parametrized tests nothing to check.
    assert paths, f"no OpenAPI files in {OPENAPI_DIR}"
    return [yaml.safe_load(p.read_text()) for p in paths]


def operations() -> dict[str, tuple[dict[str, Any], str, str, dict[str, Any]]]:
    """operationId -> (spec, method, path, operation object)."""
    found = {}
    for spec in load_specs():
        for path, item in spec["paths"].items():
            for method, op in item.items():
                found[op["operationId"]] = (spec, method.upper(), path, op)
    return found


def schema_for(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    # Local `#/components/...` refs resolve against the root, so carry the components along.
    return {**schema, "components": spec["components"]}


def validate(spec: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    jsonschema.Draft202012Validator(schema_for(spec, schema)).validate(instance)


def check_response(
    spec: dict[str, Any], op: dict[str, Any], resp: httpx.Response, expected_status: int
) -> None:
    assert resp.status_code == expected_status, resp.text
    declared = op["responses"][str(resp.status_code)]
    content = declared.get("content")
    if content is None:
        assert resp.content == b""
        return
    [(media_type, media)] = content.items()
    if media_type.startswith("application/json"):
        assert resp.headers["content-type"].startswith("application/json")
    validate(spec, media["schema"], resp.json())


def relaxed_error_components(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with `rejectedValue: {type: object}` read as "any JSON value".

    The reconstruction types it `object` yet its own example is the string "i-am-not-a-uuid":
    it is Java's Object (any value), see docs/bakkt-contract.md §5.1.
    """
    relaxed = copy.deepcopy(spec)
    detail = relaxed["components"]["schemas"]["PublicApiErrorDetail"]["properties"]
    detail["rejectedValue"] = {}
    return relaxed


Driver = Callable[[Partner, RunningSandbox, str], Awaitable[tuple[httpx.Response, Any]]]


async def _token(p: Partner, sb: RunningSandbox, _party: str) -> tuple[httpx.Response, Any]:
    resp = await p.http.post(
        sb.base_url + "/partner/v1/oauth2/token",
        params={"grant_type": "client_credentials"},
        headers={"Authorization": sb.basic_auth()},
    )
    return resp, None


async def _heartbeat(p: Partner, sb: RunningSandbox, _party: str) -> tuple[httpx.Response, Any]:
    body = {"requestId": str(uuid.uuid4())}
    resp = await p.http.post(sb.base_url + "/partner/v1/heartbeat", json=body, headers=p.headers)
    return resp, body


def _post(suffix: str, body: dict[str, Any]) -> Driver:
    async def drive(p: Partner, _sb: RunningSandbox, party: str) -> tuple[httpx.Response, Any]:
        return await p.post(party, suffix, body), body

    return drive


def _get(suffix: str) -> Driver:
    async def drive(p: Partner, _sb: RunningSandbox, party: str) -> tuple[httpx.Response, Any]:
        return await p.get(party, suffix), None

    return drive


async def _transfer(p: Partner, _sb: RunningSandbox, party: str) -> tuple[httpx.Response, Any]:
    await p.link(party)
    body = {
        "amount": 42.5,
        "currency": "USD",
        "fiatTransactType": "DEPOSIT",
        "instrumentType": "ACH",
        "partnerTransactionRef": f"oa-{uuid.uuid4().hex[:8]}",
        "idempotencyKey": str(uuid.uuid4()),
    }
    return await p.post(party, "/transfer", body), body


async def _linked_post(
    suffix: str, body: dict[str, Any], p: Partner, party: str
) -> tuple[httpx.Response, Any]:
    await p.link(party)
    return await p.post(party, suffix, body), body


def _unlink(suffix: str, body: dict[str, Any]) -> Driver:
    async def drive(p: Partner, _sb: RunningSandbox, party: str) -> tuple[httpx.Response, Any]:
        return await _linked_post(suffix, body, p, party)

    return drive


DRIVERS: dict[str, tuple[Driver, int]] = {
    "generateAccessToken": (_token, 200),
    "heartbeat": (_heartbeat, 200),
    "addBankAccount": (
        _post(
            "/plaidAccount/link",
            {"processorToken": "processor-sandbox-oa", "partnerTransactionRef": "oa-link"},
        ),
        200,
    ),
    "addManualBankAccount": (
        _post(
            "/bankAccount",
            {
                "accountNumber": "12345678",
                "routingNumber": "011000015",
                "accountType": "CHECKING",
                "accountDisplayName": "Main",
                "bankName": "Bank",
                "accountStatus": "ACTIVE",
            },
        ),
        200,
    ),
    "linkBankAccountAchAsync": (
        _post(
            "/bankAccountLinking/ach",
            {
                "accountNumber": "12345678",
                "accountType": "CHECKING",
                "partnerTransactionRef": "oa-ach",
                "routingNumber": "011000015",
            },
        ),
        200,
    ),
    "unlinkBankAccount": (
        _unlink(
            "/bankAccountLinking/unlink", {"instrumentType": "ACH", "partnerTransactionRef": "oa-u"}
        ),
        200,
    ),
    "removeFiatAccount": (_unlink("/fiatAccount/unlink", {"instrumentType": "ACH"}), 201),
    "transferFiatCurrency": (_transfer, 200),
    "generateWireInstructions": (_get("/wire-instructions"), 200),
    "getFiatAccountBalance": (_get("/fiatAccount/balance"), 200),
}


def test_every_operation_in_the_openapi_files_has_a_driver() -> None:
    assert set(operations()) == set(DRIVERS)


@pytest.mark.parametrize("operation_id", sorted(DRIVERS))
async def test_operation_answers_match_the_openapi_schemas(
    partner: Partner, bakkt_sandbox: RunningSandbox, operation_id: str
) -> None:
    spec, _method, _path, op = operations()[operation_id]
    drive, expected = DRIVERS[operation_id]
    party = f"oa-{uuid.uuid4().hex[:10]}"
    resp, sent = await drive(partner, bakkt_sandbox, party)
    if sent is not None:
        # The driver itself must send what the spec describes.
        validate(
            spec, op["requestBody"]["content"]["application/json;charset=UTF-8"]["schema"], sent
        )
    check_response(spec, op, resp, expected)


@pytest.mark.parametrize(
    "operation_id", sorted(k for k in DRIVERS if k not in ("generateAccessToken", "heartbeat"))
)
async def test_operation_errors_match_the_public_api_error_schema(
    partner: Partner, bakkt_sandbox: RunningSandbox, operation_id: str
) -> None:
    spec, method, path, op = operations()[operation_id]
    url = bakkt_sandbox.base_url + path.format(
        partnerId=str(uuid.uuid4()), partnerPartyRef="oa-error"
    )
    resp = await partner.http.request(method, url, json={}, headers=partner.headers)
    check_response(spec, op, resp, 400)
    assert resp.json()["type"] == "INVALID_PARTNER_ID"


async def test_validation_errors_match_the_schema_read_as_intended(
    partner: Partner, linked_party: str
) -> None:
    spec, _method, _path, op = operations()["transferFiatCurrency"]
    resp = await partner.transfer(linked_party, "10.001")
    check_response(relaxed_error_components(spec), op, resp, 400)
    assert resp.json()["details"][0]["rejectedValue"] == 10.001


async def test_token_errors_match_the_schema(
    partner: Partner, bakkt_sandbox: RunningSandbox
) -> None:
    spec, _method, _path, op = operations()["generateAccessToken"]
    resp = await partner.http.post(
        bakkt_sandbox.base_url + "/partner/v1/oauth2/token",
        params={"grant_type": "authorization_code"},
        headers={"Authorization": bakkt_sandbox.basic_auth()},
    )
    check_response(relaxed_error_components(spec), op, resp, 400)
