"""The HTTP side of idempotency: the header names, and an answer (new or replayed) as a response.

The services decide and store what a request answers; this is the one place that turns it into
status, headers and body, so the routers speak HTTP and nothing below them does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from app.errors import PROBLEM_JSON

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True, slots=True)
class IdempotentResponse:
    """What an idempotent request answers: new, or the stored answer again (`replayed`)."""

    status: int
    body: Any
    replayed: bool = False


def render(answer: IdempotentResponse) -> JSONResponse:
    headers = {REPLAYED_HEADER: "true"} if answer.replayed else {}
    media_type = PROBLEM_JSON if answer.status >= 400 else "application/json"
    return JSONResponse(
        answer.body, status_code=answer.status, headers=headers, media_type=media_type
    )
