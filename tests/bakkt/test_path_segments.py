"""Every value the client puts in a Bakkt path stays one segment on the wire: `/`, `?`, `#`
and `%` cannot split or end the path, and `.` or `..` are never sent (they would walk up to
another endpoint).

Checked on the request line the transport really sends (a bare TCP listener records it), for
both transports, since httpx and aiohttp each normalize URLs their own way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from app.bakkt import BakktClient, BakktConfig
from app.bakkt.client import path_segment
from app.bakkt.errors import BakktError, BakktUnsendable


class RequestLines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *headers = head.decode("latin-1").split("\r\n")
        length = next(
            (int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length")),
            0,
        )
        if length:
            await reader.readexactly(length)
        self.lines.append(line)
        if "/oauth2/token" in line:
            status, body = "200 OK", {"accessToken": "t", "expiresIn": 3600}
        else:
            status, body = "404 Not Found", {"type": "NOT_FOUND", "description": "no such party"}
        payload = json.dumps(body).encode()
        writer.write(
            f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def listener() -> AsyncIterator[tuple[RequestLines, str]]:
    seen = RequestLines()
    server = await asyncio.start_server(seen.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield seen, f"http://127.0.0.1:{port}"


def _config(base_url: str, transport: str) -> BakktConfig:
    return BakktConfig(
        base_url=base_url,
        partner_id="p-1",
        client_id="c",
        client_secret=SecretStr("s"),
        transport=transport,
        max_attempts=1,
    )


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("party_ref", ["a/../..", "a?b#c", "50%", "...", "a/."])
async def test_a_party_ref_toward_bakkt_is_one_percent_encoded_segment(
    listener: tuple[RequestLines, str], transport: str, party_ref: str
) -> None:
    seen, base_url = listener
    async with BakktClient(_config(base_url, transport)) as client:
        with pytest.raises(BakktError):
            await client.wire_instructions(party_ref)
    [line] = [x for x in seen.lines if "oauth2" not in x]
    assert line == (
        f"GET /partner/v1/partner/p-1/party/{path_segment(party_ref)}/wire-instructions HTTP/1.1"
    )


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("party_ref", ["..", "."])
async def test_a_dot_segment_party_ref_never_reaches_bakkt(
    listener: tuple[RequestLines, str], transport: str, party_ref: str
) -> None:
    # yarl decodes `%2E` and resolves the segment, so no spelling of `..` is safe to send.
    seen, base_url = listener
    async with BakktClient(_config(base_url, transport)) as client:
        with pytest.raises(BakktUnsendable):
            await client.wire_instructions(party_ref)
        with pytest.raises(BakktUnsendable):
            await client.get_transaction("alice", party_ref)
    assert seen.lines == []
