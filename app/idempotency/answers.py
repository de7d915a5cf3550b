"""What an idempotent request answered, in the domain's words.

The services return these; `app/idempotency/http.py` alone turns them into a status, headers and
a body. What is stored with a key (and replayed for every retry) is the kind and the body, never
an HTTP status: the kind says what happened, the body is the representation the consumer got.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.errors import AppError, problem_body


class Kind(StrEnum):
    """Stored in `idempotency_keys.response_kind`."""

    ACCEPTED = "accepted"
    CREATED = "created"
    DONE = "done"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Accepted:
    """Taken, and going on at Bakkt: a transfer (PENDING, UNKNOWN, or settled by now) or a link
    that Bakkt's webhook completes. `body` is the transaction or the bank account."""

    body: Any

    @property
    def kind(self) -> Kind:
        return Kind.ACCEPTED


@dataclass(frozen=True, slots=True)
class Created:
    """Made, complete as it is: a hosted link session."""

    body: Any

    @property
    def kind(self) -> Kind:
        return Kind.CREATED


@dataclass(frozen=True, slots=True)
class Done:
    """Finished now: an unlink, or an account that needed none."""

    body: Any

    @property
    def kind(self) -> Kind:
        return Kind.DONE


@dataclass(frozen=True, slots=True)
class Rejected:
    """Refused once the request was under way (by Bakkt, mostly). `body` is the problem the
    consumer got, built once from the problem's class, so its replay is that same problem."""

    code: str
    body: dict[str, Any]

    @property
    def kind(self) -> Kind:
        return Kind.REJECTED

    @classmethod
    def of(cls, error: AppError, *, instance: str) -> Rejected:
        body = problem_body(
            status=error.status_code,
            code=error.code,
            title=error.title,
            detail=error.detail,
            instance=instance,
            extra=error.extra,
        )
        return cls(error.code, body)


# What is stored with a key and replayed.
Answer = Accepted | Created | Done | Rejected


@dataclass(frozen=True, slots=True)
class Replayed:
    """The stored answer of an earlier request with the same key and the same request."""

    answer: Answer


@dataclass(frozen=True, slots=True)
class InProgress:
    """Another request with this key is under way (or changing hands): ask again after
    `retry_after` seconds."""

    retry_after: int
    detail: str


# What an idempotent service call returns.
Result = Answer | Replayed | InProgress

_BY_KIND: dict[Kind, type[Accepted] | type[Created] | type[Done]] = {
    Kind.ACCEPTED: Accepted,
    Kind.CREATED: Created,
    Kind.DONE: Done,
}

# --- the shape before migration 0012 ------------------------------------------------------------
# Releases before 0012 stored the HTTP status they answered instead of a kind (one status per
# kind of success; a rejection's status is in its problem body) and read only that. Until a
# contract migration drops `response_status` (docs/operations.md, expand then contract), rows
# are written with both, and a row without a kind is read by its status.
_LEGACY_STATUS = {Kind.ACCEPTED: 202, Kind.CREATED: 201, Kind.DONE: 200}
_KIND_OF_LEGACY_STATUS = {status: kind for kind, status in _LEGACY_STATUS.items()}


def legacy_status(answer: Answer) -> int:
    """`response_status` for the release before this one (tests/funding/test_idempotency_answers
    pins it to what app/idempotency/http.py answers)."""
    if isinstance(answer, Rejected):
        return int(answer.body["status"])
    return _LEGACY_STATUS[answer.kind]


def stored(kind: str | None, legacy_status: int | None, body: Any) -> Answer | None:
    """The answer a finished key holds; None when it holds none. A row finished by a release
    before 0012 (a rolling deploy's old process, after the migration's backfill) has no kind:
    it is read by its status."""
    if kind is None:
        if legacy_status is None:
            return None
        kind = Kind.REJECTED if legacy_status >= 400 else _KIND_OF_LEGACY_STATUS[legacy_status]
    if kind == Kind.REJECTED:
        return Rejected(str(body.get("code", "")), body)
    return _BY_KIND[Kind(kind)](body)
