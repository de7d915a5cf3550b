"""Serving the sandbox: blocking for the CLI, or inside a running event loop.

aiohttp.web rather than an ASGI server: accept-then-drop must close a connection after the
transfer is recorded without sending a byte, which ASGI cannot express.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any

from aiohttp import web

from bakkt_sandbox import control_api, link_page, partner_api
from bakkt_sandbox.config import SandboxSettings
from bakkt_sandbox.runtime import SANDBOX, Sandbox

log = logging.getLogger("bakkt_sandbox")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081


async def _background(app: web.Application) -> AsyncIterator[None]:
    sandbox = app[SANDBOX]
    await sandbox.webhooks.start()
    timers = asyncio.create_task(sandbox.bank.run_timers())
    yield
    timers.cancel()
    await asyncio.gather(timers, return_exceptions=True)
    await sandbox.webhooks.stop()


async def _release_held_requests(app: web.Application) -> None:
    app[SANDBOX].closing.set()


def create_app(settings: SandboxSettings | None = None) -> web.Application:
    sandbox = Sandbox(settings or SandboxSettings())
    app = web.Application(middlewares=[partner_api.partner_middleware])
    app[SANDBOX] = sandbox
    partner_api.add_routes(app)
    control_api.add_routes(app)
    link_page.add_routes(app)
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_release_held_requests)
    return app


class SandboxServer:
    """The sandbox listening on a TCP port of the current event loop (port 0: an ephemeral one).

    async with SandboxServer(settings, port=0) as server:
        print(server.base_url)
    """

    def __init__(
        self,
        settings: SandboxSettings | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
    ) -> None:
        self.app = create_app(settings)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def sandbox(self) -> Sandbox:
        return self.app[SANDBOX]

    @property
    def settings(self) -> SandboxSettings:
        return self.sandbox.settings

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        server = site._server  # aiohttp exposes the bound port only here
        if server is not None and self.port == 0:
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1])
        log.info("Bakkt sandbox listening on %s", self.base_url)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> "SandboxServer":
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, settings: SandboxSettings | None = None
) -> None:
    """Run the sandbox in the current event loop until the task is cancelled."""
    async with SandboxServer(settings, host, port):
        await asyncio.Event().wait()


def run(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, settings: SandboxSettings | None = None
) -> None:
    """Run the sandbox until interrupted (the `fiat-onramp sandbox` command)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        import uvloop  # optional: comes with uvicorn[standard], absent on Windows

        runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(host, port, settings))
