"""Serving the sandbox: blocking for the CLI, or inside a running event loop.

aiohttp.web rather than an ASGI server: accept-then-drop must close a connection after the
transfer is recorded without sending a byte, which ASGI cannot express.
"""

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from bakkt_sandbox import control_api, link_page, logs, partner_api
from bakkt_sandbox.config import SandboxSettings
from bakkt_sandbox.runtime import SANDBOX, Sandbox

log = logging.getLogger("bakkt_sandbox")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081


async def _background(app: web.Application) -> AsyncIterator[None]:
    sandbox = app[SANDBOX]
    await sandbox.webhooks.start()
    tasks = [asyncio.create_task(sandbox.bank.run_timers())]
    if sandbox.store is not None:
        tasks.append(asyncio.create_task(sandbox.store.run(sandbox)))
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await sandbox.webhooks.stop()
    if sandbox.store is not None:
        # After everything has stopped, so nothing changes the state behind the last save.
        sandbox.store.save(sandbox)
        log.info("Bakkt sandbox state saved to %s", sandbox.store.path)


@web.middleware
async def _count_changes(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    finally:
        # Any request may change state (even a GET creates a party on first use): the state
        # store compares this counter instead of the whole state.
        request.app[SANDBOX].bank.revision += 1


async def _release_held_requests(app: web.Application) -> None:
    app[SANDBOX].closing.set()


def create_app(settings: SandboxSettings | None = None) -> web.Application:
    sandbox = Sandbox(settings or SandboxSettings())
    logs.install_record_factory()
    app = web.Application(
        middlewares=[logs.request_context, _count_changes, partner_api.partner_middleware]
    )
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


async def _serve_until_signalled(host: str, port: int, settings: SandboxSettings | None) -> None:
    # SIGTERM and SIGINT end the wait, so the shutdown (and its last snapshot) runs in order;
    # a signal turned into an exception could instead land anywhere, even inside a save.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows, non-main thread
            loop.add_signal_handler(sig, stop.set)
    async with SandboxServer(settings, host, port):
        await stop.wait()


def run(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, settings: SandboxSettings | None = None
) -> None:
    """Run the sandbox until SIGTERM or Ctrl-C (the `fiat-onramp sandbox` command)."""
    logs.configure((settings or SandboxSettings()).log_format)
    try:
        import uvloop  # optional: comes with uvicorn[standard], absent on Windows

        runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(_serve_until_signalled(host, port, settings))
