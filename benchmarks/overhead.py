"""Training overhead: examples/train_ddp.py with and without distwal, step time per rank.

Each repetition runs the same DDP job (gloo on CPU, torchrun --standalone) twice, once
with every rank logging a record per step (one rank leads and ships to the SQLite sink
from its sender process) and once with --no-distwal, in alternating order. Every rank
writes its step times; the table compares the median step time per rank, the leader
rank's row included. Target: at most 1% overhead.

    python benchmarks/overhead.py [--short]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _report import Report, verdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
TARGET = 0.01  # 1% overhead


def _have_torch() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return f"torch is not installed ({exc}); `make install` installs torch==2.13.0"
    return None


def _run(ranks: int, steps: int, with_distwal: bool, tmp: str, tag: str) -> tuple[dict[int, list[float]], int | None]:
    """One torchrun job; per-rank step times and the leader rank (None without distwal)."""
    times = os.path.join(tmp, f"times-{tag}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTWAL_")}
    env["OMP_NUM_THREADS"] = "1"
    args = [os.path.join(BIN, "torchrun"), "--standalone", f"--nproc-per-node={ranks}",
            os.path.join(ROOT, "examples", "train_ddp.py"), "--steps", str(steps), "--times", times]
    wal = os.path.join(tmp, f"wal-{tag}")
    if with_distwal:
        env["DISTWAL_DIR"] = wal
    else:
        args.append("--no-distwal")
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    result = {}
    for rank in range(ranks):
        with open(f"{times}.{rank}") as f:
            result[rank] = [float(line) for line in f if line.strip()]
    leader = None
    if with_distwal:
        import orjson

        try:
            with open(os.path.join(wal, "leader.json"), "rb") as f:
                leader = orjson.loads(f.read()).get("rank")
        except (OSError, ValueError):
            leader = None
    return result, leader


def main(short: bool = False) -> str:
    missing = _have_torch()
    report = Report()
    if missing:
        report.table(["case", "result"], [["training overhead", f"not measured: {missing}"]], align="ll")
        return report.markdown()
    ranks, steps, reps = (2, 40, 1) if short else (4, 1000, 3)
    tmp = tempfile.mkdtemp(prefix="distwal-overhead-")
    with_times: dict[int, list[float]] = {r: [] for r in range(ranks)}
    without_times: dict[int, list[float]] = {r: [] for r in range(ranks)}
    leaders = []
    started = time.perf_counter()
    try:
        for rep in range(reps):
            order = [True, False] if rep % 2 == 0 else [False, True]
            for with_distwal in order:
                tag = f"{rep}-{'on' if with_distwal else 'off'}"
                got, leader = _run(ranks, steps, with_distwal, tmp, tag)
                warm = steps // 10  # the first steps warm up allocators and gloo
                for rank, values in got.items():
                    (with_times if with_distwal else without_times)[rank].extend(values[warm:])
                if with_distwal:
                    leaders.append(leader)
            print(f"overhead: repetition {rep + 1}/{reps} done", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    overheads = []
    for rank in range(ranks):
        off = statistics.median(without_times[rank])
        on = statistics.median(with_times[rank])
        overheads.append(on / off - 1)
        lead = " (led shipping)" if rank in leaders else ""
        rows.append([f"{rank}{lead}", f"{off * 1e3:.3f}", f"{on * 1e3:.3f}", f"{overheads[-1] * 100:+.2f}%"])
    all_off = statistics.median([t for r in range(ranks) for t in without_times[r]])
    all_on = statistics.median([t for r in range(ranks) for t in with_times[r]])
    rows.append(["all", f"{all_off * 1e3:.3f}", f"{all_on * 1e3:.3f}", f"{(all_on / all_off - 1) * 100:+.2f}%"])
    report.table(["rank", "median step, without (ms)", "median step, with distwal (ms)", "overhead"], rows,
                 align="rrrr")
    report.text(
        f"{ranks} ranks (gloo, CPU, torchrun --standalone), {steps} steps each, first {steps // 10} dropped, "
        f"{reps} alternating repetitions ({time.perf_counter() - started:.0f} s); each rank logs one record per "
        f"step (interval mode), the leading rank ships to SQLite from its sender process. "
        f"Leader rank per run: {leaders}. Target at most {TARGET:.0%} overall: "
        f"{verdict(all_on / all_off - 1 <= TARGET)} (worst rank {max(overheads) * 100:+.2f}%). On 2 cores, 4 ranks "
        "and the sender share the CPUs, so the sender's CPU time shows up in the step times.", show=True)
    return report.markdown()
