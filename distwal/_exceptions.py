"""Every error distwal raises.

    DistwalError
     +- ConfigError(DistwalError, ValueError)   bad option, env var or directory
     +- ClosedError                             log() after finish()
     +- FullError                               buffer or pending budget full, on_full="raise"
     +- LayoutError                             not a run directory, or a name we cannot parse

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
