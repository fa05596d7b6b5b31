"""The append benchmark: what it costs a caller to log one record, and how fast records become durable.

Every case appends the same 109-byte record, built afresh in the loop body as a training loop
would; each figure is the median of interleaved runs, each in a fresh temporary directory.
benchmarks/README.md ("append") says how every column is measured. Run it through run.py:
`python benchmarks/run.py [--short] append`.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from itertools import cycle, islice
from typing import Any, Callable

import orjson
from _report import Report, spread, times

import distwal

HERE = os.path.dirname(os.path.abspath(__file__))
WEAVE_VENV = os.path.join(HERE, ".venv-weave")
WEAVE_REQUIREMENT = "weave>=0.54,<0.55"  # 0.54.x: the closest peer (per-process JSONL WAL with batched fsync)
WEAVE_SCRIPT = os.path.join(HERE, "_weave_append.py")
RECORD = {"type": "metric", "rank": 3, "step": 42, "ts": 1732200000.123,
          "data": {"loss": 0.4321, "lr": 0.0003, "grad_norm": 1.234}}  # fmt: skip
RECORD_BYTES = len(orjson.dumps(RECORD))
BUFFER_BOUND_MIB = 64  # distwal's default max_buffer_bytes
try:
    from distwal._config import DEFAULT_INTERVAL

    INTERVAL_MS = DEFAULT_INTERVAL * 1e3
except ImportError:  # internal name changed
    INTERVAL_MS = float("nan")

pc = time.perf_counter


def _steps(n: int) -> Any:
    return islice(cycle(range(10, 100)), n)  # two-digit steps: every record is exactly 109 bytes


@dataclass
class Scale:
    reps: int
    fast: int  # records for the cases that cost about 1 us
    slow: int  # logging and Weave, about 10 us a record
    sync1: int  # sync mode, one thread: one fdatasync per record
    sync8: int  # sync mode, 8 threads in all
    memory: int  # records for the memory row
    memory_reps: int
    memory_long: int  # records for a run long enough to fill the buffer (0: skip)


FULL = Scale(reps=7, fast=1_000_000, slow=200_000, sync1=2_000, sync8=16_000, memory=2_000_000, memory_reps=3,
             memory_long=8_000_000)
SHORT = Scale(reps=3, fast=50_000, slow=20_000, sync1=200, sync8=800, memory=500_000, memory_reps=1, memory_long=0)


# -- counting fdatasync/fsync in this process --------------------------------------------------------------


class _SyncCounter:
    """Wraps os.fdatasync and os.fsync; distwal calls them through the os module, so every call is seen."""

    def __init__(self) -> None:
        self.fdatasync = 0
        self.fsync = 0
        self._real_fdatasync = os.fdatasync
        self._real_fsync = os.fsync
        # While a distwal writer is measured: (time the fdatasync returned, segment index, offset
        # synced to), read from the writer's segment writer without a syscall. The time is taken
        # once the flusher has the GIL back, which is also before it can tell a caller.
        self.writer: Any = None
        self.marks: list[tuple[float, int, int]] = []

    def install(self) -> None:
        real_fdatasync, real_fsync = self._real_fdatasync, self._real_fsync
        now = time.time

        def fdatasync(fd: int) -> None:
            self.fdatasync += 1
            real_fdatasync(fd)
            writer = self.writer
            if writer is not None:
                try:
                    segments = writer._segments
                    self.marks.append((now(), segments.index, segments.offset))
                except AttributeError:  # internal names changed: no time-to-durable figure
                    pass

        def fsync(fd: int) -> None:
            self.fsync += 1
            real_fsync(fd)

        os.fdatasync = fdatasync  # type: ignore[assignment]
        os.fsync = fsync  # type: ignore[assignment]

    def uninstall(self) -> None:
        os.fdatasync = self._real_fdatasync  # type: ignore[assignment]
        os.fsync = self._real_fsync  # type: ignore[assignment]

    def snapshot(self) -> tuple[int, int]:
        return self.fdatasync, self.fsync


SYNCS = _SyncCounter()


# -- the loops ------------------------------------------------------------------------------------------
# Each loop builds the record literal inline (no helper call), so every case pays the same for it.


def _loop_floor(n: int) -> None:
    for step in _steps(n):
        {"type": "metric", "rank": 3, "step": step, "ts": 1732200000.123,
         "data": {"loss": 0.4321, "lr": 0.0003, "grad_norm": 1.234}}  # fmt: skip


def _loop_raw(write: Callable[[bytes], Any], n: int) -> None:
    dumps = orjson.dumps
    for step in _steps(n):
        write(dumps({"type": "metric", "rank": 3, "step": step, "ts": 1732200000.123,
                     "data": {"loss": 0.4321, "lr": 0.0003, "grad_norm": 1.234}}) + b"\n")  # fmt: skip


def _loop_call(call: Callable[[Any], Any], n: int) -> None:
    """distwal's log, queue.put: the callable takes the dict."""
    for step in _steps(n):
        call({"type": "metric", "rank": 3, "step": step, "ts": 1732200000.123,
              "data": {"loss": 0.4321, "lr": 0.0003, "grad_norm": 1.234}})  # fmt: skip


def _loop_call_timed(call: Callable[[Any], Any], n: int, latencies: list[float]) -> None:
    """As _loop_call, timing every call (for sync mode, where a call is hundreds of us)."""
    append = latencies.append
    for step in _steps(n):
        start = pc()
        call({"type": "metric", "rank": 3, "step": step, "ts": 1732200000.123,
              "data": {"loss": 0.4321, "lr": 0.0003, "grad_norm": 1.234}})  # fmt: skip
        append(pc() - start)


def _loop_logging(info: Callable[[str], Any], n: int) -> None:
    dumps = json.dumps
    for step in _steps(n):
        info(dumps({"type": "metric", "rank": 3, "step": step, "ts": 1732200000.123,
                    "data": {"loss": 0.4321, "lr": 0.0003, "grad_norm": 1.234}}, separators=(",", ":")))  # fmt: skip


def _in_threads(threads: int, n: int, body: Callable[[int, int], None]) -> tuple[float, float]:
    """Run body(thread_index, records) in `threads` threads released together; (t0, t_last_done)."""
    per = n // threads
    barrier = threading.Barrier(threads + 1)
    ends = [0.0] * threads
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            body(i, per)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        ends[i] = pc()

    workers = [threading.Thread(target=run, args=(i,), name=f"bench-{i}") for i in range(threads)]
    for t in workers:
        t.start()
    time.sleep(0.05)  # let every thread reach the barrier: the main thread arrives last
    t0 = pc()
    barrier.wait()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
    return t0, max(ends)


# -- the cases ------------------------------------------------------------------------------------------


def case_floor(n: int, tmp: str) -> dict[str, Any]:
    t0 = pc()
    _loop_floor(n)
    t1 = pc()
    return {"n": n, "caller_s": t1 - t0, "total_s": t1 - t0}


def case_raw(n: int, tmp: str) -> dict[str, Any]:
    f = open(os.path.join(tmp, "raw.jsonl"), "ab")
    t0 = pc()
    _loop_raw(f.write, n)
    t1 = pc()
    f.flush()
    t2 = pc()
    os.fdatasync(f.fileno())
    t3 = pc()
    f.close()
    return {"n": n, "caller_s": t1 - t0, "total_s": t2 - t0, "durable_s": t3 - t0}


def case_raw_threads(threads: int) -> Callable[[int, str], dict[str, Any]]:
    """Raw writes from several threads into one buffered file (its internal lock serializes them)."""

    def run(n: int, tmp: str) -> dict[str, Any]:
        n -= n % threads
        f = open(os.path.join(tmp, "raw.jsonl"), "ab")
        t0, t1 = _in_threads(threads, n, lambda i, per: _loop_raw(f.write, per))
        f.flush()
        t2 = pc()
        f.close()
        return {"n": n, "caller_s": t1 - t0, "total_s": t2 - t0}

    return run


def _readback(root: str, marks: list[tuple[float, int, int]]) -> dict[str, Any] | None:
    """Records, blocks and damaged spans on disk under a distwal directory, and each record's time to durable.

    Time to durable: from the record's log() timestamp (stored in its block) to the first
    fdatasync of its segment that covered the end of its block (from `marks`). None if the
    reader is unavailable.
    """
    try:
        from distwal import _folder
        from distwal._segment import Block

        records = blocks = damaged = 0
        lags: list[float] = []
        synced: dict[int, list[tuple[int, float]]] = {}
        for when, segment, offset in marks:
            synced.setdefault(segment, []).append((offset, when))
        for writer in _folder.list_writers(root):
            for item in _folder.iter_items(writer.path):
                if not isinstance(item, Block):
                    damaged += 1
                    continue
                blocks += 1
                records += len(item.lines)
                done = min((when for offset, when in synced.get(item.segment, ()) if offset >= item.end), default=None)
                if done is not None:
                    lags.extend(done - ts for ts in item.ts)
        out: dict[str, Any] = {"read_records": records, "read_blocks": blocks, "read_damaged": damaged}
        if marks and len(lags) == records and records:
            lags.sort()
            out["durable_p50_ms"] = lags[len(lags) // 2] * 1e3
            out["durable_p99_ms"] = lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1e3
            out["durable_max_ms"] = lags[-1] * 1e3
        return out
    except Exception:  # noqa: BLE001 - the reader is internal and may change; the row says so
        return None


def case_distwal(mode: str, threads: int) -> Callable[[int, str], dict[str, Any]]:
    def run(n: int, tmp: str) -> dict[str, Any]:
        n -= n % threads
        root = os.path.join(tmp, "wal")
        w = distwal.init(dir=root, durability=mode, disable_sender=True)
        try:
            return _measure_writer(w, mode, threads, n, root)
        finally:
            w.finish(timeout=60)
            distwal_reset_env()

    return run


def _measure_writer(w: Any, mode: str, threads: int, n: int, root: str) -> dict[str, Any]:
    """Log n records through w from `threads` threads, flush, finish, read back."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    timed = mode == "sync"
    SYNCS.marks = []
    SYNCS.writer = w if mode == "interval" else None
    fd0, fs0 = SYNCS.snapshot()
    if threads == 1:
        t0 = pc()
        if timed:
            _loop_call_timed(w.log, n, latencies[0])
        else:
            _loop_call(w.log, n)
        t1 = pc()
    else:

        def body(i: int, per: int) -> None:
            if timed:
                _loop_call_timed(w.log, per, latencies[i])
            else:
                _loop_call(w.log, per)

        t0, t1 = _in_threads(threads, n, body)
    ok = w.flush(timeout=300)
    t2 = pc()
    fd1, fs1 = SYNCS.snapshot()
    SYNCS.writer = None
    seq = w.seq
    finished = w.finish(timeout=60)
    result: dict[str, Any] = {
        "n": n,
        "caller_s": t1 - t0,
        "total_s": t2 - t0,
        "fdatasyncs": fd1 - fd0,
        "fsyncs": fs1 - fs0,
        "flush_ok": ok and finished and seq == n,
    }
    if timed:
        flat = sorted(x for lat in latencies for x in lat)
        result["lat_p50_us"] = flat[len(flat) // 2] * 1e6
        result["lat_p99_us"] = flat[min(len(flat) - 1, int(len(flat) * 0.99))] * 1e6
    back = _readback(root, SYNCS.marks)
    if back is not None:
        result.update(back)
    return result


def distwal_reset_env() -> None:
    """init() exports DISTWAL_DIR/SINK/RUN_ID for child processes: keep them from leaking into the next case."""
    for name in ("DISTWAL_DIR", "DISTWAL_SINK", "DISTWAL_RUN_ID"):
        os.environ.pop(name, None)


def _queue_writer(path: str) -> tuple[queue.Queue[Any], threading.Thread]:
    """The common pattern: the caller puts the dict on a queue.Queue, a worker thread serializes and
    writes it (until it gets None)."""
    q: queue.Queue[Any] = queue.Queue()

    def worker() -> None:
        with open(path, "ab") as f:
            get, write, dumps = q.get, f.write, orjson.dumps
            while True:
                r = get()
                if r is None:
                    break
                write(dumps(r) + b"\n")

    t = threading.Thread(target=worker, name="bench-queue-worker")
    t.start()
    return q, t


def case_queue(n: int, tmp: str) -> dict[str, Any]:
    q, t = _queue_writer(os.path.join(tmp, "queue.jsonl"))
    t0 = pc()
    _loop_call(q.put, n)
    t1 = pc()
    backlog = q.qsize()
    q.put(None)
    t.join()
    t2 = pc()
    return {"n": n, "caller_s": t1 - t0, "total_s": t2 - t0, "backlog": backlog}


def case_logging(n: int, tmp: str) -> dict[str, Any]:
    """stdlib logging: a FileHandler (it flushes after every record) and json.dumps, compact, so the same line."""
    logger = logging.getLogger(f"bench.append.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(os.path.join(tmp, "logging.jsonl"))
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    try:
        t0 = pc()
        _loop_logging(logger.info, n)
        t1 = pc()
        handler.flush()
        t2 = pc()
    finally:
        logger.removeHandler(handler)
        handler.close()
    return {"n": n, "caller_s": t1 - t0, "total_s": t2 - t0}


class WeaveUnavailable(Exception):
    pass


def _weave_python() -> str:
    return os.path.join(WEAVE_VENV, "bin", "python")


def ensure_weave_venv(create: bool) -> str:
    """The python of benchmarks/.venv-weave with Weave importable; raise WeaveUnavailable with the reason."""
    python = _weave_python()
    if not os.path.exists(python):
        if not create:
            raise WeaveUnavailable(
                "not measured: benchmarks/.venv-weave does not exist (--short never creates it; "
                "run `python benchmarks/run.py` once)"
            )
        print(f"append: creating {WEAVE_VENV} with {WEAVE_REQUIREMENT} ...", file=sys.stderr, flush=True)
        steps = [
            [sys.executable, "-m", "venv", WEAVE_VENV],
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", WEAVE_REQUIREMENT],
        ]
        for cmd in steps:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                lines = [x for x in (done.stderr or done.stdout).splitlines() if x.strip() and "WARNING" not in x]
                reason = lines[-1] if lines else f"exit code {done.returncode}"
                raise WeaveUnavailable(f"not measured: `{' '.join(cmd[2:4])}` failed: {reason[:200]}")
    check = subprocess.run(
        [python, "-c", "import weave.durability.wal_writer, weave.durability.wal_directory_manager"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check.returncode != 0:
        lines = [x for x in check.stderr.splitlines() if x.strip()]
        reason = lines[-1] if lines else f"exit code {check.returncode}"
        raise WeaveUnavailable(f"not measured: weave.durability.wal_writer does not import: {reason[:200]}")
    return python


def case_weave(python: str) -> Callable[[int, str], dict[str, Any]]:
    def run(n: int, tmp: str) -> dict[str, Any]:
        done = subprocess.run(
            [python, WEAVE_SCRIPT, "--n", str(n), "--dir", os.path.join(tmp, "weave")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            lines = [x for x in done.stderr.splitlines() if x.strip()]
            raise WeaveUnavailable(f"not measured: the Weave run failed: {lines[-1] if lines else done.returncode}")
        out = json.loads(done.stdout.strip().splitlines()[-1])
        return out

    return run


# -- memory: a fresh process, so the peak RSS is this run's -------------------------------------------


def _memory_child(kind: str, n: int, root: str) -> None:
    import resource

    def status_kib(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def start_peak() -> int:
        """The RSS now, with the peak reset to it (clear_refs 5 resets VmHWM), so the import peak is not counted."""
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        return status_kib("VmRSS")

    def peak() -> int:
        return status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    if kind == "distwal":
        w = distwal.init(dir=root, durability="interval", disable_sender=True)
        base = start_peak()
        t0 = pc()
        _loop_call(w.log, n)
        t1 = pc()
        w.flush(timeout=300)
        t2 = pc()
        top = peak()
        w.finish()
    else:  # the queue.Queue pattern, for comparison
        os.makedirs(root, exist_ok=True)
        q, t = _queue_writer(os.path.join(root, "queue.jsonl"))
        base = start_peak()
        t0 = pc()
        _loop_call(q.put, n)
        t1 = pc()
        q.put(None)
        t.join()
        t2 = pc()
        top = peak()
    print(json.dumps({"n": n, "caller_s": t1 - t0, "total_s": t2 - t0, "base_kib": base,
                      "peak_kib": top, "growth_kib": top - base, "end_rss_kib": status_kib("VmRSS")}))  # fmt: skip


def run_memory(kind: str, n: int, tmp: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory-child", kind, str(n), os.path.join(tmp, "mem")],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith("DISTWAL_")},
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory child failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- orchestration ------------------------------------------------------------------------------------


@dataclass
class Case:
    key: str
    label: str
    run: Callable[[int, str], dict[str, Any]] | None
    size: str  # which Scale field gives its records
    unavailable: str | None = None
    error: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)

    def median(self, name: str) -> float | None:
        values = [r[name] for r in self.results if r.get(name) is not None]
        return statistics.median(values) if values else None

    def per_record_us(self, name: str = "caller_s") -> list[float]:
        return [r[name] / r["n"] * 1e6 for r in self.results]

    def rates(self, name: str = "total_s") -> list[float]:
        return [r["n"] / r[name] for r in self.results]


def build_cases(short: bool) -> list[Case]:
    cases = [
        Case("floor", "loop floor: build the dict only", case_floor, "fast"),
        Case("raw", "raw f.write(orjson.dumps(r)+b\"\\n\") (baseline)", case_raw, "fast"),
        Case("none1", "distwal none, 1 thread", case_distwal("none", 1), "fast"),
        Case("interval1", "distwal interval, 1 thread", case_distwal("interval", 1), "fast"),
        Case("sync1", "distwal sync, 1 thread", case_distwal("sync", 1), "sync1"),
        Case("raw8", "raw f.write, 8 threads (reference for the 8-thread rows)", case_raw_threads(8), "fast"),
        Case("none8", "distwal none, 8 threads", case_distwal("none", 8), "fast"),
        Case("interval8", "distwal interval, 8 threads", case_distwal("interval", 8), "fast"),
        Case("sync8", "distwal sync, 8 threads", case_distwal("sync", 8), "sync8"),
        Case("queue", "queue.Queue hand-off to a writer thread", case_queue, "fast"),
        Case("logging", "stdlib logging FileHandler + json.dumps", case_logging, "slow"),
    ]
    try:
        python = ensure_weave_venv(create=not short)
        cases.append(Case("weave", "Weave 0.54 JSONLWALWriter", case_weave(python), "slow"))
    except WeaveUnavailable as exc:
        cases.append(Case("weave", "Weave 0.54 JSONLWALWriter", None, "slow", unavailable=str(exc)))
    except (OSError, subprocess.SubprocessError) as exc:
        cases.append(Case("weave", "Weave 0.54 JSONLWALWriter", None, "slow", unavailable=f"not measured: {exc}"))
    return cases


def measure(short: bool) -> tuple[list[Case], dict[str, list[dict[str, Any]]], Scale]:
    scale = SHORT if short else FULL
    cases = build_cases(short)
    runnable = [c for c in cases if c.run is not None]
    base = tempfile.mkdtemp(prefix="distwal-bench-append-")
    SYNCS.install()
    try:
        for rep in range(scale.reps):
            # Interleaved: each repetition runs every case once, starting one further along.
            order = runnable[rep % len(runnable):] + runnable[: rep % len(runnable)]
            for case in order:
                if case.run is None:
                    continue
                tmp = tempfile.mkdtemp(dir=base)
                os.sync()  # the previous case's dirty pages are written back now, not inside this case
                gc.collect()
                try:
                    case.results.append(case.run(getattr(scale, case.size), tmp))
                except WeaveUnavailable as exc:
                    case.run, case.unavailable = None, str(exc)
                except Exception as exc:  # noqa: BLE001 - the row says so; main() fails after printing
                    case.run, case.error = None, f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            print(f"append: repetition {rep + 1}/{scale.reps} done", file=sys.stderr, flush=True)
        memory: dict[str, list[dict[str, Any]]] = {"distwal": [], "queue": [], "long": []}
        runs = [(kind, scale.memory) for _ in range(scale.memory_reps) for kind in ("distwal", "queue")]
        if scale.memory_long:
            runs.append(("long", scale.memory_long))
        for kind, n in runs:
            tmp = tempfile.mkdtemp(dir=base)
            os.sync()
            try:
                memory[kind].append(run_memory("distwal" if kind == "long" else kind, n, tmp))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        print("append: memory runs done", file=sys.stderr, flush=True)
    finally:
        SYNCS.uninstall()
        shutil.rmtree(base, ignore_errors=True)
    return cases, memory, scale


def _fmt_us(values: list[float]) -> str:
    med = statistics.median(values)
    return spread(values, f".{2 if med < 10 else 1 if med < 1000 else 0}f")


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _readback_note(case: Case) -> str:
    bad = []
    for r in case.results:
        if "read_records" not in r:
            return "readback unavailable"
        if r["read_records"] != r["n"] or r["read_damaged"] or not r["flush_ok"]:
            bad.append(f"{r['read_records']}/{r['n']} read back, {r['read_damaged']} damaged, flush ok={r['flush_ok']}")
    return "every record read back" if not bad else "PROBLEM: " + "; ".join(bad)


def build_rows(cases: list[Case], memory: dict[str, list[dict[str, Any]]], scale: Scale) -> tuple[list[list[str]], dict[str, Any]]:
    by_key = {c.key: c for c in cases}
    raw_us = statistics.median(by_key["raw"].per_record_us()) if by_key["raw"].results else None
    facts: dict[str, Any] = {"raw_us": raw_us}
    rows: list[list[str]] = []
    for case in cases:
        if case.error or not case.results:
            rows.append([case.label, "-", "-", "-", f"FAILED: {case.error}" if case.error else case.unavailable or "no result"])
            continue
        caller = case.per_record_us()
        caller_med = statistics.median(caller)
        facts[f"{case.key}_us"] = caller_med
        ratio = times(caller_med, raw_us)
        rate = statistics.median(case.rates())
        facts[f"{case.key}_rate"] = rate
        n = case.results[0]["n"]
        notes: list[str] = []
        if case.key == "floor":
            notes.append("not a logger: the loop and the record dict, which every row includes")
            rate_cell = "-"
        else:
            rate_cell = _fmt_rate(rate)
        if case.key == "raw8":
            notes.append("one buffered file shared by 8 threads; throughput until f.flush(); not durable")
        if case.key == "raw":
            durable = statistics.median(case.rates("durable_s"))
            notes.append(f"written to the OS, not durable; with one final fdatasync: {durable:,.0f} rec/s")
        if case.key.startswith(("none", "interval", "sync")):
            fds = case.median("fdatasyncs") or 0
            mode = case.key.rstrip("18")
            if mode == "none":
                notes.append(f"throughput until flush() (written, not fsynced per commit); fdatasyncs in the window: {fds:.0f}")
            else:
                per = n / fds if fds else float("inf")
                facts[f"{case.key}_per_sync"] = per
                if mode == "interval":
                    notes.append(f"throughput until flush() returns (durable); {per:,.0f} records per fdatasync")
                    if case.median("durable_p50_ms") is not None:
                        p50, mx = case.median("durable_p50_ms"), case.median("durable_max_ms")
                        facts[f"{case.key}_durable_p50_ms"], facts[f"{case.key}_durable_max_ms"] = p50, mx
                        notes.append(
                            f"time from log() to durable: p50 {p50:.0f} ms, p99 {case.median('durable_p99_ms'):.0f} ms, "
                            f"max {mx:.0f} ms (commit interval {INTERVAL_MS:.0f} ms)"
                        )
                else:
                    p50 = statistics.median(r["lat_p50_us"] for r in case.results)
                    p99 = statistics.median(r["lat_p99_us"] for r in case.results)
                    blocks = case.median("read_blocks")
                    notes.append(
                        f"every log() returns durable; {per:,.1f} records per fdatasync ({fds:.0f} counted by "
                        f"wrapping os.fdatasync; {blocks:.0f} blocks on disk); log() latency p50 {p50:.0f} us, "
                        f"p99 {p99:.0f} us"
                    )
            notes.append(_readback_note(case))
        if case.key == "queue":
            backlog = case.median("backlog") or 0
            notes.append(
                f"caller side; throughput = drained and written (not durable); unbounded: "
                f"{backlog:,.0f} of {n:,} records still queued when the caller finished"
            )
        if case.key == "logging":
            notes.append("FileHandler flushes (write syscall) every record; throughput until written; not durable")
        if case.key == "weave":
            r0 = case.results[0]
            fs = case.median("fsyncs") or 0
            facts["weave_per_sync"] = n / fs if fs else float("inf")
            notes.append(
                f"weave {r0['version']} in its own venv, via subprocess; defaults: os.fsync every 64 writes or 0.5 s "
                f"({n / fs if fs else 0:,.0f} records per fsync); json.dumps + write + flush() per record; "
                "throughput until flush() (fsync)"
            )
        if len(case.results) > 1 and case.key not in ("floor",):
            spread = case.rates()
            notes.append(f"throughput range {min(spread):,.0f}-{max(spread):,.0f}")
        rows.append([case.label, _fmt_us(caller), ratio, rate_cell, "; ".join(notes)])
    # memory
    if memory["distwal"]:
        grow = [m["growth_kib"] / 1024 for m in memory["distwal"]]
        caller = [m["caller_s"] / m["n"] * 1e6 for m in memory["distwal"]]
        rate = statistics.median(m["n"] / m["total_s"] for m in memory["distwal"])
        n = memory["distwal"][0]["n"]
        facts["memory_growth_mib"] = statistics.median(grow)
        q = memory["queue"]
        qgrow = statistics.median(m["growth_kib"] / 1024 for m in q) if q else None
        facts["queue_growth_mib"] = qgrow
        payload_mib = n * RECORD_BYTES / 2**20
        rows.append(
            [
                f"memory: distwal interval, {n:,} records as fast as possible",
                _fmt_us(caller),
                times(statistics.median(caller), raw_us),
                _fmt_rate(rate),
                f"peak RSS growth {statistics.median(grow):.1f} MiB (range {min(grow):.1f}-{max(grow):.1f}; "
                f"fresh process, VmHWM after resetting it) for {payload_mib:.0f} MiB of records; buffer bound {BUFFER_BOUND_MIB} MiB"
                + (f"; the queue.Queue pattern, same records: {qgrow:.0f} MiB" if qgrow is not None else ""),
            ]
        )
    if memory["long"]:
        m = memory["long"][0]
        growth = m["growth_kib"] / 1024
        facts["memory_long_growth_mib"] = growth
        rows.append(
            [
                f"memory: distwal interval, {m['n']:,} records (long enough to fill the buffer)",
                _fmt_us([m["caller_s"] / m["n"] * 1e6]),
                times(m["caller_s"] / m["n"] * 1e6, raw_us),
                _fmt_rate(m["n"] / m["total_s"]),
                f"peak RSS growth {growth:.1f} MiB for {m['n'] * RECORD_BYTES / 2**20:.0f} MiB of records (one run); "
                "caller cost includes waiting when the buffer is full (on_full=block)",
            ]
        )
    return rows, facts


def targets(facts: dict[str, Any], cases: list[Case]) -> list[str]:
    out = []
    raw, interval = facts.get("raw_us"), facts.get("interval1_us")
    if raw and interval:
        ratio = interval / raw
        out.append(
            f"distwal `interval` caller cost within 1.5x of raw: **{'met' if ratio <= 1.5 else 'NOT met'}** "
            f"({interval:.2f} us vs {raw:.2f} us, {ratio:.2f}x)"
        )
    weave = facts.get("weave_us")
    if weave and interval:
        factor = weave / interval
        out.append(
            f"distwal `interval` >= 10x faster than Weave's writer: **{'met' if factor >= 10 else 'NOT met'}** "
            f"({weave:.2f} us vs {interval:.2f} us, {factor:.1f}x)"
        )
    elif interval:
        reason = next((c.unavailable for c in cases if c.key == "weave"), None) or "no Weave result"
        out.append(f"distwal `interval` >= 10x faster than Weave's writer: **not checked** ({reason})")
    s1, s8 = facts.get("sync1_per_sync"), facts.get("sync8_per_sync")
    if s8 is not None:
        verdict = "met" if s8 >= 6 else "partly met" if s8 >= 2 else "NOT met"  # 8 threads wait: 8 is the ideal
        out.append(
            f"sync with 8 threads shares fdatasyncs: **{verdict}** ({s8:.1f} records per fdatasync with 8 threads, "
            f"{s1:.1f} with 1; at most 8, one per waiting thread; throughput "
            f"{facts.get('sync8_rate', 0):,.0f} vs {facts.get('sync1_rate', 0):,.0f} rec/s)"
        )
    grow = facts.get("memory_growth_mib")
    if grow is not None:
        limit = BUFFER_BOUND_MIB * 1.25
        worst = max(grow, facts.get("memory_long_growth_mib", 0.0))
        long_note = (
            f", {facts['memory_long_growth_mib']:.1f} MiB over the long run"
            if "memory_long_growth_mib" in facts
            else ""
        )
        out.append(
            f"memory bounded: **{'met' if worst <= limit else 'NOT met'}** (peak RSS growth {grow:.1f} MiB{long_note}; "
            f"buffer bound {BUFFER_BOUND_MIB} MiB of payload, plus 8 bytes of timestamp per record; "
            f"pass mark {limit:.0f} MiB)"
        )
    return out


def main(short: bool = False) -> str:
    """Run the append benchmark; print the table; return it (with the targets) as markdown."""
    cases, memory, scale = measure(short)
    rows, facts = build_rows(cases, memory, scale)
    failed = [f"{c.label}: {c.error}" for c in cases if c.error]
    report = Report()
    report.text(
        f"Record: {RECORD_BYTES} bytes of JSON (+ newline). {scale.reps} interleaved repetitions, median (range in "
        f"brackets); records per run: {scale.fast:,} (fast cases), {scale.slow:,} (logging, Weave), {scale.sync1:,} "
        f"(sync, 1 thread), {scale.sync8:,} (sync, 8 threads); memory: {scale.memory:,} records x {scale.memory_reps}"
        + (f", then {scale.memory_long:,} records once." if scale.memory_long else ".")
    )
    report.table(["case", "caller us/record", "ratio to raw", "throughput rec/s", "notes"], rows, align="lrrrl")
    report.targets(targets(facts, cases))
    if failed:
        raise RuntimeError("append: cases failed: " + "; ".join(failed))
    return report.markdown()


if __name__ == "__main__":  # the memory rows' fresh process; the benchmark itself runs through run.py
    _memory_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
