"""The service's one log line format, and why a line is always one line.

Messages carry values others chose (a signed webhook's `requestId`, a Bakkt reason text). A
newline or other control character in one of them would start a forged line in the log, so
every message is escaped before it is written. Tracebacks, which are ours, keep their lines.
"""

from __future__ import annotations

import logging
import re

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: _NAMED.get(m[0]) or f"\\x{ord(m[0]):02x}", text)


class EscapingFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def log_formatter() -> logging.Formatter:
    return EscapingFormatter(LOG_FORMAT)
