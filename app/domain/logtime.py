"""Log timestamps as integer nanoseconds since the epoch (UTC).

Engines stamp each log line with RFC 3339 nanoseconds (``2026-11-27T11:26:42.352486655Z``), and
many lines share one stamp (Podman's conmon stamps a whole read of the container's pipe).
``datetime`` keeps microseconds only, so ids and comparisons use these integers, and a chatty
container costs a dictionary lookup per line instead of a ``datetime`` parse: both directions
cache the whole-second part.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NS = 1_000_000_000

_SECONDS_CACHE_LIMIT = 4096
_parsed_seconds: dict[str, int] = {}
_formatted_seconds: dict[int, str] = {}


def to_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch of an aware (or UTC-naive) datetime, exactly."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * NS + delta.microseconds * 1_000


def to_datetime(ns: int) -> datetime:
    """The aware UTC datetime of ``ns`` (microsecond precision)."""
    return EPOCH + timedelta(microseconds=ns // 1_000)


def _seconds(text: str) -> int:
    """Epoch seconds of ``YYYY-MM-DDTHH:MM:SS`` (UTC), cached."""
    seconds = _parsed_seconds.get(text)
    if seconds is None:
        parsed = datetime.fromisoformat(text).replace(tzinfo=UTC)
        seconds = (parsed - EPOCH).days * 86_400 + (parsed - EPOCH).seconds
        if len(_parsed_seconds) >= _SECONDS_CACHE_LIMIT:
            _parsed_seconds.clear()
        _parsed_seconds[text] = seconds
    return seconds


def parse_ns(stamp: str) -> int | None:
    """Nanoseconds of an RFC 3339 timestamp (any number of fraction digits, ``Z`` or an
    offset), or None when ``stamp`` is not one."""
    if len(stamp) < 20 or stamp[10] not in "Tt ":
        return None
    try:
        if stamp[19] == "." and stamp[-1] in "Zz":
            fraction = stamp[20:-1]
            if not fraction.isdigit() or len(fraction) > 9:
                return None
            return _seconds(stamp[:19]) * NS + int(fraction.ljust(9, "0"))
        if stamp[19:] in ("Z", "z"):
            return _seconds(stamp[:19]) * NS
        # An offset instead of Z: rare, take the slow path.
        base, dot, rest = stamp.partition(".")
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))] if dot else ""
        zone = rest[len(digits) :] if dot else stamp[19:]
        moment = datetime.fromisoformat(base[:19] + zone)
        if moment.tzinfo is None or len(digits) > 9:
            return None
        return to_ns(moment) + int(digits.ljust(9, "0") or 0)
    except ValueError:
        return None


def format_ns(ns: int) -> str:
    """RFC 3339 in UTC with nanoseconds: ``2026-11-27T11:26:42.352486655Z``."""
    seconds, fraction = divmod(ns, NS)
    prefix = _formatted_seconds.get(seconds)
    if prefix is None:
        prefix = (EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
        if len(_formatted_seconds) >= _SECONDS_CACHE_LIMIT:
            _formatted_seconds.clear()
        _formatted_seconds[seconds] = prefix
    return f"{prefix}.{fraction:09d}Z"
