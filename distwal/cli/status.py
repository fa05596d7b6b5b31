"""`distwal status [DIR] [--json] [--watch] [--run RUN] [--wide]`: per-writer table of a directory.

Reads the directory without taking any lock, during a job or after it. The table fits the
terminal (80 columns and up; see _status_view); into a pipe it is as wide as $COLUMNS, the
terminal the pipe ends in, or 120. --watch redraws a terminal in place; into a pipe (a SLURM log, tee) it prints one
plain frame per interval, and with --json one JSON document per line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Any

import orjson

from .._status import status
from ._common import require_run_dir, resolve_dir
from ._status_view import render

PIPE_WIDTH = 120  # columns of the table written into a pipe when $COLUMNS is unset
_HOME_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: only ever written to a terminal


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distwal status", description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", help="the distwal directory (default: $DISTWAL_DIR or ./.distwal)")
    parser.add_argument("--json", action="store_true", help="print the status as JSON (schema: docs/STATUS.md)")
    parser.add_argument("--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes with --watch")
    parser.add_argument("--run", metavar="RUN", help="only the writers of this run id")
    parser.add_argument("--wide", action="store_true", help="every column and full writer ids, whatever the width")
    opts = parser.parse_args(args)
    if opts.interval <= 0:
        parser.error(f"--interval must be a positive number of seconds, got {opts.interval}")
    root = require_run_dir(resolve_dir(opts.dir))
    out = sys.stdout
    tty = out.isatty()

    def frame() -> str:
        report = status(root, run=opts.run)
        if opts.json:
            return orjson.dumps(report, option=0 if opts.watch else orjson.OPT_INDENT_2).decode() + "\n"
        return render(report, width=_width(tty), wide=opts.wide) + _no_match(report, opts.run)

    if not opts.watch:
        out.write(frame())
        return 0
    try:
        while True:
            text = frame()
            if tty and not opts.json:
                out.write(_HOME_CLEAR + text)
            else:
                out.write(text if opts.json else text + "\n")  # a blank line between plain frames
            out.flush()
            time.sleep(opts.interval)
    except KeyboardInterrupt:
        return 0


def _width(tty: bool) -> int:
    if tty:
        return shutil.get_terminal_size().columns
    try:
        return int(os.environ.get("COLUMNS", "")) or _terminal_behind_pipe()
    except ValueError:
        return _terminal_behind_pipe()


def _terminal_behind_pipe() -> int:
    """The width of the terminal a pipe ends in (`status | tail`, `make demo | less`): stderr or
    stdin is usually still that terminal. PIPE_WIDTH when there is none (a SLURM log)."""
    for fd in (2, 0):
        try:
            return os.get_terminal_size(fd).columns
        except OSError:
            continue
    return PIPE_WIDTH


def _no_match(report: dict[str, Any], run: str | None) -> str:
    if run is None or report["writers"] or report["history"]:
        return ""
    return f"no writer of run {run!r} here; runs in this directory: {', '.join(report['runs']) or 'none'}\n"
