"""distwal: durable records for distributed training jobs, delivered once leadership allows.

    import distwal

    distwal.init()                      # reads DISTWAL_DIR, DISTWAL_SINK, ...
    distwal.log({"step": 1, "loss": 0.25})
    distwal.finish()
"""

from __future__ import annotations

from ._api import current, finish, flush, init, log
from ._exceptions import (
    ClosedError,
    ConfigError,
    DistwalError,
    FullError,
    LayoutError,
    LeaderTimeout,
    SinkError,
    SinkPaused,
    SinkRejected,
    SinkTooLarge,
    SinkUnavailable,
    StaleEpoch,
)
from ._handler import LoggingHandler
from ._readback import read
from ._status import status
from .writer import Writer

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "ConfigError",
    "DistwalError",
    "FullError",
    "LayoutError",
    "LeaderTimeout",
    "LoggingHandler",
    "SinkError",
    "SinkPaused",
    "SinkRejected",
    "SinkTooLarge",
    "SinkUnavailable",
    "StaleEpoch",
    "Writer",
    "__version__",
    "current",
    "finish",
    "flush",
    "init",
    "log",
    "read",
    "status",
]
