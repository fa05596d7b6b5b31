"""`distwal gc [DIR] [--older-than 7d] [--dry-run]`: remove old history of delivered writers.

Removes the tombstones (history/) of writers whose records were all delivered, older than
--older-than; never a writer folder, a cursor or a dead letter, so never an undelivered
record. Delivered records live in the sink: see the README to prune the SQLite file.
"""

from __future__ import annotations

import argparse
import sys

from .._gc import collect
from ._common import require_run_dir, resolve_dir
from ._time import parse_duration

DEFAULT_OLDER_THAN = "7d"


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distwal gc", description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", help="the distwal directory (default: $DISTWAL_DIR or ./.distwal)")
    parser.add_argument("--older-than", default=DEFAULT_OLDER_THAN,
                        help=f"age of the history to remove: 90s, 10m, 12h, 7d, 2w (default {DEFAULT_OLDER_THAN})")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    opts = parser.parse_args(args)
    root = require_run_dir(resolve_dir(opts.dir))
    older_than = parse_duration(opts.older_than, "--older-than")
    result = collect(root, older_than, dry_run=opts.dry_run)
    verb = "would remove" if opts.dry_run else "removed"
    print(f"distwal gc: {verb} {len(result.removed)} tombstones of delivered writers older than {opts.older_than} "
          f"({result.freed_bytes} bytes); kept {result.kept}. Undelivered records are never touched.",
          file=sys.stderr)
    return 0
