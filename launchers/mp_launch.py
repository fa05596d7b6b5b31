"""Run a function in N processes, each logging through distwal into one directory.

    python launchers/mp_launch.py --procs 4 --dir /shared/run1 mypkg.train:worker

`worker(rank, world_size)` is called in each process (started with the multiprocess
package, spawn by default) after distwal is initialised with the parent's settings, so
it only calls distwal.log(...). The parent starts first, so it usually leads; its finish()
then delivers what the workers left. Exit code: the first non-zero worker exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import distwal
from distwal.launch.mp import Process


def _call(spec: str, rank: int, world_size: int) -> None:
    module, _, name = spec.partition(":")
    getattr(importlib.import_module(module), name)(rank, world_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="module:function to run in every process")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--dir", help="distwal directory (default: $DISTWAL_DIR or ./.distwal)")
    parser.add_argument("--context", default="spawn", choices=("spawn", "fork", "forkserver"))
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    opts = parser.parse_args(argv)
    sys.path.insert(0, os.getcwd())
    distwal.init(dir=opts.dir)
    procs = [
        Process(_call, (opts.target, rank, opts.procs), context=opts.context,
                env={"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(opts.procs)})
        for rank in range(opts.procs)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    distwal.finish(timeout=opts.drain_timeout)
    codes = [p.exitcode for p in procs]
    print(f"mp_launch: {opts.procs} processes, exit codes {codes}", file=sys.stderr)
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main())
