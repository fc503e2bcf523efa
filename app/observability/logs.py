"""The server's own logs: JSON lines for machines, text for people, each with the request id.

``python-json-logger`` formats JSON lines (one object per record, every string escaped, so a
newline in user text cannot forge a record), and ``asgi-correlation-id`` carries the request id
(``X-Request-ID``: taken from the client when it is a sane token, made up otherwise) from its
middleware into every record logged while the request runs. Both are small, well-kept libraries
doing exactly this, rather than a home-made formatter and context variable.
"""

from __future__ import annotations

import re
import sys
import uuid
from typing import Any, Literal

from asgi_correlation_id import correlation_id
from pythonjsonlogger.core import RESERVED_ATTRS

LogFormat = Literal["auto", "json", "text"]
REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def valid_request_id(value: str) -> bool:
    """A client's request id is kept when it is a short token (no spaces or control characters),
    so it can be logged and echoed as is; anything else is replaced by a fresh one."""
    return _SANE_ID.fullmatch(value) is not None


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request being handled, if any."""
    return correlation_id.get()


def wants_json(log_format: LogFormat, stream: Any = None) -> bool:
    if log_format == "auto":
        stream = stream if stream is not None else sys.stderr
        return not (hasattr(stream, "isatty") and stream.isatty())
    return log_format == "json"


def log_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and the app: every record gets
    ``request_id``; JSON lines when ``log_format`` says so (``auto``: when stderr is no TTY)."""
    level = level.upper()
    if wants_json(log_format):
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s %(correlation_id)s",
            "rename_fields": {
                "levelname": "level",
                "name": "logger",
                "correlation_id": "request_id",
            },
            "timestamp": "time",  # ISO 8601, UTC
            # uvicorn's ANSI-coloured copy of the message is for terminals only
            "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
        }
    else:
        formatter = {
            "format": "%(asctime)s %(levelname)-7s [%(correlation_id)s] %(name)s: %(message)s",
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {
                "()": "asgi_correlation_id.CorrelationIdFilter",
                "uuid_length": 32,
                "default_value": "-",
            }
        },
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["default"], "level": level, "propagate": False},
        },
        "root": {"handlers": ["default"], "level": level},
    }
