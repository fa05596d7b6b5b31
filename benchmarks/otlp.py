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

Target: the sink within 2x of raw. Run it through run.py (`python benchmarks/run.py [--short]
otlp`) or alone: `python benchmarks/otlp.py [--short]`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from ship import Child, clean_env, hard_copy, kill_all, make_backlog, markdown_table, text_table  # noqa: E402

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


def _child(role: str, log: Any) -> Child:
    return Child([role], clean_env(), log, argv=[PY, OTLP_CHILD, role])


def _job(worker: Child, receiver_pid: int, job: dict[str, Any]) -> dict[str, Any]:
    """Run one worker job; add the receiver's CPU seconds spent meanwhile ("rx_cpu_s")."""
    import psutil

    receiver = psutil.Process(receiver_pid)
    before = sum(receiver.cpu_times()[:2])
    worker.send(json.dumps(job))
    result = worker.read(timeout=1800)
    result["rx_cpu_s"] = sum(receiver.cpu_times()[:2]) - before
    return result


def _per_record(results: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] / r["n"] * 1e6 for r in results]


def _spread(values: list[float], fmt: str) -> str:
    mid = format(statistics.median(values), fmt)
    if len(values) < 2:
        return mid
    return f"{mid} [{format(min(values), fmt)} to {format(max(values), fmt)}]"


def main(short: bool = False) -> str:
    """Run the OTLP benchmark; print the table; return it (with the target) as markdown."""
    scale = SHORT if short else FULL
    base = tempfile.mkdtemp(prefix="distwal-bench-otlp-")
    log_path = os.path.join(base, "children.log")
    log = open(log_path, "w")
    started = time.monotonic()
    results: dict[str, list[dict[str, Any]]] = {"sink": [], "serial": [], "raw": [], "encode": []}
    built: dict[str, Any] = {}
    try:
        receiver = _child("receiver", log)
        hello = receiver.read(timeout=60)
        url, rx = hello["sink_url"], int(hello["pid"])
        backlog = make_backlog(os.path.join(base, "backlog"), scale.writers, scale.per_writer, log)
        worker = _child("worker", log)
        worker.read(timeout=60)
        build_dir = os.path.join(base, "build")
        hard_copy(backlog.dir, build_dir)
        worker.send(json.dumps({"kind": "build", "dir": build_dir, "url": url}))
        built = worker.read(timeout=1800)
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
            results["encode"].append(worker.read(timeout=1800))
        worker.close()
        receiver.close()
    except Exception:
        traceback.print_exc()
        with open(log_path, errors="replace") as f:
            print(f"otlp: children's stderr (last 3000 characters):\n{f.read()[-3000:]}", file=sys.stderr)
        raise
    finally:
        kill_all()
        log.close()
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
    rows = [[labels[case], _spread(rates[case], ",.0f"), _spread(_per_record(results[case], "cpu_s"), ".2f"),
             _spread(_per_record(results[case], "rx_cpu_s"), ".2f"), notes[case]] for case in ("sink", "serial", "raw")]
    rows.append(["encode_request() alone", f"{1e6 / statistics.median(encode_us):,.0f}", _spread(encode_us, ".2f"),
                 "-", "CPU time; LogRecords written straight into wire format"])
    met = "met" if ratio <= TARGET else "not met"
    goal = (f"OTLP sink within {TARGET:g}x of POSTing pre-built request bytes: **{ratio:.2f}x** "
            f"(per repetition {', '.join(f'{r:.2f}' for r in ratios)}): {met}; CPU per record, leader and "
            f"receiver together: {statistics.median(cpu_total['sink']):.2f} vs {statistics.median(cpu_total['raw']):.2f}"
            f" us, {cpu_ratio:.2f}x")
    elapsed = time.monotonic() - started
    print(text_table(headers, rows, 4))
    print()
    print("- " + goal.replace("**", ""))
    sizes = (f"Backlog: {scale.writers} writers x {scale.per_writer:,} records of 109 bytes (interval mode, "
             f"DISTWAL_DISABLE_SENDER=1, then finish()); every sink run drains a hard-linked copy of it into "
             f"the receiver (its own process, parsing every request); {scale.reps} interleaved repetition"
             f"{'s' if scale.reps > 1 else ''}, median (range in brackets). Ran in {elapsed:.0f} s.")
    md = [sizes, "", markdown_table(headers, ["---", "---:", "---:", "---:", "---"], rows), "", "Target:", "", f"- {goal}"]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    text = main(short="--short" in sys.argv[1:])
    out_dir = os.path.join(HERE, ".out")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "otlp.md"), "w") as f:
        f.write(text)
