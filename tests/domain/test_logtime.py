"""Log timestamps as integer nanoseconds: exact both ways, whatever the precision given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.domain.logtime import NS, format_ns, parse_ns, to_datetime, to_ns

BASE = to_ns(datetime(2026, 11, 27, 11, 26, 42, tzinfo=UTC))


def test_rfc3339_with_any_precision_parses_to_exact_nanoseconds() -> None:
    assert parse_ns("2026-11-27T11:26:42.352486655Z") == BASE + 352_486_655
    assert parse_ns("2026-11-27T11:26:42.3524866Z") == BASE + 352_486_600  # trailing 0s trimmed
    assert parse_ns("2026-11-27T11:26:42Z") == BASE  # Podman's API: whole seconds
    assert parse_ns("2026-11-27T12:26:42.5+01:00") == BASE + NS // 2
    assert parse_ns("2026-11-27T12:26:42+01:00") == BASE


def test_garbage_is_not_a_timestamp() -> None:
    for text in ["", "garbage", "2026-11-27T11:26:", "2026-11-27T11:26:42.abcZ", "line 1"]:
        assert parse_ns(text) is None, text
    assert parse_ns("2026-11-27T11:26:42.1234567890Z") is None  # more than nanoseconds


def test_formatting_round_trips_and_datetimes_keep_microseconds() -> None:
    ns = BASE + 352_486_655
    assert format_ns(ns) == "2026-11-27T11:26:42.352486655Z"
    assert parse_ns(format_ns(ns)) == ns
    assert format_ns(BASE) == "2026-11-27T11:26:42.000000000Z"
    moment = to_datetime(ns)
    assert moment == datetime(2026, 11, 27, 11, 26, 42, 352486, tzinfo=UTC)
    assert to_ns(moment) == ns - 655
    assert to_ns(moment.replace(tzinfo=None)) == ns - 655  # naive means UTC
    assert to_ns(moment.astimezone(UTC) + timedelta(days=400)) == ns - 655 + 400 * 86_400 * NS
