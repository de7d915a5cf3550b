"""`python -m tests.protect.serve_with_stream serve --port P`: `fiat-onramp serve`, its app with
one more route, `GET /test/stream`, a response that never ends on its own and ends when the app
drains (what the event stream of issue 15 does), so the shutdown tests can hold one open."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

import app.main
from app.cli import main

_create_app = app.main.create_app


def create_app_with_stream(*args: Any, **kwargs: Any) -> FastAPI:
    service = _create_app(*args, **kwargs)

    async def stream(request: Request) -> StreamingResponse:
        draining: asyncio.Event = request.app.state.draining

        async def lines() -> AsyncIterator[bytes]:
            yield b"open\n"
            while not draining.is_set():
                try:
                    await asyncio.wait_for(draining.wait(), timeout=1.0)
                except TimeoutError:
                    yield b"tick\n"
            yield b"bye\n"

        return StreamingResponse(lines(), media_type="text/plain")

    service.add_api_route("/test/stream", stream, methods=["GET"], include_in_schema=False)
    return service


if __name__ == "__main__":
    app.main.create_app = create_app_with_stream
    sys.exit(main(sys.argv[1:]))
