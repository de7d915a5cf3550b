"""The sandbox's log lines: JSON (or text), each with the `x-tracking-id` of the request it
serves as `request_id` (the id the service logs for the same consumer request) and the trace id
of its `traceparent`, so a partner's trace and the sandbox's lines line up.

Its own module, as the rest of the sandbox: it shares no code with the service. Inside
`fiat-onramp dev` the service's handler writes the lines; the record factory below still puts
the sandbox's ids on the sandbox's records.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

_tracking_id: ContextVar[str | None] = ContextVar("sandbox_tracking_id", default=None)
_trace_id: ContextVar[str | None] = ContextVar("sandbox_trace_id", default=None)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_FIELDS = ("request_id", "trace_id")
# One line per request: method, route template (never the path: it holds party refs), status.
access_log = logging.getLogger("bakkt_sandbox.access")


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    tracking = request.headers.get("x-tracking-id") or request.headers.get("x-request-id") or ""
    parent = _TRACEPARENT.match(request.headers.get("traceparent", "").strip().lower())
    tokens = (
        _tracking_id.set(tracking if _SAFE_ID.match(tracking) else None),
        _trace_id.set(parent.group(1) if parent else None),
    )
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = request.match_info.route.resource
        access_log.info(
            "%s %s %d %.1f ms",
            request.method,
            route.canonical if route is not None else "unmatched",
            status,
            (time.perf_counter() - started) * 1000,
        )
        _trace_id.reset(tokens[1])
        _tracking_id.reset(tokens[0])


_installed = False


def install_record_factory() -> None:
    """Records made while the sandbox serves a request carry its ids (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        tracking = _tracking_id.get()
        if tracking is not None and record.name.startswith("bakkt_sandbox"):
            record.request_id = tracking
            record.trace_id = _trace_id.get()
        return record

    logging.setLogRecordFactory(factory)


class _JsonLines(JsonFormatter):
    def __init__(self) -> None:
        super().__init__("%(message)s", reserved_attrs=[*RESERVED_ATTRS, *_FIELDS])

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = (
            datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        ).replace("+00:00", "Z")
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                log_data[name] = value
        super().add_fields(log_data, record, message_dict)


def configure(log_format: str, level: int = logging.INFO) -> None:
    """The standalone sandbox's logging (`fiat-onramp sandbox`)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(_JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
