"""Times and durations on the command line: `--since 2h`, `--since 2026-11-30T01:00`, `--older-than 7d`."""

from __future__ import annotations

import datetime
import re
import time

from .._exceptions import ConfigError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str, option: str) -> float:
    """Seconds in `text`: a number with a unit, s, m, h, d or w (e.g. 90s, 10m, 7d)."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(f"{option} {text!r} is not a duration: write a number and a unit, e.g. 90s, 10m, 12h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_since(text: str, option: str = "--since", now: float | None = None) -> float:
    """A unix time from `text`: a duration ago (2h), an ISO date or time (local time unless it
    says otherwise), or a unix time in seconds."""
    now = time.time() if now is None else now
    if _DURATION.match(text):
        return now - parse_duration(text, option)
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{option} {text!r} is not a time: write a duration ago (2h, 7d), an ISO time "
            "(2026-11-30T01:00) or a unix time in seconds"
        ) from None
    return moment.timestamp()  # a naive time is local time
