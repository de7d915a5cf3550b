"""HTTP only: the catch-up pages and the SSE stream of events (docs/events.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.dependencies import AdminScopeRequired, party_access, require_admin
from app.auth.tokens import (
    AuthenticationRequired,
    AuthKeysUnavailable,
    InvalidToken,
    Principal,
    TokenExpired,
)
from app.db import get_session
from app.errors import PROBLEM_JSON, AppError, DatabaseUnavailable, NotFound, problem_responses
from app.events import service
from app.events.hub import EventHub, EventStream
from app.events.schemas import CURSOR_DESCRIPTION, EventPage
from app.events.service import InvalidEventCursor
from app.funding.router import ValidationFailed

router = APIRouter(tags=["events"])

PartyRef = Annotated[str, Depends(party_access)]
Admin = Annotated[Principal, Depends(require_admin)]
Session = Annotated[AsyncSession, Depends(get_session)]
After = Annotated[
    str | None,
    Query(
        max_length=40,
        description="Return the events after this cursor; omitted: from the first event. "
        + CURSOR_DESCRIPTION,
    ),
]
Limit = Annotated[int, Query(ge=1, le=500, description="At most this many events (1-500).")]

_AUTH_ERRORS: tuple[type[AppError], ...] = (
    AuthenticationRequired,
    InvalidToken,
    TokenExpired,
    AuthKeysUnavailable,
)


def _responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    declared = problem_responses(*_AUTH_ERRORS, ValidationFailed, *errors)
    for status, entry in declared.items():
        entry["content"] = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        if status == 401:
            entry["headers"] = {
                "WWW-Authenticate": {
                    "description": "`Bearer`, with the error",
                    "schema": {"type": "string"},
                }
            }
    return declared


_PAGING = (
    "Events in their order, oldest first, `limit` at a time: keep the `next` of each page and "
    "pass it as `after`; `hasMore` says whether to ask again at once. A page never skips an "
    "event, even one whose database transaction committed after later ones (the order is given "
    "after commit). Each event comes once per page walk; deduplicate on `id` across walks."
)


@router.get(
    "/v1/events",
    response_model=EventPage,
    summary="Every party's events, for the partner's back end to catch up (admin scope)",
    description=_PAGING,
    responses=_responses(AdminScopeRequired, InvalidEventCursor),
)
async def list_events(
    _admin: Admin, session: Session, after: After = None, limit: Limit = 100
) -> JSONResponse:
    page = await service.read_page(session, after=after, limit=limit)
    # Built from the stored JSON without a second validation; EventPage documents it.
    return JSONResponse(page.json())


@router.get(
    "/v1/parties/{partyRef}/events",
    response_model=EventPage,
    summary="The party's events (the consumer's token; another party's path answers 404)",
    description=_PAGING,
    responses=_responses(NotFound, InvalidEventCursor),
)
async def list_party_events(
    party_ref: PartyRef, session: Session, after: After = None, limit: Limit = 100
) -> JSONResponse:
    page = await service.read_page(session, after=after, limit=limit, party_ref=party_ref)
    return JSONResponse(page.json())


_STREAM = (
    "Server-Sent Events of the party's events as they happen. Each message is `id: <cursor>`, "
    "`event: <type>`, `data: <the event's JSON>` (the same JSON as the pages). Resume after a "
    "drop with `Last-Event-ID: <the last id received>` (or `?after=`): no event is missed or "
    "repeated. Without either, the stream starts after the newest event. A `: heartbeat` "
    "comment comes every 15 s of silence. The stream ends cleanly when the service shuts down: "
    "reconnect with `Last-Event-ID`. Send the token as `Authorization: Bearer` (in a browser, "
    "read the stream with `fetch()`; `EventSource` cannot send headers)."
)


@router.get(
    "/v1/parties/{partyRef}/events/stream",
    response_class=StreamingResponse,
    summary="The party's events as a Server-Sent Events stream",
    description=_STREAM,
    responses={
        200: {
            "description": "The stream (never ends by itself before shutdown)",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": 'id: 42\nevent: transaction.completed\ndata: {"id":"evt_…",…}\n\n',
                }
            },
        },
        **_responses(NotFound, InvalidEventCursor, DatabaseUnavailable),
    },
)
async def stream_party_events(
    request: Request,
    party_ref: PartyRef,
    after: After = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=40,
            description="The `id` of the last message received: resume after it (wins over "
            "`after`).",
        ),
    ] = None,
) -> StreamingResponse:
    cursor = last_event_id if last_event_id is not None else after
    start = service.parse_cursor(cursor) if cursor else None
    state = request.app.state
    hub: EventHub = state.event_hub
    opened = EventStream(
        hub,
        state.event_reads,
        party_ref,
        heartbeat=state.settings.events_stream_heartbeat,
    )
    await opened.open(start)
    return StreamingResponse(
        opened.messages(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
