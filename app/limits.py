"""Bounds on what one API request may make the server read and parse.

* The request body limit (enforced by ``app.middleware.RequestMiddleware`` in front of the API,
  behind the ingress so proxied container traffic is not affected): a body whose
  ``Content-Length`` is over the limit is refused with 413 (``refuse_too_large``) before any of
  it is read; a body without one (chunked) is counted as it streams in and refused as soon as it
  passes the limit, so a client cannot make the server buffer more than ``limit`` bytes per
  request.
* ``loads_json``: ``json.loads`` with a bound on nesting depth. CPython's parser recurses once
  per level and fails with ``RecursionError`` (a 500) near 1,000 levels; a real request body
  needs a handful. The depth is checked on the raw text before parsing, cheaply: only a body
  holding more brackets than the limit is scanned at all.

Starlette has no body limit of its own and uvicorn's ``--limit-*`` options bound connections,
not bodies, hence this small check.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import Send

from app.domain.errors import PayloadTooLarge

MAX_JSON_DEPTH = 64
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


class JsonTooDeep(ValueError):
    """The JSON text nests arrays/objects deeper than allowed."""


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text (strings do not count)."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRING.sub(b"", raw)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads_json(raw: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that raises ``JsonTooDeep`` (a ValueError) instead of recursing deeply."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") > max_depth and json_depth(data) > max_depth:
        raise JsonTooDeep(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise JsonTooDeep(f"JSON nested deeper than {max_depth} levels") from None


async def refuse_too_large(send: Send, limit: int) -> None:
    """The 413 problem for a body over ``limit`` (the connection is closed after it)."""
    body = json.dumps(
        {
            "type": "about:blank",
            "title": "Content Too Large",
            "status": 413,
            "code": PayloadTooLarge.code,
            "detail": PayloadTooLarge(limit).detail,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
