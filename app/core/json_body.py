"""What FastAPI's JSON parsing lets through and a money-moving body must not carry.

`json.loads` keeps the last of two equal keys, so `{"amount": "-5", "amount": "25.00"}` would be
read as 25.00 here while another reader of the same bytes (a proxy, an audit log, the caller's
own tests) sees -5: such a body is refused. Strings with NUL or a lone surrogate are refused
too: Postgres text cannot hold NUL, UTF-8 cannot encode a lone surrogate, and Bakkt would get
either as garbage.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request

from app.errors import Unprocessable

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class DuplicateField(Unprocessable):
    code = "duplicate_field"
    title = "A JSON object has the same field twice"


class UnstorableText(Unprocessable):
    code = "invalid_characters"
    title = "A string holds NUL or a lone surrogate"


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise DuplicateField(f"The field {_shown(name)} appears more than once.")
        seen.add(name)
    return dict(pairs)


def _shown(name: str) -> str:
    # A field name is the caller's text: shown short and without what it must not carry.
    return repr(_UNSTORABLE.sub("?", name[:64]))


def _check_strings(value: Any, where: str) -> None:
    if isinstance(value, str):
        if _UNSTORABLE.search(value):
            # The location only: the value may be a processor token or an account number.
            raise UnstorableText(f"{where or 'the body'} holds NUL or a lone surrogate.")
    elif isinstance(value, dict):
        for name, item in value.items():
            _check_strings(name, where)
            _check_strings(item, f"{where}.{_UNSTORABLE.sub('?', name[:64])}".lstrip("."))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{where}[{index}]")


def check_json_body(raw: bytes) -> None:
    """Raise DuplicateField or UnstorableText; anything that is not JSON is left to FastAPI's
    own parsing, which answers it with its 422 or 400."""
    if not raw.strip():
        return
    try:
        parsed = json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except (ValueError, RecursionError):
        return
    _check_strings(parsed, "")


async def sound_json_body(request: Request) -> None:
    """The dependency: runs after authentication and before the body is validated (FastAPI has
    read and cached the body by then, so this costs a second parse, not a second read)."""
    check_json_body(await request.body())
