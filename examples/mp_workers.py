"""A multiprocessing job whose workers only call distwal.log.

    python examples/mp_workers.py --dir runs/mp --workers 4 --items 1000
    distwal status runs/mp

The parent starts distwal; the pool's workers inherit its directory, sink and run id.
"""

from __future__ import annotations

import argparse
import math
import os

import distwal
from distwal.launch.mp import Pool


def work(item: int) -> float:
    value = math.sqrt(item) * math.sin(item)
    distwal.log({"type": "result", "item": item, "value": value, "worker": os.getpid()})
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="runs/mp")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--items", type=int, default=1000)
    opts = parser.parse_args()
    distwal.init(dir=opts.dir)
    with Pool(opts.workers) as pool:
        total = sum(pool.map(work, range(opts.items), chunksize=16))
    distwal.log({"type": "summary", "items": opts.items, "total": total})
    delivered = distwal.flush(timeout=30, delivered=True)
    print(f"mp_workers: {opts.items} items, total {total:.3f}; delivered: {delivered}")
    return 0 if delivered else 1


if __name__ == "__main__":
    raise SystemExit(main())
