"""The sink check before a job starts: one line saying whether records can go where they should.

Training never depends on the sink, so a failed check only warns: the job starts anyway and
its records wait on disk. What matters is that the user learns it at second 1, not after
hours of training (issue 9).
"""

from __future__ import annotations

from ._config import _redact
from ._exceptions import ConfigError, SinkError


def check_sink(url: str) -> tuple[bool, str]:
    """(ok, one line) for the sink at `url`: reachable, accepting our credentials, writable."""
    from .sinks import sink_from_url

    shown = _redact(url)
    try:
        sink = sink_from_url(url)
    except (ConfigError, SinkError, OSError) as exc:
        return False, f"sink {shown} is not usable: {exc}"
    try:
        sink.check()
    except SinkError as exc:
        return False, f"sink {shown} is not ready: {exc}"
    finally:
        try:
            sink.close()
        except (SinkError, OSError):
            pass
    return True, f"sink {shown} ready"
