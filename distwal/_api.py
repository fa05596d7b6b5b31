"""The module-level API: init() and the shortcuts on the process's current writer."""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping

from . import _files, _layout
from ._config import Config
from ._exceptions import ConfigError
from .writer.writer import StartElector, Writer

_current: Writer | None = None
_init_lock = threading.Lock()


def init(
    dir: str | os.PathLike[str] | None = None,
    sink: str | None = None,
    durability: str | None = None,
    **options: Any,
) -> Writer:
    """Start this process's writer (or return the running one) and export its settings.

    With no arguments everything comes from the environment (DISTWAL_DIR, DISTWAL_SINK,
    DISTWAL_DURABILITY, ...). The directory is made absolute, and DISTWAL_DIR, DISTWAL_SINK
    and DISTWAL_RUN_ID are exported so child processes join the same directory, sink and run.
    A second init() returns the running writer; arguments that conflict with it raise
    ConfigError. init() after finish() starts a new writer.
    """
    global _current
    config = Config.load(dir, sink, durability, **options)
    with _init_lock:
        running = _current
        if running is not None and not running.closed:
            _check_same(running.config, config, dir, sink, durability, options)
            return running
        modes = _layout.Modes.for_config(config.shared_group)
        _files.prepare_dir(config.dir, modes)
        domain = _files.ensure_domain(config.dir, modes)
        writer = Writer(config, domain, None if config.disable_sender else _rank_elector())
        config.export()
        _current = writer
        return writer


def _rank_elector() -> StartElector:
    # Imported when a writer may lead, never by `import distwal`: the elector brings the sender.
    from .leader.rank import start_elector

    return start_elector


def _check_same(
    running: Config, wanted: Config, dir: Any, sink: Any, durability: Any, options: Mapping[str, Any]
) -> None:
    explicit = dict(options)
    if dir is not None:
        explicit["dir"] = wanted.dir
    if sink is not None:
        explicit["sink"] = wanted.sink
    if durability is not None:
        explicit["durability"] = wanted.durability
    for name, value in explicit.items():
        if getattr(running, name) != value:
            raise ConfigError(
                f"distwal is already initialised with {name}={getattr(running, name)!r}, not {value!r}: "
                "call distwal.finish() first to start a writer with other settings"
            )


def current() -> Writer | None:
    """The process's running writer, if any."""
    return _current if _current is not None and not _current.closed else None


def log(record: Mapping[str, Any]) -> int:
    """Log `record` through the current writer, starting one from the environment if needed."""
    writer = _current
    if writer is None or writer.closed:
        writer = init()
    return writer.log(record)


def flush(timeout: float = 60.0, delivered: bool = False) -> bool:
    """Flush the current writer; True when there is none (nothing to flush)."""
    writer = _current
    return True if writer is None else writer.flush(timeout, delivered=delivered)


def finish(timeout: float = 60.0) -> bool:
    """Finish the current writer; True when there is none."""
    writer = _current
    return True if writer is None else writer.finish(timeout)
