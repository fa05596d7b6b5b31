"""Every error distwal raises.

    DistwalError
     +- ConfigError(DistwalError, ValueError)   bad option, env var or directory
     +- ClosedError                             log() after finish()
     +- FullError                               buffer or pending budget full, on_full="raise"
     +- LayoutError                             not a run directory, or a name we cannot parse
     +- LeaderTimeout(DistwalError, TimeoutError)  drain could not lead, or finish in time
     +- SinkError                               the sink did not take a batch
         +- SinkUnavailable                     retry later: refused, timeout, 5xx, 429, busy
         +- SinkRejected                        never as sent: 400/422, the sink refuses the data
         +- SinkTooLarge                        413: split the batch and retry
         +- SinkPaused                          401/403/404: wrong token or URL; retry much later
         +- StaleEpoch                          409: a newer leader exists; stop leading

Errors cross processes, so each one pickles: none takes extra constructor arguments.
"""

from __future__ import annotations


class DistwalError(Exception):
    """Base class of every distwal error."""


class ConfigError(DistwalError, ValueError):
    """A wrong option, environment variable or directory. The message says how to fix it."""


class ClosedError(DistwalError):
    """The writer is finished: call distwal.init() again to start a new one."""


class FullError(DistwalError):
    """The memory buffer or the pending-bytes budget is full and on_full is "raise"."""


class LayoutError(DistwalError):
    """A path in the directory is not what distwal wrote there."""


class LeaderTimeout(DistwalError, TimeoutError):
    """Leadership or delivery did not come within the timeout."""


class SinkError(DistwalError):
    """The sink did not store a batch. The cursor stays where it is."""

    retry_after: float | None = None


class SinkUnavailable(SinkError):
    """Retry with backoff: connection refused, timeout, 5xx, 429, SQLITE_BUSY."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type, tuple[str, float | None]]:
        return (type(self), (str(self), self.retry_after))


class SinkRejected(SinkError):
    """The sink refuses this data for good (400/422): bisect to the envelopes it refuses."""


class SinkTooLarge(SinkError):
    """The batch is too large for the sink (413): split it."""


class SinkPaused(SinkError):
    """The sink refuses us, not the data (401/403/404): pause, show it, retry later."""


class StaleEpoch(SinkError):
    """The sink has seen a newer leader epoch (409): this process must stop leading."""
