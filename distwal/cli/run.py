"""`distwal run [--dir D] [--sink URL] [--drain-timeout S] -- CMD ARGS...`

Runs CMD (torchrun, python, srun, ...) with the environment set for its ranks, leads
while it lives, forwards SIGINT/SIGTERM, drains after CMD exits, and exits with CMD's code.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._config import Config
from ..launch.run import DEFAULT_DRAIN_TIMEOUT, run_command


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distwal run", description=__doc__.splitlines()[0] if __doc__ else None,
                                     usage="distwal run [--dir D] [--sink URL] [--drain-timeout S] -- CMD ARGS...")
    parser.add_argument("--dir", help="shared WAL directory (default: $DISTWAL_DIR or ./.distwal)")
    parser.add_argument("--sink", help="sink URL (default: $DISTWAL_SINK or the directory's SQLite file)")
    parser.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT,
                        help=f"seconds to keep delivering after CMD exits (default {DEFAULT_DRAIN_TIMEOUT:.0f})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    if "--" in args:
        split = args.index("--")
        ours, command = args[:split], args[split + 1:]
    else:
        ours, command = args, []
    opts = parser.parse_args(ours)
    if not command:
        parser.error("give the command to run after --, e.g. distwal run -- torchrun --nproc-per-node 4 train.py")
    config = Config.load(dir=opts.dir, sink=opts.sink)
    progress = None if opts.quiet or not sys.stderr.isatty() else _ProgressBar()
    try:
        return run_command(config, command, opts.drain_timeout, progress, say=_Say(progress))
    finally:
        if progress is not None:
            progress.close()


class _Say:
    """Prints a `distwal:` line on stderr; the drain's closing line after the progress
    bar is gone (a transient bar would otherwise erase it)."""

    def __init__(self, progress: _ProgressBar | None) -> None:
        self._progress = progress

    def __call__(self, line: str) -> None:
        if self._progress is not None:
            self._progress.close()
        print(f"distwal: {line}", file=sys.stderr, flush=True)


class _ProgressBar:
    """A rich progress bar for the drain after the job, on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("distwal: delivering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True,
        )
        self._task: Any = None

    def __call__(self, state: dict[str, int]) -> None:
        total = state["acked_records"] + state["pending_records"]
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task("drain", total=total)
        self._progress.update(self._task, completed=state["acked_records"], total=total)

    def close(self) -> None:
        if self._task is not None:
            self._progress.stop()
            self._task = None
