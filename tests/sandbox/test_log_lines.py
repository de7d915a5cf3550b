"""The standalone sandbox writes JSON lines that carry the service's tracking id."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from bakkt_sandbox import logs
from bakkt_sandbox.testing import running_sandbox


async def test_a_request_s_lines_carry_its_tracking_id_and_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with running_sandbox(time_scale=0, webhook_url="") as sandbox:
        with caplog.at_level(logging.INFO, logger="bakkt_sandbox.access"):
            async with httpx.AsyncClient(base_url=sandbox.base_url) as http:
                await http.post(
                    "/partner/v1/heartbeat",
                    json={"requestId": "r-1"},
                    headers={
                        "x-tracking-id": "track-0001",
                        "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
                    },
                )
    [record] = [r for r in caplog.records if r.name == "bakkt_sandbox.access"]
    assert record.request_id == "track-0001"  # type: ignore[attr-defined]
    assert record.trace_id == trace_id  # type: ignore[attr-defined]
    # No bearer token: the sandbox refuses it, and the line says so by route template.
    assert record.getMessage().startswith("POST /partner/v1/heartbeat 401 ")
    line = json.loads(logs._JsonLines().format(record))
    assert line["request_id"] == "track-0001"
    assert line["trace_id"] == trace_id
    assert line["logger"] == "bakkt_sandbox.access"
