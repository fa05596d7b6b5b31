"""Times and durations on the command line (`--since`, `--older-than`): what they mean, and
one clear error line for what they cannot."""

from __future__ import annotations

import datetime

import pytest

from distwal import ConfigError
from distwal.cli._time import parse_duration, parse_since

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1.5h", 5400), ("7d", 604800),
                                               ("2w", 1209600), (" 0s ", 0)])
def test_durations_have_a_unit(text: str, seconds: float) -> None:
    assert parse_duration(text, "--older-than") == seconds


@pytest.mark.parametrize("text", ["7", "7x", "-1d", "d", "", "1 day"])
def test_a_duration_without_a_known_unit_is_one_clear_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--older-than .* is not a duration: write a number and a unit"):
        parse_duration(text, "--older-than")


def test_since_reads_a_duration_ago_a_unix_time_and_an_iso_time() -> None:
    assert parse_since("2h", now=NOW) == NOW - 7200
    assert parse_since("1796000000.5", now=NOW) == 1796000000.5
    local = datetime.datetime(2026, 11, 30, 1, 0).timestamp()
    assert parse_since("2026-11-30T01:00", now=NOW) == local
    assert parse_since("2026-11-30T01:00+00:00", now=NOW) == 1_796_000_400.0


def test_since_that_is_no_time_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="--since 'yesterday' is not a time"):
        parse_since("yesterday", now=NOW)
