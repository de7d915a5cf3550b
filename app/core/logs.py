"""The service's log lines: JSON (or plain text for development), redacted, one line each.

Every line carries the request id (the `X-Request-ID` answered, and the `x-tracking-id` sent to
Bakkt) and, while tracing is on, the trace and span ids, so one consumer request can be followed
through our lines, the traces and Bakkt's logs.

Two guards sit on the handler, so they apply to every logger's records, uvicorn's included:
- the redaction filter removes secrets, bearer tokens, JWTs, processor tokens and account
  numbers from the message, its arguments, the `extra` fields and the exception text, before
  any formatter sees them;
- messages carry values others chose (a signed webhook's `requestId`, a Bakkt reason text): a
  newline or other control character in one would start a forged line in a text log, so the
  text format escapes them. JSON escapes them by itself; tracebacks, ours, keep their lines in
  the text format.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from app.core.context import current_request_id

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
REDACTED = "[REDACTED]"
_CACHED_LENGTH = 160

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# Field names whose value is secret wherever it appears: in an `extra` mapping, in a logged
# dict, or as `name=value` / `"name": "value"` in a message.
_SECRET_KEYS = (
    "authorization",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "clientSecret",
    "token",
    "access_token",
    "accessToken",
    "refresh_token",
    "processor_token",
    "processorToken",
    "account_number",
    "accountNumber",
    "webhook_static_token",
    "x-webhook-token",
    "api_key",
    "apiKey",
)
_SECRET_KEY_SET = frozenset(k.lower() for k in _SECRET_KEYS)

# One alternation, one pass over each text. Order matters only where two could match at the
# same place (a bearer header before the JWT inside it).
_PATTERNS = re.compile(
    "|".join(
        (
            # `Authorization: Bearer <token>` and `Basic <credentials>`.
            r"(?P<scheme>\b(?:[Bb]earer|[Bb]asic)\s+)[A-Za-z0-9._~+/=-]{8,}",
            # A JWT anywhere (three base64url parts, the first a JSON header).
            r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
            # Plaid processor tokens (`processor-sandbox-…`, `processor-production-…`).
            r"\bprocessor-[A-Za-z0-9_-]+",
            # Standard Webhooks secrets.
            r"\bwhsec_[A-Za-z0-9+/=]+",
            # `key=value`, `key: value`, `"key": "value"` for the secret field names.
            r"(?P<key>(?i:\b(?:"
            + "|".join(re.escape(k) for k in _SECRET_KEYS)
            + r"))[\"']?\s*[:=]\s*[\"']?)(?:(?:[Bb]earer|[Bb]asic)\s+)?[^\s\"',;&}\]]+",
            # A password inside a URL (`postgresql://user:secret@host`).
            r"(?P<userinfo>://[^/\s:@]+:)[^/\s@]+(?=@)",
            # Account numbers: a run of 8 to 17 digits standing alone (not inside a word, a
            # UUID, a decimal or a path); the last 4 stay, as on a bank statement.
            r"(?<![\w.\-/])(?P<digits>\d{4,13})(?P<last4>\d{4})(?![\w.\-])",
        )
    )
)


def _replace(match: re.Match[str]) -> str:
    if match.group("scheme"):
        return match.group("scheme") + REDACTED
    if match.group("key"):
        return match.group("key") + REDACTED
    if match.group("userinfo"):
        return match.group("userinfo") + REDACTED
    if match.group("last4"):
        return "*" * 4 + match.group("last4")
    return REDACTED


class Redactor:
    """Removes secrets from text: by shape (the patterns above) and by value (the settings'
    own secrets, registered at start)."""

    def __init__(self) -> None:
        self._known: set[str] = set()
        self._values: re.Pattern[str] | None = None
        # Most texts repeat (a route template, a method, an access line's start): one regex
        # pass each, not one per record.
        self._cached = functools.lru_cache(maxsize=4096)(self._text)

    def add_secrets(self, values: Iterable[str | None]) -> None:
        # Short values would blank ordinary words; settings refuse secrets that short in
        # production anyway.
        self._known |= {v for v in values if v and len(v) >= 8}
        # Longest first, so a secret that contains another is removed whole.
        known = sorted(self._known, key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, known))) if known else None
        self._cached.cache_clear()

    def text(self, value: str) -> str:
        return self._cached(value) if len(value) <= _CACHED_LENGTH else self._text(value)

    def _text(self, value: str) -> str:
        if self._values is not None:
            value = self._values.sub(REDACTED, value)
        return _PATTERNS.sub(_replace, value)

    def value(self, value: Any, depth: int = 0) -> Any:
        """An `extra` field's value, redacted; containers are walked a few levels deep."""
        if isinstance(value, str):
            return self.text(value)
        if depth > 4 or isinstance(value, bool | int | float) or value is None:
            return value
        if isinstance(value, Mapping):
            return {
                k: REDACTED
                if isinstance(k, str) and k.lower() in _SECRET_KEY_SET
                else self.value(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v, depth + 1) for v in value]
        return self.text(str(value))


REDACTOR = Redactor()


def register_secrets(values: Iterable[str | None]) -> None:
    """Values that must never be written, whatever their shape (the settings' secrets)."""
    REDACTOR.add_secrets(values)


# Set by the filters below, written by the formatters in their own places.
_OWN_FIELDS = ("request_id", "trace_id", "span_id", "_redacted")
# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    *_OWN_FIELDS,
}


class RedactionFilter(logging.Filter):
    """On the handler: the record leaves with its message formatted and redacted, its `extra`
    fields redacted, and its exception text rendered and redacted."""

    def __init__(self, redactor: Redactor = REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_redacted", False):
            return True
        redact = self.redactor
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = redact.text(message)
        record.args = None
        for name, value in list(record.__dict__.items()):
            if name not in _RECORD_FIELDS and not name.startswith("_"):
                if name.lower() in _SECRET_KEY_SET:
                    setattr(record, name, REDACTED)
                else:
                    setattr(record, name, redact.value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact.text(record.exc_text)
            # Rendered once, here: formatters use the redacted text, not the live exception.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact.text(record.stack_info)
        record._redacted = True
        return True


class ContextFilter(logging.Filter):
    """Adds `request_id`, and `trace_id` / `span_id` while a span is recording."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id()
        if getattr(record, "trace_id", None) is None:
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                record.trace_id = format(context.trace_id, "032x")
                record.span_id = format(context.span_id, "016x")
            else:
                record.trace_id = None
                record.span_id = None
        return True


def process_context_filter() -> ContextFilter:
    """The dictConfig's context filter. dictConfig runs in every process (each uvicorn worker
    applies it): the records are made lean there too."""
    lean_records()
    return ContextFilter()


def escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: _NAMED.get(m[0]) or f"\\x{ord(m[0]):02x}", text)


class EscapingFormatter(logging.Formatter):
    """The plain format of `LOG_FORMAT=text`: one line per record, the request id appended."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", None)
        if request_id:
            line += f" [{escape_controls(str(request_id))}]"
        return line


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: `time` (UTC, ISO 8601), `level`, `logger`, `pid`, `message`,
    `request_id`, `trace_id` and `span_id` when known, then the record's `extra` fields and
    `exc_info`."""

    def __init__(self) -> None:
        super().__init__(
            "%(message)s",
            reserved_attrs=[*RESERVED_ATTRS, *_OWN_FIELDS],
            json_ensure_ascii=False,
        )

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        log_data["time"] = (
            datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        ).replace("+00:00", "Z")
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        # Which process: with `serve --workers N` the lines of N workers interleave.
        log_data["pid"] = record.process
        for name in ("request_id", "trace_id", "span_id"):
            value = getattr(record, name, None)
            if value is not None:
                log_data[name] = value
        super().add_fields(log_data, record, message_dict)


def log_formatter(log_format: str = "text") -> logging.Formatter:
    if log_format == "json":
        return JsonLineFormatter()
    return EscapingFormatter(LOG_FORMAT)


def json_formatter() -> logging.Formatter:
    return JsonLineFormatter()


def text_formatter() -> logging.Formatter:
    return EscapingFormatter(LOG_FORMAT)


def log_config(level: str, log_format: str) -> dict[str, Any]:
    """`logging.config.dictConfig` for every process: the CLI's, and each uvicorn worker's
    (uvicorn applies it in each of them). uvicorn's own loggers hand their records to the root
    handler, so they come out in the same format through the same filters; its access log is
    off (the service writes its own access line, with the route template)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": "app.core.logs.process_context_filter"},
            "redact": {"()": "app.core.logs.RedactionFilter"},
        },
        "formatters": {
            "main": {"()": f"app.core.logs.{log_format}_formatter"},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "main",
                "filters": ["context", "redact"],
            }
        },
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.error": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
        },
        "root": {"level": level, "handlers": ["stderr"]},
    }


def configure_logging(level: str, log_format: str) -> None:
    import logging.config

    logging.config.dictConfig(log_config(level, log_format))


def lean_records() -> None:
    """Records without what no line of ours prints: the caller's file and line (a stack walk
    per record), the thread's and the multiprocessing process's names (logging's own
    optimization switches, see its HOWTO). The process id stays: JSON lines carry it."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False


def guarded_handler(log_format: str, stream: Any = None) -> logging.Handler:
    """A handler with the service's filters and formatter (the tests capture through one)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(log_formatter(log_format))
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactionFilter())
    return handler
