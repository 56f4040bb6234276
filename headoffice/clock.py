"""UTC time in one place, so stored timestamps are always timezone-aware UTC."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
MAX_DURATION_S = 3650 * 86400
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands timezone-aware columns back naive; they were stored as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` (a bare number is seconds)."""
    match = _DURATION.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration like 30m, 24h or 7d")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{text!r} is longer than the longest duration allowed (3650d)")
    return timedelta(seconds=seconds)
