"""The job `make demo` runs: N ranks (separate processes, as torchrun would start them)
each logging a metric record per step. Rank 1 is SIGKILLed on purpose part-way through,
to show that what it logged is still delivered (the leader adopts its files).

    distwal run --dir .distwal-demo -- python examples/demo_job.py --ranks 4 --steps 5000
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import distwal


def rank_main(rank: int, steps: int, crash_at: int | None) -> None:
    distwal.init()  # DISTWAL_DIR, DISTWAL_SINK and DISTWAL_RUN_ID come from `distwal run`
    started = time.perf_counter()
    for step in range(steps):
        loss = 2.0 / (1 + step) ** 0.5
        distwal.log({"type": "metric", "rank": rank, "step": step, "loss": round(loss, 6)})
        if step == crash_at:
            distwal.flush()  # make the point clearly: durable records survive SIGKILL
            os.kill(os.getpid(), signal.SIGKILL)
    elapsed = time.perf_counter() - started
    distwal.log({"type": "summary", "rank": rank, "steps": steps, "seconds": round(elapsed, 3)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5000)
    opts = parser.parse_args()
    if "RANK" in os.environ:
        rank = int(os.environ["RANK"])
        rank_main(rank, opts.steps, crash_at=opts.steps * 3 // 5 if rank == 1 else None)
        return 0
    procs = []
    for rank in range(opts.ranks):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(opts.ranks)}
        procs.append(subprocess.Popen([sys.executable, __file__, *sys.argv[1:]], env=env))
    codes = [p.wait() for p in procs]
    for rank, code in enumerate(codes):
        if code == -signal.SIGKILL:
            print(f"demo: rank {rank} was SIGKILLed on purpose at step {opts.steps * 3 // 5}", file=sys.stderr)
        elif code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
