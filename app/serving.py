"""How uvicorn runs the service: which proxies are believed, bounds on request headers, the
graceful stop at SIGTERM, the internal listener, and worker processes.

uvicorn's httptools protocol has no header limit of its own: httptools concatenates a header's
bytes until the header ends, so a 64 MB header is held in memory whole and 20,000 headers become
20,000 tuples before the application sees the request. The protocol below counts the bytes of
each request's head as they arrive and feeds the parser no more than the limit allows, and
counts headers as they are parsed; past either bound the connection is answered 431 and closed.
h11 bounds the head too (`h11_max_incomplete_event_size`), but has no header count and costs
about 1.7 times the CPU per request (docs/configuration.md has the figures). Bodies are fed
to the parser as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import math
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.config import Settings
from app.core import shutdown
from app.core.logs import log_config
from app.startup import ConfigError

logger = logging.getLogger("app.serving")

# After a 431 the rest of the head is read and dropped for a while before the socket closes:
# closing with unread bytes makes the kernel send RST, which can destroy the 431 before the
# client reads it (the "lingering close" of nginx and Apache).
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 1024 * 1024


class _HeaderLimitExceeded(Exception):
    """Raised inside a parser callback so that httptools stops at once."""


class HeaderLimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, max_head_bytes: int, max_headers: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        # A fresh connection is reading a head: every byte before the blank line counts.
        self._reading_head = True
        self._head_bytes = 0
        self._head_count = 0
        self._refusal: str | None = None
        self._lingering = False
        self._discarded = 0

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._discarded += len(data)
            if self._discarded > LINGER_MAX_BYTES:
                self.transport.close()
            return
        if not self._reading_head:
            super().data_received(data)
            return
        room = self.max_head_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # One byte past the limit: if the head has not ended by then, it is too large. What
        # follows the head in the same read (a body, a pipelined request) is fed on its own.
        head, rest = data[: room + 1], data[room + 1 :]
        self._head_bytes += len(head)
        super().data_received(head)
        if self.transport.is_closing():
            return
        if self._reading_head:
            self._refuse("the request's header block is larger than the limit")
            return
        if rest:
            self.data_received(rest)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_bytes = 0
        self._head_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count > self.max_headers:
            self._refusal = "the request has more headers than the limit"
            raise _HeaderLimitExceeded
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers any parser error 400; one raised by the header count is a 431.
        if self._refusal is not None:
            self._refuse(self._refusal)
            return
        super().send_400_response(msg)

    def _refuse(self, reason: str) -> None:
        client = "%s:%d" % self.client if self.client else "unknown client"  # noqa: UP031
        logger.warning("431 to %s: %s", client, reason)
        body = b"Request Header Fields Too Large"
        content = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self._reading_head = False
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def eof_received(self) -> None:
        if self._lingering:
            self.transport.close()
            return
        super().eof_received()


def header_limited_protocol(
    max_head_bytes: int, max_headers: int
) -> Callable[..., HeaderLimitedHttpToolsProtocol]:
    # A partial of a module-level class, not a class made at run time: uvicorn pickles its
    # config into each worker process when it runs more than one.
    return functools.partial(
        HeaderLimitedHttpToolsProtocol, max_head_bytes=max_head_bytes, max_headers=max_headers
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config`, the same for `serve` and `dev`."""
    return {
        "http": header_limited_protocol(
            settings.max_request_header_bytes, settings.max_request_headers
        ),
        # uvicorn reads FORWARDED_ALLOW_IPS from the environment by itself and otherwise trusts
        # 127.0.0.1; both are replaced by the setting, and an empty one turns the headers off.
        "timeout_keep_alive": settings.http_keep_alive_timeout,
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": list(settings.forwarded_allow_ips) or [],
        # The service writes its own access line (route template, status, duration, request
        # id); uvicorn's would add the raw path and query string.
        "access_log": False,
        "log_level": settings.log_level.lower(),
        # Applied by uvicorn in every worker process too, which do not inherit ours.
        "log_config": log_config(settings.log_level.upper(), settings.resolved_log_format),
    }


# --- running it: graceful shutdown, the internal listener, worker processes ------------------


class _QuietSignalsServer(uvicorn.Server):
    """A server inside another one's process: the outer server owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ServiceServer(uvicorn.Server):
    """uvicorn's server, plus what the service needs at SIGTERM and beside the public port.

    - At the signal itself (not after the connections drained) the termination callbacks run:
      `app.state.draining` is set, so event streams end and their connections can close, and
      the workers take no new claim (app/core/shutdown.py). uvicorn then stops accepting,
      lets requests in flight finish within `SHUTDOWN_TIMEOUT`, cancels the rest, and runs
      the lifespan's shutdown.
    - uvicorn re-raises a signal it handled once it is done, so that the process dies of it;
      here a graceful stop is a normal exit with status 0.
    - With `internal`, a second listener (INTERNAL_PORT) starts once the app has started and
      stops after it has shut down: metrics and liveness stay answerable during the drain,
      while /readyz says `draining`.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        internal: uvicorn.Config | None = None,
        internal_sockets: list[socket.socket] | None = None,
    ) -> None:
        super().__init__(config)
        self.internal = _QuietSignalsServer(internal) if internal is not None else None
        self._internal_sockets = internal_sockets
        self._internal_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            shutdown.terminate()
            if self._loop is not None:
                # Logged from the loop: a signal handler may interrupt a write to the same log.
                self._loop.call_soon_threadsafe(
                    logger.info, "%s: draining", signal.Signals(sig).name
                )
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        # Known from the moment signals are ours, not only once started: a SIGTERM during the
        # start-up (a second worker still importing) is logged from the loop all the same.
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        # What start-up built (modules, the app, its routes and schemas, the ORM's mappers)
        # lives as long as the process: frozen, the cyclic collector's full passes stop
        # walking it. Measured by the lead over one benchmark run: 42 full collections of
        # ~110 ms each (4.9 s, each a stall of every request in flight) became ~6-10 ms each
        # (0.67 s in all).
        gc.collect()
        gc.freeze()
        if self.internal is not None and self.started and not self.should_exit:
            self._internal_task = asyncio.create_task(
                self.internal.serve(self._internal_sockets), name="internal-listener"
            )

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets=sockets)
        if self.internal is not None and self._internal_task is not None:
            self.internal.should_exit = True
            await self._internal_task


_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def server_configs(
    settings: Settings,
    app: Any,
    *,
    host: str,
    port: int,
    workers: int = 1,
    log_config: dict[str, Any] | None = None,
) -> tuple[uvicorn.Config, uvicorn.Config | None]:
    """The public listener's config and, with INTERNAL_PORT, the internal one's. `app` is the
    app, or an import string of its factory (several workers build their own)."""
    if settings.internal_port is not None and settings.internal_port == port:
        raise ConfigError(f"INTERNAL_PORT {port} is the public port too: pick another one")
    options = uvicorn_options(settings)
    if log_config is not None:
        options["log_config"] = log_config
    factory = isinstance(app, str)
    public = uvicorn.Config(
        app,
        factory=factory,
        host=host,
        port=port,
        workers=workers,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
        **options,
    )
    if settings.internal_port is None:
        return public, None
    internal = uvicorn.Config(
        _INTERNAL_FACTORY if factory else app.state.internal_app,
        factory=factory,
        host=settings.internal_host or host,
        port=settings.internal_port,
        lifespan="off",
        timeout_graceful_shutdown=1,
        **options,
    )
    return public, internal


_INTERNAL_FACTORY = "app.serving:_internal_app_of_this_process"


def _internal_app_of_this_process() -> Any:
    """In a worker process: the internal listener serves the app this process built."""
    if _PROCESS_APP is None:
        raise RuntimeError("the internal listener started before the service's app")
    return _PROCESS_APP.state.internal_app


_PROCESS_APP: Any = None


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int = 1,
    log_config: dict[str, Any] | None = None,
) -> int:
    """`fiat-onramp serve`: until SIGTERM or SIGINT, then a graceful stop; the exit status."""
    if workers <= 1:
        from app.main import create_app

        public, internal = server_configs(
            settings, create_app(settings), host=host, port=port, log_config=log_config
        )
        server = ServiceServer(public, internal)
        server.run()
        return 0 if server.started else STARTUP_FAILURE
    public, internal = server_configs(
        settings, _FACTORY, host=host, port=port, workers=workers, log_config=log_config
    )
    return Supervisor(public, internal, workers).run()


_FACTORY = "app.serving:_worker_app"


def _worker_app() -> Any:
    """The app factory of each worker process (it keeps the app for the internal listener)."""
    global _PROCESS_APP
    from app.main import create_app

    _PROCESS_APP = create_app()
    return _PROCESS_APP


def _run_worker(
    public: uvicorn.Config, internal: uvicorn.Config | None, sockets: list[socket.socket]
) -> None:
    public.configure_logging()
    server = ServiceServer(public, internal, internal_sockets=sockets[1:] or None)
    server.run(sockets=sockets[:1])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class Supervisor:
    """`serve --workers N`: N worker processes on shared sockets, each a ServiceServer.

    uvicorn's own supervisor runs uvicorn's plain server in its workers, which would end event
    streams only at the shutdown timeout and has no internal listener. This one forwards
    SIGTERM and SIGINT to every worker and waits for their graceful stops; a worker that dies
    is started again, unless it failed at start-up (the same would happen to the next).
    """

    def __init__(self, public: uvicorn.Config, internal: uvicorn.Config | None, workers: int):
        self.public = public
        self.internal = internal
        self.workers = workers
        self.sockets = [public.bind_socket()]
        if internal is not None:
            self.sockets.append(internal.bind_socket())
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self._stop = threading.Event()
        self._signals: list[int] = []

    def _spawn(self) -> multiprocessing.process.BaseProcess:
        process = _SPAWN.Process(
            target=_run_worker, args=(self.public, self.internal, self.sockets), daemon=False
        )
        process.start()
        return process

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:  # noqa: ARG002
        self._signals.append(sig)
        self._stop.set()

    def run(self) -> int:
        original = {sig: signal.signal(sig, self._on_signal) for sig in _HANDLED_SIGNALS}
        try:
            self.processes = [self._spawn() for _ in range(self.workers)]
            status = self._watch()
            forwarded = signal.SIGTERM if not self._signals else self._signals[0]
            for process in self.processes:
                if process.is_alive() and process.pid is not None:
                    os.kill(process.pid, forwarded)
            for process in self.processes:
                process.join()
            if status == 0 and any(p.exitcode not in (0, None) for p in self.processes):
                status = 1
            return status
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
            for sock in self.sockets:
                sock.close()

    def _watch(self) -> int:
        while not self._stop.wait(0.5):
            for index, process in enumerate(self.processes):
                if process.is_alive():
                    continue
                process.join()
                if process.exitcode == STARTUP_FAILURE:
                    logger.error("worker %s failed to start; stopping", process.pid)
                    return STARTUP_FAILURE
                logger.warning(
                    "worker %s exited (%s); starting another", process.pid, process.exitcode
                )
                self.processes[index] = self._spawn()
        return 0


_SPAWN = multiprocessing.get_context("spawn")
