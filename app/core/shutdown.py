"""What a termination signal starts at once, before uvicorn's own graceful shutdown.

uvicorn answers SIGTERM by closing its listeners and waiting for every open connection to end,
and only then runs the lifespan's shutdown. Whatever must happen at the signal itself cannot
wait for that: an event stream never ends on its own (its connection would hold the shutdown
until the timeout), and workers should take no new claim while requests drain. The lifespan
registers a callback here and the server calls `terminate()` from its signal handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PROBLEM_JSON, problem_body

_callbacks: list[Callable[[], None]] = []


def on_terminate(callback: Callable[[], None]) -> Callable[[], None]:
    """Run `callback` at the termination signal; returns the function that unregisters it.

    It runs inside a signal handler: it must only hand work to the event loop
    (`loop.call_soon_threadsafe`), never touch the loop's objects itself.
    """
    _callbacks.append(callback)

    def unregister() -> None:
        with contextlib.suppress(ValueError):
            _callbacks.remove(callback)

    return unregister


def terminate() -> None:
    for callback in list(_callbacks):
        callback()


class ShutdownCutMiddleware:
    """A request still running when SHUTDOWN_TIMEOUT runs out is cancelled by uvicorn, which
    then answers a plain-text 500. Here it gets what it is: a 503 problem with Retry-After,
    whose retry with the same Idempotency-Key another process resumes (docs/recovery.md)."""

    def __init__(self, app: ASGIApp, draining: asyncio.Event) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if started or not self.draining.is_set():
                raise
            task = asyncio.current_task()
            if task is not None:
                # The cancellation has done its work: this request ends here, answered.
                task.uncancel()
            await _cut(send)


async def _cut(send: Send) -> None:
    body = json.dumps(
        problem_body(
            status=503,
            code="shutting_down",
            title="The service stopped before the request finished",
            detail="This instance shut down while the request was in progress. Send it again "
            "with the same Idempotency-Key: another instance resumes it where it stopped.",
        )
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
