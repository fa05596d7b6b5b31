"""One measurement of Weave's JSONLWALWriter; run by append.py with the python of benchmarks/.venv-weave.

Weave lives in its own virtualenv (it pulls in a large dependency tree that distwal must not
see), so append.py starts this script there as a subprocess and reads one JSON line from its
stdout. It appends the same 109-byte record as the other cases, through the writer's public
write(), with Weave's default fsync policy (os.fsync every 64 writes or 0.5 s), and counts
until flush() has fsynced everything. os.fsync is wrapped to count the fsyncs.

    benchmarks/.venv-weave/bin/python benchmarks/_weave_append.py --n 200000 --dir /tmp/x
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from itertools import cycle, islice


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()

    import importlib.metadata

    from weave.durability.wal_directory_manager import FileWALDirectoryManager
    from weave.durability.wal_writer import JSONLWALWriter

    fsyncs = [0]
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        fsyncs[0] += 1
        real_fsync(fd)

    os.fsync = counting_fsync  # weave calls os.fsync(...) through the module: this sees every one

    writer = JSONLWALWriter(FileWALDirectoryManager(args.dir))
    write = writer.write
    steps = islice(cycle(range(10, 100)), args.n)  # two-digit steps: every record is 109 bytes
    gc.collect()
    before = fsyncs[0]
    pc = time.perf_counter
    t0 = pc()
    for step in steps:
        write({"type": "metric", "rank": 3, "step": step, "ts": 1732200000.123,
               "data": {"loss": 0.4321, "lr": 0.0003, "grad_norm": 1.234}})  # fmt: skip
    t1 = pc()
    writer.flush()  # fsync: everything written is durable
    t2 = pc()
    synced = fsyncs[0] - before
    writer.close()
    size = sum(
        os.path.getsize(os.path.join(args.dir, name)) for name in os.listdir(args.dir) if name.endswith(".jsonl")
    )
    print(
        json.dumps(
            {
                "version": importlib.metadata.version("weave"),
                "python": sys.version.split()[0],
                "n": args.n,
                "caller_s": t1 - t0,
                "total_s": t2 - t0,
                "fsyncs": synced,
                "bytes": size,
            }
        )
    )


if __name__ == "__main__":
    main()
