"""The SSE text of log events, built by hand for speed: it must still be exact JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from app.domain.errors import ValidationFailed
from app.domain.logtime import to_ns
from app.rest.logs import format_event, parse_since
from app.services.streams import LogEvent

NS = to_ns(datetime(2026, 11, 27, 11, 26, 42, tzinfo=UTC)) + 352_486_655


@pytest.mark.parametrize(
    "line",
    [
        "plain",
        'quotes " and \\ backslashes',
        "tab\tbell\x07 nul\x00",
        "caf\u00e9 \u2028 \U0001f680",
        "",
    ],
)
def test_an_event_is_an_id_and_exact_json(line: str) -> None:
    text = format_event(LogEvent(NS, 3, line, "stderr", None))
    # JSON escapes newlines; U+2028/2029 too, for clients that split lines on them.
    assert text.endswith("\n\n") and not {"\r", "\u2028", "\u2029"} & set(text)
    id_line, data_line, empty, end = text.split("\n")
    assert empty == end == ""
    assert id_line == f"id: {NS}-3"
    assert data_line.startswith("data: ")
    assert json.loads(data_line.removeprefix("data: ")) == {
        "timestamp": "2026-11-27T11:26:42.352486655Z",
        "line": line,
        "stream": "stderr",
        "revision": None,
    }


def test_a_marker_says_how_many_lines_were_dropped() -> None:
    marker = LogEvent.marker(42, LogEvent(NS, 0, "x", "stdout", 7))
    assert format_event(marker) == 'event: dropped\ndata: {"dropped":42}\n\n'


def test_since_takes_rfc3339_with_nanoseconds_or_seconds_ago() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert parse_since("60", now=now) == datetime(2026, 11, 27, 11, 59, tzinfo=UTC)
    assert parse_since("2026-11-27T11:26:42.352486655Z") == datetime(
        2026, 11, 27, 11, 26, 42, 352486, tzinfo=UTC
    )
    assert parse_since(None) is None
    with pytest.raises(ValidationFailed):
        parse_since("yesterday")
