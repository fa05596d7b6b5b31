"""PyTorch DDP on CPU (gloo): every rank logs its loss and throughput each step.

    distwal run --dir runs/ddp -- torchrun --nproc-per-node 4 examples/train_ddp.py --steps 200
    distwal status runs/ddp

--no-distwal runs the same loop without logging (the overhead benchmark compares both);
--crash-rank R --crash-step S makes rank R exit with an error at step S of the first attempt
(to try torchrun's --max-restarts).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--no-distwal", action="store_true")
    parser.add_argument("--crash-rank", type=int, default=-1)
    parser.add_argument("--crash-step", type=int, default=-1)
    parser.add_argument("--times", help="write this rank's step times (seconds, one per line) to FILE.<rank>")
    opts = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    log = None
    if not opts.no_distwal:
        import distwal

        distwal.init()
        log = distwal.log

    torch.manual_seed(rank)
    model = DistributedDataParallel(
        nn.Sequential(nn.Linear(opts.width, opts.width), nn.ReLU(), nn.Linear(opts.width, 1))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for step in range(opts.steps):
        started = time.perf_counter()
        x = torch.randn(opts.batch, opts.width)
        y = x.sum(dim=1, keepdim=True) * 0.01
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - started
        times.append(elapsed)
        if log is not None:
            log({"type": "metric", "rank": rank, "attempt": attempt, "step": step, "loss": loss.item(),
                 "samples_per_s": opts.batch / elapsed})
        if rank == opts.crash_rank and step == opts.crash_step and attempt == 0:
            print(f"train_ddp: rank {rank} crashes on purpose at step {step}", file=sys.stderr)
            sys.exit(3)
    if opts.times:
        with open(f"{opts.times}.{rank}", "w") as f:
            f.write("\n".join(f"{t:.9f}" for t in times))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
