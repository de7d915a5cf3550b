"""A log line is one line: values others chose cannot forge another one."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import httpx
import pytest

from app.config import Settings
from app.core.logs import escape_controls, guarded_handler, log_formatter
from app.serving import uvicorn_options
from tests.webhooks.events import T0, URL, encode, party_event, signed_headers

LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ app")


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """What the service's own formatter writes for the `app` loggers."""
    out = io.StringIO()
    handler = guarded_handler("text", out)
    logger = logging.getLogger("app")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_a_signed_request_id_with_a_newline_cannot_forge_a_log_line(
    client: httpx.AsyncClient, written: io.StringIO
) -> None:
    forged = "evt-nl\n2026-12-01 00:00:00,000 CRITICAL app.auth admin token issued\r\u2028x"
    event = party_event(forged, party="p-log", status="ACTIVE", reason="OK", at=T0)
    body = encode(event)
    answer = await client.post(URL, content=body, headers=signed_headers(body, msg_id="evt-nl"))
    assert answer.status_code == 200
    lines = written.getvalue().splitlines()
    assert lines
    assert all(LINE_START.match(line) for line in lines), lines
    assert any("evt-nl\\n2026-12-01" in line for line in lines)


def test_control_characters_are_escaped_and_tracebacks_keep_their_lines() -> None:
    assert escape_controls("a\nb\rc\td\x00e\x7f\u2028") == "a\\nb\\rc\\td\\x00e\\x7f\\x2028"
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("app.x", logging.ERROR, __file__, 1, "m\n%s", ("v",), None)
        import sys

        record.exc_info = sys.exc_info()
    text = log_formatter().format(record)
    assert text.splitlines()[0].endswith("m\\nv")
    assert "Traceback" in text.splitlines()[1]


def test_every_uvicorn_process_logs_through_the_same_filters_and_formatter(
    settings: Settings,
) -> None:
    for log_format in ("json", "text"):
        config = uvicorn_options(settings.model_copy(update={"log_format": log_format}))[
            "log_config"
        ]
        assert config["formatters"]["main"]["()"] == f"app.core.logs.{log_format}_formatter"
        assert config["handlers"]["stderr"]["filters"] == ["context", "redact"]
        # uvicorn's own records reach the root handler; its access log is ours instead.
        assert config["loggers"]["uvicorn.error"] == {
            "handlers": [],
            "propagate": True,
            "level": settings.log_level.upper(),
        }
        assert config["loggers"]["uvicorn.access"]["propagate"] is False
