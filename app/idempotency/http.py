"""The HTTP side of idempotency: the header names, and a service's answer as a response.

The services say what happened (`app/idempotency/answers.py`); this is the one place that picks
the status, the headers and the media type, so the routers speak HTTP and nothing below them
does.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from app.errors import PROBLEM_JSON
from app.idempotency.answers import (
    Accepted,
    Answer,
    Created,
    Done,
    InProgress,
    Rejected,
    Replayed,
    Result,
)
from app.idempotency.service import IdempotencyRequestInProgress

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"


def status_of(answer: Answer) -> int:
    match answer:
        case Accepted():
            return 202
        case Created():
            return 201
        case Done():
            return 200
        case Rejected(body=body):
            # The problem was built from its class's status; a replay answers that status even
            # if a later release gives the code another one.
            return int(body["status"])


def render(result: Result) -> JSONResponse:
    if isinstance(result, InProgress):
        # The one problem here that is not stored: the error handler renders it like any other.
        raise IdempotencyRequestInProgress(result.detail, retry_after=result.retry_after)
    answer = result.answer if isinstance(result, Replayed) else result
    headers = {REPLAYED_HEADER: "true"} if isinstance(result, Replayed) else {}
    media_type = PROBLEM_JSON if isinstance(answer, Rejected) else "application/json"
    return JSONResponse(
        answer.body, status_code=status_of(answer), headers=headers, media_type=media_type
    )
