"""The OTLP benchmark: records/s into an OTLP/HTTP receiver through the OTLP sink, against the raw limit.

One run, real processes on this host (child roles in _otlp_child.py):

  - a backlog: W writers x N records of append.py's 109-byte record, written with
    DISTWAL_DISABLE_SENDER=1 in interval mode, each writer finished (ship.py's backlog role);
  - the receiver: tests/helpers/otlp.py's OTLPReceiver in its own process, gunzipping and
    parsing every ExportLogsServiceRequest with opentelemetry-proto (as a collector does) and
    counting its records before it answers 200;
  - sink: the library's Sender (led as `distwal drain` leads) with OTLPSink draining a
    hard-linked copy of the backlog into the receiver: reading, checking, encoding, gzip, POST;
    and the same with one request per batch, so that nothing overlaps (OTLPSink otherwise
    encodes each request of a batch while the one before is on the wire);
  - raw: the same records as pre-built ExportLogsServiceRequest bytes (the very requests the
    Sender sends, built ahead and not timed), POSTed by the same kind of httpx client with
    gzip level 1 in the loop, as OTLPSink does: the cost of getting these records into the
    receiver with reading and encoding taken away;
  - encode: encode_request() alone over the same batches (us per record).

Target: the sink within 2x of raw. Run it through run.py:
`python benchmarks/run.py [--short] otlp`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from _report import Report, spread
from helpers.procs import Child
from ship import child, end, hard_copy, make_backlog, reap_all

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
OTLP_CHILD = os.path.join(HERE, "_otlp_child.py")
TARGET = 2.0  # the sink within 2x of raw


@dataclass
class Scale:
    reps: int
    writers: int
    per_writer: int


FULL = Scale(reps=5, writers=8, per_writer=50_000)
SHORT = Scale(reps=1, writers=4, per_writer=10_000)


def _job(worker: Child, receiver_pid: int, job: dict[str, Any]) -> dict[str, Any]:
    """Run one worker job; add the receiver's CPU seconds spent meanwhile ("rx_cpu_s")."""
    import psutil

    receiver = psutil.Process(receiver_pid)
    before = sum(receiver.cpu_times()[:2])
    worker.send(json.dumps(job))
    result = worker.next_json(timeout=1800)
    result["rx_cpu_s"] = sum(receiver.cpu_times()[:2]) - before
    return result


def _per_record(results: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] / r["n"] * 1e6 for r in results]


def main(short: bool = False) -> str:
    """Run the OTLP benchmark; print the table; return it (with the target) as markdown."""
    scale = SHORT if short else FULL
    base = tempfile.mkdtemp(prefix="distwal-bench-otlp-")
    started = time.monotonic()
    results: dict[str, list[dict[str, Any]]] = {"sink": [], "serial": [], "raw": [], "encode": []}
    built: dict[str, Any] = {}
    try:
        receiver = child(argv=[PY, OTLP_CHILD, "receiver"])
        hello = receiver.next_json(timeout=60)
        url, rx = hello["sink_url"], int(hello["pid"])
        backlog = make_backlog(os.path.join(base, "backlog"), scale.writers, scale.per_writer)
        worker = child(argv=[PY, OTLP_CHILD, "worker"])
        worker.next_json(timeout=60)
        build_dir = os.path.join(base, "build")
        hard_copy(backlog.dir, build_dir)
        worker.send(json.dumps({"kind": "build", "dir": build_dir, "url": url}))
        built = worker.next_json(timeout=1800)
        if built.get("n") != backlog.records:
            raise RuntimeError(f"built requests hold {built.get('n')} records, the backlog {backlog.records}")
        for rep in range(scale.reps):  # interleaved, so a burst of load on the machine hits every case
            run_dir = os.path.join(base, f"run{rep}")
            hard_copy(backlog.dir, run_dir)
            got = _job(worker, rx, {"kind": "sender", "dir": run_dir, "url": url, "records": backlog.records})
            if got["n"] != backlog.records:
                raise RuntimeError(f"the sink acknowledged {got['n']} of {backlog.records} records: {got}")
            results["sink"].append(got)
            shutil.rmtree(run_dir, ignore_errors=True)
            hard_copy(backlog.dir, run_dir)  # the same, one request per batch: nothing overlaps
            results["serial"].append(_job(worker, rx, {"kind": "sender", "dir": run_dir, "url": url,
                                                       "records": backlog.records, "request_records": 10**9}))
            shutil.rmtree(run_dir, ignore_errors=True)
            results["raw"].append(_job(worker, rx, {"kind": "raw", "url": url[len("otlp+"):]}))
            worker.send(json.dumps({"kind": "encode"}))
            results["encode"].append(worker.next_json(timeout=1800))
        end(worker)
        end(receiver)
    except Exception:
        reap_all(failed=True)
        raise
    finally:
        reap_all(failed=False)
        shutil.rmtree(base, ignore_errors=True)

    n = built["n"]
    rates = {case: [r["n"] / r["s"] for r in results[case]] for case in ("sink", "serial", "raw")}
    ratios = [raw / sink for sink, raw in zip(rates["sink"], rates["raw"])]
    ratio = statistics.median(ratios)
    # CPU per record, leader and receiver together: what the records cost whatever else runs here.
    cpu_total = {case: [(r["cpu_s"] + r["rx_cpu_s"]) / r["n"] * 1e6 for r in results[case]]
                 for case in ("sink", "serial", "raw")}
    cpu_ratio = statistics.median(cpu_total["sink"]) / statistics.median(cpu_total["raw"])
    encode_us = _per_record(results["encode"], "cpu_s")
    per_record = built["bytes"] / n
    gz_per_record = built["gzip_bytes"] / n
    headers = ["case", "records/s", "leader CPU us/record", "receiver CPU us/record", "notes"]
    notes = {
        "sink": f"{built['requests']} requests; {per_record:.0f} bytes/record of protobuf, {gz_per_record:.1f} gzipped",
        "serial": "request_records above the Sender's batch: encoding and the receiver's parsing take turns",
        "raw": "the same requests, built ahead (not timed)",
    }
    labels = {"sink": "sink: Sender + OTLPSink into the receiver", "serial": "sink, one request per batch (no overlap)",
              "raw": "raw: POST the pre-built requests (gzip in the loop)"}
    rows = [[labels[case], spread(rates[case], ",.0f", "[]"), spread(_per_record(results[case], "cpu_s"), ".2f", "[]"),
             spread(_per_record(results[case], "rx_cpu_s"), ".2f", "[]"), notes[case]] for case in ("sink", "serial", "raw")]
    rows.append(["encode_request() alone", f"{1e6 / statistics.median(encode_us):,.0f}", spread(encode_us, ".2f", "[]"),
                 "-", "CPU time; LogRecords written straight into wire format"])
    met = "met" if ratio <= TARGET else "not met"
    goal = (f"OTLP sink within {TARGET:g}x of POSTing pre-built request bytes: **{ratio:.2f}x** "
            f"(per repetition {', '.join(f'{r:.2f}' for r in ratios)}): {met}; CPU per record, leader and "
            f"receiver together: {statistics.median(cpu_total['sink']):.2f} vs {statistics.median(cpu_total['raw']):.2f}"
            f" us, {cpu_ratio:.2f}x")
    report = Report()
    report.text(f"Backlog: {scale.writers} writers x {scale.per_writer:,} records of 109 bytes (interval mode, "
                f"DISTWAL_DISABLE_SENDER=1, then finish()); every sink run drains a hard-linked copy of it into "
                f"the receiver (its own process, parsing every request); {scale.reps} interleaved repetition"
                f"{'s' if scale.reps > 1 else ''}, median (range in brackets). Ran in "
                f"{time.monotonic() - started:.0f} s.")
    report.table(headers, rows, align="lrrrl")
    report.targets([goal], title="Target:")
    return report.markdown()
