"""One application error base, turned into RFC 9457 problem details by one set of handlers.

Services raise `AppError` subclasses, never `HTTPException`; the routers declare the errors they
return (`responses=problem_responses(...)`) so the OpenAPI document tells the truth.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.context import current_request_id

logger = logging.getLogger(__name__)

RETRY_AFTER = "Retry-After"

PROBLEM_JSON = "application/problem+json"


class AppError(Exception):
    """An error with a stable machine `code` that a client can switch on."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: int | None = None,
    ) -> None:
        self.detail = detail or self.title
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})
        # Services say when to come back in seconds; the header is this layer's business.
        if retry_after is not None:
            self.headers[RETRY_AFTER] = str(retry_after)
        super().__init__(self.detail)


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    title = "Not found"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"
    title = "Authentication required"


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"
    title = "Forbidden"


class Conflict(AppError):
    status_code = 409
    code = "conflict"
    title = "Conflict"


class Unprocessable(AppError):
    status_code = 422
    code = "unprocessable"
    title = "Unprocessable request"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"
    title = "Request body too large"


class ServiceUnavailable(AppError):
    status_code = 503
    code = "service_unavailable"
    title = "Service temporarily unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    title = "The database is not reachable; retry shortly"


class InvalidParam(BaseModel):
    name: str
    reason: str
    code: str = Field(description="Machine code of the failed check, e.g. `decimal_max_places`")


class Problem(BaseModel):
    """RFC 9457 problem details, plus the machine `code` and the request id."""

    type: str = Field(description="A URI naming the problem type")
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable machine-readable error code")
    instance: str | None = None
    request_id: str | None = Field(default=None, alias="requestId")
    errors: list[InvalidParam] | None = Field(
        default=None, description="The offending fields, for validation errors"
    )

    model_config = {"populate_by_name": True}


def problem_body(
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    instance: str | None = None,
    errors: Sequence[Mapping[str, str]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"https://fiat-onramp.dev/problems/{code.replace('_', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    request_id = current_request_id()
    if request_id:
        body["requestId"] = request_id
    if errors is not None:
        body["errors"] = [dict(e) for e in errors]
    if extra:
        body.update({k: v for k, v in extra.items() if k not in body})
    return body


def problem_response(
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    instance: str | None = None,
    errors: Sequence[Mapping[str, str]] | None = None,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        problem_body(
            status=status,
            code=code,
            title=title,
            detail=detail,
            instance=instance,
            errors=errors,
            extra=extra,
        ),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=dict(headers or {}),
    )


def problem_responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the errors a route can return."""
    by_status: dict[int, list[type[AppError]]] = {}
    for error in errors:
        by_status.setdefault(error.status_code, []).append(error)
    out: dict[int | str, dict[str, Any]] = {}
    for status, group in sorted(by_status.items()):
        codes = ", ".join(f"`{e.code}`" for e in group)
        out[status] = {
            "model": Problem,
            "description": f"Problem details; code: {codes}",
            "content": {PROBLEM_JSON: {}},
        }
    return out


def _location(loc: Sequence[int | str]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:] or parts
    return ".".join(parts)


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)  # noqa: S101 - registered for AppError only
    return problem_response(
        status=exc.status_code,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        instance=request.url.path,
        extra=exc.extra,
        headers=exc.headers,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    # Echoing rejected values could put a processor token or an account number into a
    # response body; only the location and the reason are returned.
    errors = [
        {
            "name": _location(err.get("loc", ())),
            "reason": str(err.get("msg", "invalid")),
            "code": str(err.get("type", "invalid")),
        }
        for err in exc.errors()
    ]
    return problem_response(
        status=422,
        code="validation_failed",
        title="The request is not valid",
        detail="; ".join(f"{e['name']}: {e['reason']}" for e in errors) or "invalid request",
        instance=request.url.path,
        errors=errors,
    )


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    detail = exc.detail if isinstance(exc.detail, str) else "HTTP error"
    return problem_response(
        status=exc.status_code,
        code=code,
        title=detail,
        detail=detail,
        instance=request.url.path,
        headers=getattr(exc, "headers", None),
    )


# SQLSTATE classes that mean the server or the connection went away: 08 connection exception,
# 57P operator intervention (admin shutdown, crash shutdown, cannot connect now).
# 08: connection exceptions; 57P: the server is shutting down or not yet accepting; 53: it is
# out of a resource (53300 too many connections, 53200 out of memory, 53100 disk full). Each is
# the server's condition, not the statement's fault: a retry later can succeed.
_UNAVAILABLE_SQLSTATES = ("08", "57P", "53")


def _raised_by_the_driver(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if "asyncpg" in filename or "sqlalchemy" in filename:
            return True
        tb = tb.tb_next
    return False


def is_database_unavailable(exc: BaseException) -> bool:
    """True when the error means Postgres cannot be reached, not that a statement was wrong."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = str(getattr(exc.orig, "sqlstate", "") or "")
        return sqlstate.startswith(_UNAVAILABLE_SQLSTATES)
    if isinstance(exc, asyncpg.PostgresError):
        # Raised bare by the code that uses asyncpg directly (and by asyncpg's connect).
        return str(exc.sqlstate or "").startswith(_UNAVAILABLE_SQLSTATES)
    # Refused, reset, timed out, or (a Unix-socket server that is down) FileNotFoundError from
    # the driver's connect; the same errors raised anywhere else are bugs, not an outage.
    return isinstance(exc, OSError) and _raised_by_the_driver(exc)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    if is_database_unavailable(exc):
        logger.warning("database unavailable while serving %s: %s", request.url.path, type(exc))
        return problem_response(
            status=DatabaseUnavailable.status_code,
            code=DatabaseUnavailable.code,
            title=DatabaseUnavailable.title,
            detail="The database is not reachable right now. Retry with the same Idempotency-Key.",
            instance=request.url.path,
            headers={RETRY_AFTER: "2"},
        )
    logger.exception("unhandled error serving %s", request.url.path)
    return problem_response(
        status=500,
        code="internal_error",
        title="Internal error",
        detail="An unexpected error occurred; it has been logged.",
        instance=request.url.path,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # A handler keyed on `Exception` runs in Starlette's outermost middleware, which re-raises
    # after answering: uvicorn then logs a traceback and closes the keep-alive connection, so the
    # client's next request on it gets no answer. Database outages are expected, not bugs: they
    # get handlers of their own, which answer and keep the connection.
    app.add_exception_handler(SQLAlchemyError, _unhandled)
    app.add_exception_handler(OSError, _unhandled)
    app.add_exception_handler(Exception, _unhandled)
