"""Prototype measurement for a writer whose appends land in the page cache (issue: nothing lost
on SIGKILL at the cost of a memory write). Measure first, then decide.

The same 109-byte record as benchmarks/append.py is logged, in one run, through:

  raw             f.write(orjson.dumps(r) + b"\\n") into a buffered file (the baseline)
  distwal         today's writer, `interval` mode (memory buffer, group commit by a flusher)
  mapped+crc      the prototype: orjson.dumps, then the framed record copied into a MAP_SHARED
                  mapping of a posix_fallocate'd, prefaulted region; header (length, CRC-32 of
                  the body, ts) written after the body; a flusher fdatasyncs every 20 ms
  mapped+len      the same without the per-record CRC: the header (length, ts) alone, written
                  last, marks the record complete

Each case runs in a fresh temporary directory; the table gives the median caller cost of
interleaved repetitions and its ratio to raw. The prototype classes live here, not in the
library: they exist to decide whether the library should change.

    python benchmarks/run.py mapped_append    (or: python benchmarks/mapped_append.py [--short])
"""

from __future__ import annotations

import mmap
import os
import statistics
import struct
import tempfile
import threading
import time
import zlib
from itertools import cycle, islice
from typing import Any, Callable

import orjson
from _report import Report

import distwal

RECORD = {"type": "metric", "rank": 3, "step": 42, "ts": 1732200000.123,
          "data": {"loss": 0.4321, "lr": 0.0003, "grad_norm": 1.234}}  # fmt: skip
REGION = 256 << 20  # bytes mapped ahead: large enough that no case rotates in the window
INTERVAL = 0.02  # seconds between group commits, distwal's default
PREFAULT_AHEAD = 8 << 20  # bytes mapped writable ahead of the caller: 20 ms at 400 MB/s
MADV_POPULATE_WRITE = 23  # linux/mman.h; the mmap module names it only from Python 3.13 on
pc = time.perf_counter


class MappedAppender:
    """log() copies a framed record into a shared mapping; a thread fdatasyncs every INTERVAL."""

    HEADER_CRC = struct.Struct("<IId")  # length, crc32(body), ts
    HEADER_LEN = struct.Struct("<Id")  # length, ts

    def __init__(self, path: str, crc: bool) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.posix_fallocate(self.fd, 0, REGION)  # a full disk fails here, never as SIGBUS later
        self.map = mmap.mmap(self.fd, REGION, mmap.MAP_SHARED)
        self.prefaulted = 0
        self._prefault(0)
        self.header = self.HEADER_CRC if crc else self.HEADER_LEN
        self.crc = crc
        self.pos = 0
        self.seq = 0
        self.lock = threading.Lock()
        self.durable_pos = 0
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._commit_loop, daemon=True)
        self._flusher.start()

    def _prefault(self, pos: int) -> None:
        # A write fault on a fresh page costs the caller a trip into the kernel (on NFS a
        # round trip): map the pages ahead writable without touching their bytes
        # (MADV_POPULATE_WRITE, Linux 5.14). Writing zeros instead would dirty the whole region
        # and every fdatasync would write it out again.
        want = min(REGION, (pos + PREFAULT_AHEAD) // mmap.PAGESIZE * mmap.PAGESIZE)
        if want > self.prefaulted:
            self.map.madvise(MADV_POPULATE_WRITE, self.prefaulted, want - self.prefaulted)
            self.prefaulted = want

    def log(self, record: Any) -> int:
        body = orjson.dumps(record)
        n = len(body)
        size = self.header.size + n
        with self.lock:
            pos = self.pos
            start = pos + self.header.size
            self.map[start : start + n] = body
            if self.crc:
                self.header.pack_into(self.map, pos, n, zlib.crc32(body), time.time())
            else:
                self.header.pack_into(self.map, pos, n, time.time())
            self.pos = pos + size
            self.seq += 1
            return self.seq

    def _commit_loop(self) -> None:
        while not self._stop.wait(INTERVAL):
            target = self.pos
            self._prefault(target)
            if target > self.durable_pos:
                os.fdatasync(self.fd)
                self.durable_pos = target

    def close(self) -> None:
        self._stop.set()
        self._flusher.join()
        os.fdatasync(self.fd)
        self.map.close()
        os.close(self.fd)


def _steps(n: int) -> Any:
    return islice(cycle(range(10, 100)), n)


def case_raw(n: int, tmp: str) -> float:
    with open(os.path.join(tmp, "raw.jsonl"), "wb") as f:
        write, dumps, record = f.write, orjson.dumps, dict(RECORD)
        t0 = pc()
        for step in _steps(n):
            record["step"] = step
            write(dumps(record) + b"\n")
        return pc() - t0


def _timed_log(log: Callable[[Any], Any], n: int) -> float:
    record = dict(RECORD)
    t0 = pc()
    for step in _steps(n):
        record["step"] = step
        log(record)
    return pc() - t0


def case_distwal(n: int, tmp: str) -> float:
    os.environ["DISTWAL_DISABLE_SENDER"] = "1"
    w = distwal.init(dir=os.path.join(tmp, "d"), durability="interval")
    try:
        return _timed_log(w.log, n)
    finally:
        w.finish(timeout=30)


def case_mapped(crc: bool) -> Callable[[int, str], float]:
    def run(n: int, tmp: str) -> float:
        appender = MappedAppender(os.path.join(tmp, "seg.wal"), crc=crc)
        try:
            return _timed_log(appender.log, n)
        finally:
            appender.close()

    return run


CASES: dict[str, Callable[[int, str], float]] = {
    "raw": case_raw,
    "distwal interval": case_distwal,
    "mapped+crc": case_mapped(crc=True),
    "mapped+len": case_mapped(crc=False),
}


def main(short: bool) -> str:
    n, reps = (100_000, 3) if short else (1_000_000, 7)
    costs: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(reps):
        for name, case in CASES.items():  # interleaved: drift hits every case alike
            with tempfile.TemporaryDirectory(prefix="distwal-mapped-") as tmp:
                costs[name].append(case(n, tmp) / n * 1e6)
    # The ratio is taken within each repetition (same moment, same load), then the median.
    rows = [[name, f"{statistics.median(values):.3f}",
             f"{statistics.median(v / r for v, r in zip(values, costs['raw'])):.2f}x",
             f"{min(values):.3f} to {max(values):.3f}"] for name, values in costs.items()]
    report = Report()
    report.table(["case", "caller us/record (median)", "vs raw (median of per-run ratios)", "range us"], rows,
                 align="lrrr")
    report.text(f"{n:,} records of 109 bytes per run, {reps} interleaved runs.", show=True)
    return report.markdown()
