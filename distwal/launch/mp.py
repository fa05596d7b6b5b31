"""Process pools whose workers log into the parent's directory (the only importer of multiprocess).

    import distwal
    from distwal.launch.mp import Pool

    distwal.init(dir="/shared/run1")
    with Pool(4) as pool:
        pool.map(work, range(100))      # work() just calls distwal.log(...)

Workers are initialised with the parent's directory, sink and run id, so a worker only
calls distwal.log. Each worker is its own writer; its records are durable when the task
returns, and the pool's finalizers and SIGTERM handling make them durable at exit.
Plain multiprocessing works too: init() exports the settings, and a forked child gets
its own writer on its first log.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from .._api import current, init


def _worker_init(settings: dict[str, str], initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
    os.environ.update(settings)
    init()
    if initializer is not None:
        initializer(*initargs)


def _settings() -> dict[str, str]:
    writer = current() or init()
    config = writer.config
    return {"DISTWAL_DIR": config.dir, "DISTWAL_SINK": config.sink, "DISTWAL_RUN_ID": config.run_id,
            "DISTWAL_DURABILITY": config.durability}


def Pool(  # noqa: N802 - mirrors multiprocess.Pool
    processes: int | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    context: str | None = None,
    **kwargs: Any,
) -> Any:
    """A multiprocess.Pool whose workers start their distwal writer with this process's settings."""
    import multiprocess

    ctx = multiprocess.get_context(context)
    return ctx.Pool(processes, _worker_init, (_settings(), initializer, initargs), **kwargs)


def Process(  # noqa: N802 - mirrors multiprocess.Process
    target: Callable[..., Any],
    args: tuple[Any, ...] = (),
    context: str | None = None,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> Any:
    """A multiprocess.Process running `target` with a writer on this process's settings.

    `env` is set in the child before its writer starts (for example RANK, LOCAL_RANK).
    """
    import multiprocess

    ctx = multiprocess.get_context(context)
    return ctx.Process(target=_run_with_writer, args=({**_settings(), **(env or {})}, target, args), **kwargs)


def _run_with_writer(settings: dict[str, str], target: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    _worker_init(settings, None, ())
    return target(*args)
