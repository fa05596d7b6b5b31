"""The sink check before a job starts: one line saying whether records can go where they should.

Training never depends on the sink, so a failed check only warns: the job starts anyway and
its records wait on disk. What matters is that the user learns it at second 1, not after
hours of training (issue 9).
"""

from __future__ import annotations

from ._config import _redact
from ._exceptions import ConfigError, SinkError
from .sinks import Sink


def check_sink(url: str) -> tuple[bool, str]:
    """(ok, one line) for the sink at `url`: reachable, accepting our credentials, writable."""
    from .sinks import sink_from_url

    try:
        sink = sink_from_url(url)
    except (ConfigError, SinkError, OSError) as exc:
        return False, f"sink {_redact(url)} is not usable: {exc}"
    try:
        return check_open_sink(sink, url)
    finally:
        try:
            sink.close()
        except (SinkError, OSError):
            pass


def check_open_sink(sink: Sink, url: str) -> tuple[bool, str]:
    """(ok, one line) for a sink already built from `url`; the caller keeps it open."""
    try:
        sink.check()
    except SinkError as exc:
        return False, f"sink {_redact(url)} is not ready: {exc}"
    return True, f"sink {_redact(url)} ready"
