"""How uvicorn runs the service: which proxies are believed, and bounds on request headers.

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

import functools
import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.config import Settings
from app.core.logs import log_config

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
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": list(settings.forwarded_allow_ips) or [],
        # The service writes its own access line (route template, status, duration, request
        # id); uvicorn's would add the raw path and query string.
        "access_log": False,
        "log_level": settings.log_level.lower(),
        # Applied by uvicorn in every worker process too, which do not inherit ours.
        "log_config": log_config(settings.log_level.upper(), settings.resolved_log_format),
    }
