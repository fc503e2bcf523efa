"""Log lines that client-controlled text cannot forge or garble.

User input reaches the log through ``%s`` arguments (a container id, an env key, a path) and
through exception messages. A newline in such text would start a forged log line; ESC or NUL
would drive or confuse the terminal or the collector reading it. ``install()`` sets a LogRecord
factory (the stdlib hook for exactly this, so every handler and formatter, uvicorn's included,
gets escaped text) that escapes control characters in the *arguments* of each message and in
the message line of a logged exception, while the format strings written in our code, and the
traceback layout, keep their newlines.
"""

from __future__ import annotations

import logging
import numbers
import re
import traceback
from collections.abc import Generator, Mapping
from types import TracebackType
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """``text`` with control characters (CR, LF, ESC, NUL, …) written as ``\\xNN``/``\\uNNNN``."""

    def one(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL.sub(one, text)


class _Escaped:
    """A log argument whose ``%s`` and ``%r`` renderings are escaped."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return escape(str(self.value))

    def __repr__(self) -> str:
        return escape(repr(self.value))


def _wrap(value: object) -> object:
    # Fast paths for what nearly every record carries (uvicorn's access line: strings and an
    # int): a string without control characters renders the same escaped or not, for %s and
    # %r alike; exact ints and floats need no ABC check.
    if type(value) is str:
        return value if _CONTROL.search(value) is None else _Escaped(value)
    if type(value) is int or type(value) is float:
        return value
    return value if isinstance(value, numbers.Number) else _Escaped(value)


class _SafeTraceback(traceback.TracebackException):
    def format_exception_only(self) -> Generator[str, None, None]:
        for line in super().format_exception_only():
            yield escape(line.rstrip("\n")) + "\n"


def _safe_chain(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    te.__class__ = _SafeTraceback
    for linked in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        if linked is not None:
            _safe_chain(linked, seen)


def format_exception(
    exc_info: tuple[type[BaseException], BaseException, TracebackType | None],
) -> str:
    """The traceback text, with each exception's message line escaped."""
    te = traceback.TracebackException(*exc_info)
    _safe_chain(te, set())
    return "".join(te.format()).rstrip("\n")


class SafeLogRecord(logging.LogRecord):
    def getMessage(self) -> str:
        message = str(self.msg)
        args = self.args
        if args:
            if isinstance(args, Mapping):
                message = message % {key: _wrap(value) for key, value in args.items()}
            else:
                message = message % tuple(_wrap(value) for value in args)
        return message

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.exc_info and self.exc_info[1] is not None and not self.exc_text:
            exc_type, exc_value, exc_tb = self.exc_info
            assert exc_type is not None
            self.exc_text = format_exception((exc_type, exc_value, exc_tb))


def install() -> None:
    """Make every log record escape its arguments (idempotent; keeps a foreign factory)."""
    if logging.getLogRecordFactory() is logging.LogRecord:
        logging.setLogRecordFactory(SafeLogRecord)
