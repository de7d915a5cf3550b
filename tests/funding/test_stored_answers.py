"""What a key stores is the answer's kind and body, not an HTTP status, and its replay is the first
answer exactly: for rows this release writes, and for rows a release before migration 0012 wrote
(a status and a body, no kind) — read during a rolling deploy, or backfilled by 0012."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import migrate
from app.errors import problem_body
from app.funding import service as funding_service
from app.idempotency.answers import (
    Accepted,
    Answer,
    Created,
    Done,
    Kind,
    Rejected,
    legacy_status,
    stored,
)
from app.idempotency.http import status_of
from tests.foundation.test_migrations import empty_engine
from tests.funding.helpers import Execute, link_account, with_key

__all__ = ["empty_engine"]

Send = Callable[[httpx.AsyncClient, str, dict[str, str]], Awaitable[httpx.Response]]


@pytest.fixture
def headers(auth: Callable[[str], dict[str, str]], party: str) -> dict[str, str]:
    return auth(party)


async def _deposit(api: httpx.AsyncClient, party: str, headers: dict[str, str]) -> httpx.Response:
    return await api.post(
        f"/v1/parties/{party}/deposits", json={"amount": "10.00"}, headers=headers
    )


async def _withdraw_more_than_held(
    api: httpx.AsyncClient, party: str, headers: dict[str, str]
) -> httpx.Response:
    body = {"method": "ACH", "amount": "50.00"}
    return await api.post(f"/v1/parties/{party}/withdrawals", json=body, headers=headers)


async def _link_session(
    api: httpx.AsyncClient, party: str, headers: dict[str, str]
) -> httpx.Response:
    return await api.post(f"/v1/parties/{party}/link-sessions", json={}, headers=headers)


async def _link_plaid(
    api: httpx.AsyncClient, party: str, headers: dict[str, str]
) -> httpx.Response:
    # The same token each time the test sends it: a retry is the same request.
    body = {"processorToken": f"processor-sandbox-{party}"}
    return await api.post(f"/v1/parties/{party}/bank-accounts", json=body, headers=headers)


async def _link_bad_token(
    api: httpx.AsyncClient, party: str, headers: dict[str, str]
) -> httpx.Response:
    body = {"processorToken": "processor-invalid"}
    return await api.post(f"/v1/parties/{party}/bank-accounts", json=body, headers=headers)


# (name, whether the party needs a linked account first, the request, its kind, its status)
CASES: list[tuple[str, bool, Send, Kind, int]] = [
    ("deposit accepted", True, _deposit, Kind.ACCEPTED, 202),
    ("withdrawal rejected by Bakkt", True, _withdraw_more_than_held, Kind.REJECTED, 422),
    ("link session created", False, _link_session, Kind.CREATED, 201),
    ("plaid link accepted", False, _link_plaid, Kind.ACCEPTED, 202),
    ("bad processor token rejected", False, _link_bad_token, Kind.REJECTED, 422),
]


async def _key_row(sql: Execute, party: str, key: str) -> dict[str, Any]:
    result = await sql(
        "SELECT response_kind, response_status, response_body FROM idempotency_keys "
        "WHERE party_ref = :p AND key = :k",
        {"p": party, "k": key},
    )
    return dict(result.mappings().one())


def _same_answer(replay: httpx.Response, first: httpx.Response) -> None:
    assert replay.status_code == first.status_code
    assert replay.json() == first.json()
    assert replay.headers["content-type"] == first.headers["content-type"]
    assert replay.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers


@pytest.mark.parametrize(
    ("linked", "send", "kind", "status"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_a_key_stores_the_kind_and_replays_the_first_answer(
    api: httpx.AsyncClient,
    sql: Execute,
    party: str,
    headers: dict[str, str],
    linked: bool,
    send: Send,
    kind: Kind,
    status: int,
) -> None:
    if linked:
        await link_account(api, sql, party, headers)
    same = with_key(headers)
    first = await send(api, party, same)
    assert first.status_code == status, first.text
    row = await _key_row(sql, party, same["Idempotency-Key"])
    assert row["response_kind"] == kind
    assert row["response_body"] == first.json()
    # Written for the release before 0012, which reads nothing else.
    assert row["response_status"] == status
    _same_answer(await send(api, party, same), first)


@pytest.mark.parametrize(
    ("linked", "send", "kind", "status"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_a_row_finished_by_the_release_before_replays_the_same_answer(
    api: httpx.AsyncClient,
    sql: Execute,
    party: str,
    headers: dict[str, str],
    linked: bool,
    send: Send,
    kind: Kind,
    status: int,
) -> None:
    if linked:
        await link_account(api, sql, party, headers)
    same = with_key(headers)
    first = await send(api, party, same)
    # What the old release wrote: the status it answered and the body, no kind.
    await sql(
        "UPDATE idempotency_keys SET response_kind = NULL WHERE party_ref = :p AND key = :k",
        {"p": party, "k": same["Idempotency-Key"]},
    )
    _same_answer(await send(api, party, same), first)


async def test_an_unlink_is_done_and_its_old_shape_replays_the_same(
    api: httpx.AsyncClient, sql: Execute, party: str, headers: dict[str, str]
) -> None:
    account_id = await link_account(api, sql, party, headers)
    url = f"/v1/parties/{party}/bank-accounts/{account_id}"
    same = with_key(headers)
    first = await api.delete(url, headers=same)
    assert first.status_code == 200
    row = await _key_row(sql, party, same["Idempotency-Key"])
    assert (row["response_kind"], row["response_status"]) == (Kind.DONE, 200)
    _same_answer(await api.delete(url, headers=same), first)
    await sql(
        "UPDATE idempotency_keys SET response_kind = NULL WHERE party_ref = :p AND key = :k",
        {"p": party, "k": same["Idempotency-Key"]},
    )
    _same_answer(await api.delete(url, headers=same), first)


def _problem(status: int, code: str) -> dict[str, Any]:
    return problem_body(status=status, code=code, title="t", detail="d", instance="/v1/x")


ANSWERS: list[Answer] = [
    Accepted({"id": "t", "status": "PENDING"}),
    Created({"bankAccountId": "b", "linkUrl": "https://x.example"}),
    Done({"id": "b", "status": "UNLINKED"}),
    Rejected("insufficient_balance", _problem(422, "insufficient_balance")),
    Rejected("party_suspended", _problem(403, "party_suspended")),
    Rejected("invalid_processor_token", _problem(422, "invalid_processor_token")),
]


@pytest.mark.parametrize("answer", ANSWERS, ids=lambda a: f"{a.kind}")
def test_the_status_written_for_the_release_before_is_what_the_router_answers(
    answer: Answer,
) -> None:
    assert legacy_status(answer) == status_of(answer)
    # And an old row of that status reads back as the same answer.
    assert stored(None, legacy_status(answer), answer.body) == answer
    assert stored(answer.kind, legacy_status(answer), answer.body) == answer


async def test_migration_0012_gives_every_finished_key_its_kind(
    empty_engine: AsyncEngine,
) -> None:
    engine = empty_engine
    await migrate.upgrade_async(engine, "0006")
    rows = {
        "k-deposit": (202, {"id": "t", "status": "PENDING"}),
        "k-session": (201, {"bankAccountId": "b"}),
        "k-unlink": (200, {"id": "b", "status": "UNLINKED"}),
        "k-rejected": (422, _problem(422, "insufficient_balance")),
        "k-forbidden": (403, _problem(403, "party_suspended")),
        "k-unfinished": (None, None),
    }
    async with engine.begin() as conn:
        for key, (status, body) in rows.items():
            await conn.execute(
                text(
                    "INSERT INTO idempotency_keys (party_ref, key, request_method, request_path,"
                    " fingerprint, recovery_point, response_status, response_body, expires_at)"
                    " VALUES ('p-old', :k, 'POST', '/x', :f, :rp, :s, CAST(:b AS jsonb),"
                    " clock_timestamp() + interval '1 day')"
                ),
                {
                    "k": key,
                    "f": "0" * 64,
                    "rp": "finished" if status is not None else "started",
                    "s": status,
                    "b": None if body is None else json.dumps(body),
                },
            )
    await migrate.upgrade_async(engine, "0012")
    async with engine.connect() as conn:
        found = {
            k: (kind, status, body)
            for k, kind, status, body in (
                await conn.execute(
                    text(
                        "SELECT key, response_kind, response_status, response_body "
                        "FROM idempotency_keys WHERE party_ref = 'p-old'"
                    )
                )
            ).all()
        }
    assert {k: v[0] for k, v in found.items()} == {
        "k-deposit": "accepted",
        "k-session": "created",
        "k-unlink": "done",
        "k-rejected": "rejected",
        "k-forbidden": "rejected",
        "k-unfinished": None,
    }
    for key, (kind, status, body) in found.items():
        if status is None:
            assert stored(kind, status, body) is None
            continue
        answer = stored(kind, status, body)
        assert answer is not None
        # The backfilled row answers what the old release answered for it.
        assert status_of(answer) == rows[key][0]
        assert answer.body == rows[key][1]
        assert stored(None, status, body) == answer


async def test_a_holder_whose_intent_another_holder_wrote_first_answers_in_progress(
    api: httpx.AsyncClient,
    sql: Execute,
    monkeypatch: pytest.MonkeyPatch,
    party: str,
    headers: dict[str, str],
) -> None:
    await link_account(api, sql, party, headers)
    check_limits = funding_service._check_limits

    async def meanwhile(*args: Any, **kwargs: Any) -> Any:
        # The claim's other holder (a live one believed gone) commits its intent while this
        # one checks the limits.
        await sql(
            "UPDATE idempotency_keys SET recovery_point = 'intent_written' "
            "WHERE party_ref = :p AND recovery_point = 'started'",
            {"p": party},
        )
        return await check_limits(*args, **kwargs)

    monkeypatch.setattr(funding_service, "_check_limits", meanwhile)
    response = await _deposit(api, party, with_key(headers))
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_request_in_progress"
    assert response.headers["retry-after"] == "1"
    rows = await sql("SELECT count(*) FROM transactions WHERE party_ref = :p", {"p": party})
    assert rows.scalar_one() == 0
