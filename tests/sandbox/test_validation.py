"""Wrongly typed and hostile bodies: Bakkt's 400 `PublicApiError`, never a 500, nothing changed."""

import json
from typing import Any

import pytest

from bakkt_sandbox.testing import RunningSandbox
from tests.sandbox.conftest import Partner

# Every body-taking operation of /partner/v1 with a body it accepts, so each case below differs
# from a valid request in the one field it breaks.
VALID: dict[str, dict[str, Any]] = {
    "/plaidAccount/link": {"processorToken": "processor-ok", "partnerTransactionRef": "v-link"},
    "/bankAccount": {
        "accountNumber": "123456789",
        "routingNumber": "021000021",
        "accountType": "CHECKING",
        "bankName": "Valid Bank",
    },
    "/bankAccountLinking/ach": {
        "accountNumber": "123456789",
        "routingNumber": "021000021",
        "accountType": "CHECKING",
        "partnerTransactionRef": "v-ach",
    },
    "/bankAccountLinking/linkUrl": {"partnerTransactionRef": "v-url"},
    "/bankAccountLinking/unlink": {"instrumentType": "ACH", "partnerTransactionRef": "v-unlink"},
    "/fiatAccount/unlink": {"instrumentType": "ACH"},
    "/transfer": {
        "amount": 25,
        "currency": "USD",
        "fiatTransactType": "DEPOSIT",
        "instrumentType": "ACH",
        "partnerTransactionRef": "v-tx",
        "idempotencyKey": "v-key",
    },
}

WRONG_TYPES: list[Any] = [["x"], {"": None}, 12.5, 7, True, [1.5, {"a": [None]}]]


def _cases() -> list[tuple[str, str, Any]]:
    cases = []
    for op, body in VALID.items():
        for name, value in body.items():
            numeric = isinstance(value, int)
            cases += [
                (op, name, wrong)
                for wrong in WRONG_TYPES
                if not (numeric and type(wrong) in (int, float)) and type(wrong) is not type(value)
            ]
    return cases


async def _state(sandbox: RunningSandbox, party: str) -> tuple[Any, Any]:
    return await sandbox.party(party), await sandbox.transfers(party)


def _assert_public_api_error(status: int, body: dict[str, Any]) -> None:
    assert status == 400, body
    assert body["type"] == "INVALID_FIELD_VALUE"
    assert isinstance(body["description"], str)
    assert isinstance(body["details"], list)


async def test_the_issue_reproductions_are_400s(partner: Partner, linked_party: str) -> None:
    link = await partner.post(
        linked_party,
        "/plaidAccount/link",
        {"partnerTransactionRef": {"": None}, "processorToken": ["x"]},
    )
    manual = await partner.post(
        linked_party,
        "/bankAccount",
        {"accountNumber": ["1"], "routingNumber": ["2"], "accountType": ["3"], "bankName": ["4"]},
    )
    for resp in (link, manual):
        _assert_public_api_error(resp.status_code, resp.json())


@pytest.mark.parametrize(("operation", "field", "wrong"), _cases())
async def test_a_wrongly_typed_field_is_a_400_naming_it_and_changes_nothing(
    bakkt_sandbox: RunningSandbox,
    partner: Partner,
    linked_party: str,
    operation: str,
    field: str,
    wrong: Any,
) -> None:
    before = await _state(bakkt_sandbox, linked_party)
    resp = await partner.post(linked_party, operation, {**VALID[operation], field: wrong})
    body = resp.json()
    _assert_public_api_error(resp.status_code, body)
    [detail] = body["details"]
    assert detail["field"] == field
    # rejectedValue is whatever JSON value was sent (Bakkt's schema types it as any object).
    assert json.loads(json.dumps(detail["rejectedValue"])) == json.loads(json.dumps(wrong))
    assert await _state(bakkt_sandbox, linked_party) == before


ODD_TEXT = [
    ("NUL", b'"a\\u0000b"'),
    ("lone high surrogate", b'"\\ud800"'),
    ("lone low surrogate", b'"x\\udfffy"'),
]


@pytest.mark.parametrize("operation", list(VALID))
@pytest.mark.parametrize(("label", "raw"), ODD_TEXT, ids=[c[0] for c in ODD_TEXT])
async def test_nul_and_lone_surrogates_in_any_string_are_a_400(
    bakkt_sandbox: RunningSandbox,
    partner: Partner,
    linked_party: str,
    operation: str,
    label: str,
    raw: bytes,
) -> None:
    before = await _state(bakkt_sandbox, linked_party)
    body = VALID[operation]
    first = next(iter(body))
    content = json.dumps({**body, first: "@@"}).encode().replace(b'"@@"', raw)
    resp = await partner.post(linked_party, operation, content=content)
    error = resp.json()
    _assert_public_api_error(resp.status_code, error)
    assert error["details"][0]["field"] == first, label
    assert await _state(bakkt_sandbox, linked_party) == before


async def test_a_surrogate_in_an_object_key_is_a_400(partner: Partner, party: str) -> None:
    resp = await partner.post(party, "/transfer", content=b'{"\\ud800": 1}')
    _assert_public_api_error(resp.status_code, resp.json())


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"a":' * 40 + b"1" + b"}" * 40,
    ],
    ids=["list-100000-deep", "object-100000-deep", "object-40-deep"],
)
@pytest.mark.parametrize("operation", ["/transfer", "/plaidAccount/link"])
async def test_deep_nesting_is_a_400(
    partner: Partner, party: str, operation: str, raw: bytes
) -> None:
    resp = await partner.post(party, operation, content=raw)
    _assert_public_api_error(resp.status_code, resp.json())


@pytest.mark.parametrize(
    ("amount", "rejected"),
    [
        ("1e400", "1E+400"),
        ("1" + "0" * 5000, None),  # past Python's int-parsing limit: malformed, not a crash
        ("1000000000000", 1e12),
        ("1e-400", 1e-400),
    ],
    ids=["1e400", "5001-digit-integer", "over-the-maximum", "1e-400"],
)
async def test_huge_and_tiny_amounts_are_a_400_and_record_nothing(
    bakkt_sandbox: RunningSandbox, partner: Partner, linked_party: str, amount: str, rejected: Any
) -> None:
    resp = await partner.transfer(linked_party, amount, ref="huge")
    body = resp.json()
    _assert_public_api_error(resp.status_code, body)
    if rejected is not None:
        assert body["details"][0]["rejectedValue"] == rejected
    assert await bakkt_sandbox.transfers(linked_party) == []


async def test_the_largest_amount_is_accepted_exactly(partner: Partner, linked_party: str) -> None:
    assert (await partner.transfer(linked_party, "999999999999.99", ref="max")).status_code == 200
    assert (await partner.transaction(linked_party, "max"))["amount"] == 999999999999.99


@pytest.mark.parametrize("size", ["9" * 5000, "\u0663", "\u00b2", "0500", "-1"])
async def test_odd_page_sizes_are_a_400(partner: Partner, party: str, size: str) -> None:
    resp = await partner.get(party, "/transactions", {"pageSize": size})
    _assert_public_api_error(resp.status_code, resp.json())


async def test_heartbeat_refuses_a_deep_body_and_odd_text(partner: Partner) -> None:
    url = partner.sandbox.base_url + "/partner/v1/heartbeat"
    headers = {**partner.headers, "content-type": "application/json"}
    for raw in (b"[" * 100_000, b'{"requestId": "\\ud800"}', b'{"requestId": "a\\u0000"}'):
        resp = await partner.http.post(url, content=raw, headers=headers)
        _assert_public_api_error(resp.status_code, resp.json())
