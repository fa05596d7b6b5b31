"""The ship benchmark: how fast and how soon the leader gets every writer's records to the sink.

Real processes on this host (child roles in _ship_child.py, started through tests/helpers):
  1. throughput  a backlog drained by the library's Sender (HTTPSink, gzip on and off) into a
                 discarding server and into `distwal serve`, against the raw limits, and
                 `distwal drain` itself;
  2. failover, 3. adoption: the process tests that kill leaders and ranks, run under pytest,
                 tabulated from the timings they record (tests/helpers/timings.py);
  4. scale       256 (and 1024) live writer folders: cycle times, a forced full scan, leader CPU;
  5. memory      the leader draining a 2 GB backlog (200 MB in --short): RSS as it goes.
benchmarks/README.md ("ship") says how each figure is taken. Run it through run.py:
`python benchmarks/run.py [--short] ship`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

from _report import Report, spread, verdict
from helpers.cluster import serve_cli
from helpers.procs import Child, child_env, start
from helpers.timings import TIMINGS_ENV, read_timings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHILD = os.path.join(HERE, "_ship_child.py")
PY = sys.executable
BATCH_RECORDS = 20_000  # the Sender's default batch (DEFAULT_BATCH_RECORDS); the raw limit uses the same


@dataclass
class Scale:
    reps: int  # throughput repetitions (interleaved)
    writers: int  # backlog writers
    per_writer: int  # records per writer, discarding server
    serve_per_writer: int  # records per writer, distwal serve (SQLite: much slower)
    kill_runs: int  # runs of the process tests that kill leaders and ranks
    scan_sizes: tuple[int, ...]  # writer folders for the scan measurements
    phase_s: float  # seconds of cycles measured per phase
    cpu_writers: int  # idle live writers for the CPU measurement
    cpu_s: float
    memory_bytes: int  # backlog for the memory run


FULL = Scale(reps=3, writers=8, per_writer=250_000, serve_per_writer=40_000, kill_runs=3, scan_sizes=(256, 1024),
             phase_s=5.0, cpu_writers=1024, cpu_s=20.0, memory_bytes=2_000_000_000)
SHORT = Scale(reps=1, writers=8, per_writer=25_000, serve_per_writer=10_000, kill_runs=1, scan_sizes=(256,),
              phase_s=2.0, cpu_writers=256, cpu_s=5.0, memory_bytes=200_000_000)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without distwal's or a launcher's variables (the sender enabled), plus `extra`."""
    return child_env(sender=True, **extra)


# -- child processes ----------------------------------------------------------------------------------

LIVE: list[Child] = []


def child(*args: str, env: dict[str, str] | None = None, argv: list[str] | None = None) -> Child:
    """A role of _ship_child.py (or the command line `argv`) answering in JSON lines, commands on stdin."""
    started = start(argv or [PY, CHILD, *args], env=env or clean_env(), stdin=True)
    LIVE.append(started)
    return started


def end(proc: Child, timeout: float = 30.0) -> None:
    """Close its stdin (a role's cue to stop) and wait for it; kill its group if it lingers."""
    proc.close_stdin()
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    proc.reap()
    if proc in LIVE:
        LIVE.remove(proc)


def reap_all(failed: bool) -> None:
    for proc in list(LIVE):
        if failed:
            print(f"child {proc.popen.args}: stderr tail:\n{proc.stderr[-2000:]}", file=sys.stderr)
        proc.reap()
    LIVE.clear()


# -- backlogs -----------------------------------------------------------------------------------------


@dataclass
class Backlog:
    dir: str
    records: int
    bytes: int  # segment bytes on disk
    write_s: float


def make_backlog(root: str, writers: int, per_writer: int) -> Backlog:
    """`writers` processes each log `per_writer` records (interval mode, no sender) and finish."""
    env = clean_env(DISTWAL_DISABLE_SENDER="1")
    t0 = time.perf_counter()
    procs = [child("backlog", root, str(per_writer), str(i), env=env) for i in range(writers)]
    results = [p.next_json(timeout=1800) for p in procs]
    for p in procs:
        end(p)
    write_s = time.perf_counter() - t0
    bad = [r for r in results if not r.get("ok") or r.get("seq") != per_writer]
    if bad:
        raise RuntimeError(f"backlog writers failed: {bad}")
    size = 0
    for folder, _dirs, files in os.walk(os.path.join(root, "writers")):
        size += sum(os.path.getsize(os.path.join(folder, f)) for f in files if f.endswith(".wal"))
    return Backlog(root, writers * per_writer, size, write_s)


def hard_copy(src: str, dst: str) -> None:
    """A copy of a backlog made of hard links: the leader only unlinks and renames, never writes
    into a segment, so every run starts from the same files without copying a byte."""
    subprocess.run(["cp", "-al", src, dst], check=True)


def discard_stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url.rsplit("/", 1)[0] + "/stats", timeout=10) as r:
        return json.loads(r.read())


def serve_count(url: str) -> int:
    with urllib.request.urlopen(url.rsplit("/", 1)[0] + "/health", timeout=30) as r:
        return int(json.loads(r.read())["records"])


# -- 1. throughput ------------------------------------------------------------------------------------


@dataclass
class TCase:
    key: str
    label: str
    server: str  # "discard" or "serve"
    kind: str  # "raw", "prebuilt", "sender", "cli"
    compress: bool
    limit: str | None = None  # key of the case this one is compared with
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def rates(self) -> list[float]:
        return [r["n"] / r["s"] for r in self.results]

    def median(self, name: str) -> float | None:
        values = [r[name] for r in self.results if r.get(name) is not None]
        return statistics.median(values) if values else None


def throughput_cases() -> list[TCase]:
    return [
        TCase("d_raw", "discard: raw limit, segment bytes POSTed, no gzip", "discard", "raw", False),
        TCase("d_raw_gz", "discard: raw limit, segment bytes POSTed, gzip 1", "discard", "raw", True),
        TCase("d_pre", "discard: envelopes built ahead, POSTed, no gzip", "discard", "prebuilt", False, "d_raw"),
        TCase("d_pre_gz", "discard: envelopes built ahead, POSTed, gzip 1", "discard", "prebuilt", True, "d_raw_gz"),
        TCase("d_send", "discard: Sender, HTTPSink(compress=False)", "discard", "sender", False, "d_raw"),
        TCase("d_send_gz", "discard: Sender, HTTPSink (gzip 1, the default)", "discard", "sender", True, "d_raw_gz"),
        TCase("d_cli", "discard: `distwal drain DIR --sink URL` (gzip 1)", "discard", "cli", True, "d_raw_gz"),
        TCase("s_pre", "serve: envelopes built ahead, POSTed, no gzip (its limit)", "serve", "prebuilt", False),
        TCase("s_pre_gz", "serve: envelopes built ahead, POSTed, gzip 1 (its limit)", "serve", "prebuilt", True),
        TCase("s_send", "serve: Sender, HTTPSink(compress=False)", "serve", "sender", False, "s_pre"),
        TCase("s_send_gz", "serve: Sender, HTTPSink (gzip 1, the default)", "serve", "sender", True, "s_pre_gz"),
    ]


def run_throughput(scale: Scale, base: str, discard_url: str) -> tuple[list[TCase], dict[str, Any]]:
    big = make_backlog(os.path.join(base, "tpl-discard"), scale.writers, scale.per_writer)
    small = make_backlog(os.path.join(base, "tpl-serve"), scale.writers, scale.serve_per_writer)
    print(f"ship: backlogs written ({big.records:,} records, {big.bytes / 1e6:.0f} MB in {big.write_s:.1f} s; "
          f"{small.records:,} records for distwal serve)", file=sys.stderr, flush=True)
    cases = throughput_cases()
    worker = child("worker")
    worker.next_json(timeout=60)
    scratch = os.path.join(base, "scratch")
    os.makedirs(scratch, exist_ok=True)
    parts: dict[str, Any] = {}
    try:
        worker.send(json.dumps({"kind": "parts", "dir": big.dir, "batch_records": BATCH_RECORDS}))
        parts = worker.next_json(timeout=300)
        rtt = _round_trips(worker, scratch, discard_url)
        for rep in range(scale.reps):
            order = cases[rep % len(cases):] + cases[: rep % len(cases)]
            for case in order:
                if case.error:
                    continue
                backlog = big if case.server == "discard" else small
                try:
                    case.results.append(_throughput_run(case, backlog, base, scratch, worker, discard_url, rep))
                except Exception as exc:  # noqa: BLE001 - the row says so; main() fails after printing
                    traceback.print_exc()
                    case.error = f"{type(exc).__name__}: {exc}"
            print(f"ship: throughput repetition {rep + 1}/{scale.reps} done", file=sys.stderr, flush=True)
    finally:
        end(worker)
    facts = {"records": big.records, "bytes_per_record": big.bytes / big.records, "serve_records": small.records,
             "backlog_write_s": big.write_s, "parts": parts if "error" not in parts else {}, "rtt": rtt}
    for tpl in (big, small):
        shutil.rmtree(tpl.dir, ignore_errors=True)
    return cases, facts


def _round_trips(worker: Child, scratch: str, discard_url: str) -> dict[str, Any]:
    """Median round trip of a one-envelope POST to a fresh `distwal serve` and to the discarding server."""
    out = {}
    with serve_cli(os.path.join(scratch, "rtt.db"), clean_env()) as url:
        for name, target in (("serve", url), ("discard", discard_url)):
            worker.send(json.dumps({"kind": "rtt", "url": target, "count": 21}))
            out[name] = worker.next_json(timeout=120)
    return out


def _throughput_run(case: TCase, backlog: Backlog, base: str, scratch: str, worker: Child, discard_url: str,
                    rep: int) -> dict[str, Any]:
    if case.server == "discard":
        return _run_against(case, backlog, base, scratch, worker, discard_url, discard_url, rep)
    with serve_cli(os.path.join(scratch, f"serve-{case.key}-{rep}.db"), clean_env()) as url:
        return _run_against(case, backlog, base, scratch, worker, url, discard_url, rep)


def _run_against(case: TCase, backlog: Backlog, base: str, scratch: str, worker: Child, url: str, discard_url: str,
                 rep: int) -> dict[str, Any]:
    copy = None
    try:
        before = discard_stats(discard_url)
        if case.kind in ("sender", "cli"):
            copy = os.path.join(base, f"run-{case.key}-{rep}")
            hard_copy(backlog.dir, copy)
        os.sync()  # earlier write-back does not land inside this run
        if case.kind == "cli":
            t0 = time.perf_counter()
            done = subprocess.run([PY, "-m", "distwal", "drain", copy, "--sink", url, "--timeout", "900"],  # type: ignore[list-item]
                                  env=clean_env(), capture_output=True, text=True, timeout=1000)
            elapsed = time.perf_counter() - t0
            if done.returncode != 0:
                raise RuntimeError(f"distwal drain exited {done.returncode}: {done.stderr[-1000:]}")
            result: dict[str, Any] = {"n": backlog.records, "s": elapsed}
        else:
            chunk = round(backlog.bytes / backlog.records * BATCH_RECORDS)
            job = {"kind": case.kind, "dir": copy or backlog.dir, "url": url, "compress": case.compress,
                   "records": backlog.records, "chunk": chunk, "scratch": scratch, "batch_records": BATCH_RECORDS}
            worker.send(json.dumps(job))
            result = worker.next_json(timeout=1800)
            if "error" in result:
                raise RuntimeError(result["error"])
        if result["n"] != backlog.records:
            raise RuntimeError(f"{result['n']} of {backlog.records} records acknowledged")
        after = discard_stats(discard_url)
        if case.server == "discard":
            result["wire"] = after["bytes"] - before["bytes"]
            result["requests"] = after["requests"] - before["requests"]
        else:
            stored = serve_count(url)
            if stored != backlog.records:
                raise RuntimeError(f"distwal serve stored {stored} of {backlog.records} records")
            result["wire"] = result.get("sent")
        return result
    finally:
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)


# -- 2 and 3. failover and adoption: the process tests' own timings ------------------------------------

KILL_TESTS = [
    "tests/process/test_leader_failover.py::test_leader_sigkilled_at_random_points_every_acked_record_delivered_once",
    "tests/process/test_adopt_dead_rank.py::test_sigkilled_ranks_are_adopted_delivered_and_removed",
    "tests/reliability/test_hosts_liveness.py::"
    "test_dead_hosts_writers_are_adopted_after_the_lease_and_delivered_exactly_once",
]


def run_kill_tests(scale: Scale, base: str) -> dict[str, Any]:
    """Run the tests that SIGKILL leaders and ranks `scale.kill_runs` times; the timings they record."""
    path = os.path.join(base, "timings.jsonl")
    skipped = ""
    for run in range(scale.kill_runs):
        done = subprocess.run([PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *KILL_TESTS], cwd=ROOT,
                              env=clean_env(**{TIMINGS_ENV: path}), capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"the kill tests failed (run {run + 1}):\n{done.stdout[-3000:]}")
        skipped = "; ".join(line for line in done.stdout.splitlines() if line.startswith("SKIPPED"))
        print(f"ship: kill tests, run {run + 1}/{scale.kill_runs} done", file=sys.stderr, flush=True)
    timings = read_timings(path)
    return {"failover": [t for t in timings if t["name"] == "failover"],
            "same": [t for t in timings if t["name"] == "adoption" and t["host"] == "same"],
            "other": [t for t in timings if t["name"] == "adoption" and t["host"] == "other"],
            "skipped": skipped}


# -- 4. scale -----------------------------------------------------------------------------------------


def run_scale(scale: Scale, base: str, discard_url: str) -> dict[int, dict[str, Any]]:
    import psutil

    out: dict[int, dict[str, Any]] = {}
    for n in scale.scan_sizes:
        root = os.path.join(base, f"scale-{n}")
        helpers: list[Child] = []
        leader: Child | None = None
        try:
            t0 = time.perf_counter()
            per = 256
            helpers = [child("many", root, str(min(per, n - i)), "0.5") for i in range(0, n, per)]
            for h in helpers:
                h.next_json(timeout=600)
            made_s = time.perf_counter() - t0
            leader = child("scan", root, discard_url)
            first = leader.next_json(timeout=300)
            leader.send("drain 120")
            drained = leader.next_json(timeout=200)
            leader.send(f"cycles {scale.phase_s}")
            idle = leader.next_json(timeout=scale.phase_s + 120)
            leader.send("full 10")
            full = leader.next_json(timeout=300)
            for h in helpers:
                h.send(f"trickle {10 * 256}")  # about 10 records/s for every writer
                h.next_json(timeout=30)
            time.sleep(1.0)
            leader.send(f"cycles {scale.phase_s}")
            busy = leader.next_json(timeout=scale.phase_s + 120)
            for h in helpers:
                h.send("idle")
                h.next_json(timeout=30)
            result: dict[str, Any] = {"writers": n, "made_s": made_s, "first": first, "drained": drained,
                                      "idle": idle, "full": full, "busy": busy}
            if n == scale.cpu_writers:
                leader.send("drain 30")
                leader.next_json(timeout=60)
                before = [psutil.Process(h.pid).cpu_times() for h in helpers]
                leader.send(f"cpu {scale.cpu_s}")
                result["cpu"] = leader.next_json(timeout=scale.cpu_s + 120)
                after = [psutil.Process(h.pid).cpu_times() for h in helpers]
                result["helpers_cpu_s"] = sum(a.user + a.system - b.user - b.system for a, b in zip(after, before))
            out[n] = result
            print(f"ship: scale with {n} writers done", file=sys.stderr, flush=True)
        finally:
            for proc in [*helpers, leader]:
                if proc is not None:
                    end(proc)
            shutil.rmtree(root, ignore_errors=True)
    return out


# -- 5. memory ----------------------------------------------------------------------------------------


def run_memory(scale: Scale, base: str, discard_url: str, bytes_per_record: float) -> dict[str, Any]:
    per_writer = math.ceil(scale.memory_bytes / bytes_per_record / scale.writers)
    backlog = make_backlog(os.path.join(base, "memory"), scale.writers, per_writer)
    print(f"ship: memory backlog written ({backlog.bytes / 1e6:,.0f} MB, {backlog.records:,} records, "
          f"{backlog.write_s:.0f} s)", file=sys.stderr, flush=True)
    os.sync()  # the backlog's write-back does not compete with the drain
    leader = child("memory", backlog.dir, discard_url, str(backlog.records))
    try:
        result = leader.next_json(timeout=3600)
    finally:
        end(leader)
        shutil.rmtree(backlog.dir, ignore_errors=True)
    result["bytes"] = backlog.bytes
    return result


# -- report -------------------------------------------------------------------------------------------


def _ms(values: list[float]) -> str:
    return spread([v * 1e3 for v in values], ".0f") + " ms"


def throughput_rows(cases: list[TCase], facts: dict[str, Any]) -> tuple[list[list[str]], dict[str, Any]]:
    by_key = {c.key: c for c in cases}
    rows = []
    for case in cases:
        if case.error or not case.results:
            rows.append([case.label, "-", "-", "-", "-", f"FAILED: {case.error}" if case.error else "no result"])
            continue
        rates = case.rates()
        rate = statistics.median(rates)
        facts[f"{case.key}_rate"] = rate
        limit = by_key.get(case.limit) if case.limit else None
        if limit is not None and limit.results:
            ratio = statistics.median(limit.rates()) / rate
            facts[f"{case.key}_ratio"] = ratio
            ratio_cell = f"{ratio:.2f}x slower" if ratio >= 1 else f"{1 / ratio:.2f}x faster"
        else:
            ratio_cell = "limit"
        n = case.results[0]["n"]
        cpu = case.median("cpu_s")
        cpu_cell = f"{cpu / n * 1e6:.2f}" if cpu is not None and case.kind != "cli" else "-"
        wire = case.median("wire")
        wire_cell = f"{wire / n:.0f}" if wire else "-"
        notes = []
        if case.kind == "raw":
            notes.append(f"{BATCH_RECORDS:,} records' worth of segment bytes per request "
                         f"({facts['bytes_per_record']:.0f} B/record on disk), no envelope, same httpx client")
        if case.kind == "prebuilt":
            notes.append(f"the Sender's envelopes, {BATCH_RECORDS:,} per request, built before the clock starts")
        if case.kind == "sender":
            batches = case.median("batches")
            notes.append(f"{n:,} records, {batches:.0f} batches; child process, leads as `distwal drain` does, "
                         "times cycle() until every record is acknowledged")
            parts = facts.get("parts") or {}
            if parts and case.key == "d_send_gz":
                notes.append(f"its CPU per record, measured apart on one batch: reading and checking blocks "
                             f"{parts['read_us']:.2f} us, building envelopes (Batch.ndjson) {parts['envelope_us']:.2f} us, "
                             f"gzip 1 {parts['gzip_us']:.2f} us; the rest is HTTP, cursors and the loop")
        if case.kind == "cli":
            notes.append("wall time of the subprocess, interpreter start and leadership included")
        if case.server == "serve":
            notes.append("a fresh `distwal serve` (SQLite) per run; every record counted in it afterwards")
        if len(rates) > 1:
            notes.append(f"{len(rates)} runs")
        rows.append([case.label, spread(rates, ",.0f"), ratio_cell, cpu_cell, wire_cell, "; ".join(notes)])
    return rows, facts


def other_rows(kills: dict[str, Any], sc: dict[int, dict[str, Any]], mem: dict[str, Any], scale: Scale,
               facts: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    rtt = facts.get("rtt") or {}
    if "serve" in rtt and "discard" in rtt and "median_ms" in rtt["serve"]:
        rows.append([
            "one-envelope POST round trip (HTTPSink's client): `distwal serve` / discarding server",
            f"{rtt['serve']['median_ms']:.1f} ms / {rtt['discard']['median_ms']:.1f} ms",
            "-",
            f"median of {rtt['serve']['count']} (min {rtt['serve']['min_ms']:.1f} / {rtt['discard']['min_ms']:.1f} ms); "
            "what every batch costs at least when little is logged; the discarding server answers in one write",
        ])
    if kills.get("error"):
        rows.append(["failover / adoption (the process tests)", "FAILED", "-", kills["error"]])
    runs = f"{scale.kill_runs} run{'s' if scale.kill_runs > 1 else ''}"
    if kills.get("failover"):
        ack = [t["seconds"] for t in kills["failover"]]
        modes = sorted({t["mode"] for t in kills["failover"]})
        facts["failover_median"], facts["failover_max"] = statistics.median(ack), max(ack)
        rows.append([
            "failover: SIGKILL of the leader (its rank or its sender) -> first batch of the new epoch stored",
            f"median {statistics.median(ack) * 1e3:.0f} ms, max {max(ack) * 1e3:.0f} ms",
            "<= 2 s",
            f"{len(ack)} kills in {runs} of test_leader_failover.py (3 ranks logging in sync mode, lease 2 s; "
            f"kill modes {', '.join(modes)}); all: {', '.join(f'{a * 1e3:.0f}' for a in ack)} ms",
        ])
    if kills.get("same"):
        moved = [t["seconds"] for t in kills["same"]]
        facts["adopt_same_max"] = max(moved)
        rows.append([
            "adoption, same host: SIGKILL of a non-leading rank -> folder moved out of writers/",
            f"moved {_ms(moved)}",
            "about 1 s",
            f"{len(moved)} kill(s) in {runs} of test_adopt_dead_rank.py (the victims the test watches from their "
            "kill on); liveness by pid and start time",
        ])
    if kills.get("other"):
        moved = [t["seconds"] for t in kills["other"]]
        stored = [t["stored"] for t in kills["other"] if t.get("stored") is not None]
        lease = kills["other"][0]["lease"]
        facts["adopt_other_max"], facts["adopt_other_lease"] = max(moved), lease
        rows.append([
            "adoption, other host (a simulated host: own pid and UTS namespaces): SIGKILL of the host -> moved; "
            "last acknowledged record stored",
            f"moved {_ms(moved)}; stored {_ms(stored) if stored else '-'}",
            f"lease + 1 s = {lease + 1:.0f} s",
            f"{len(moved)} writers in {runs} of test_hosts_liveness.py's dead host, DISTWAL_LEASE_S={lease:g}; "
            "liveness by heartbeat seen unchanged for the lease on the leader's clock; stored 0: before the kill",
        ])
    elif kills.get("skipped"):
        rows.append(["adoption, other host", "not measured", "lease + 1 s", kills["skipped"]])
        facts["other_host_unavailable"] = kills["skipped"]
    if sc.get("error"):  # type: ignore[call-overload]
        rows.append(["scan at scale", "FAILED", "-", sc["error"]])  # type: ignore[index]
    for n, r in sorted((k, v) for k, v in sc.items() if isinstance(k, int)):
        idle, full, busy = r["idle"]["idle"], r["full"]["full"], r["busy"]
        sent = busy["sent"]
        facts[f"scan{n}_full_median"] = full["median"]
        facts[f"scan{n}_sent_median"] = sent.get("median")
        rows.append([
            f"scan, {n} live idle writers: one cycle, nothing to send",
            f"full scan {full['median']:.1f} ms (max {full['max']:.1f}); loop cycles median {idle['median']:.2f} ms, "
            f"p99 {idle['p99']:.1f}, max {idle['max']:.1f}",
            "<= 50 ms" if n <= 256 else "-",
            f"full scan = every timer forced due (discovery, liveness of all, a read attempt of all), 10 times; "
            f"loop = Sender.run() for {scale.phase_s:g} s ({idle['count']} cycles: liveness every 0.25 s, "
            f"idle writers looked at up to 1 s apart); first cycle (discovering {n} writers) "
            f"{r['first']['first_cycle_ms']:.0f} ms; folders made in {r['made_s']:.1f} s",
        ])
        rows.append([
            f"scan, {n} live writers, about 10 records/s each: a cycle that sends",
            (f"median {sent['median']:.1f} ms, p99 {sent['p99']:.1f}, max {sent['max']:.1f}" if sent.get("count")
             else "no cycle sent"),
            "<= 50 ms" if n <= 256 else "-",
            f"{sent.get('count', 0)} sending cycles in {scale.phase_s:g} s, {busy['acked']:,} records acknowledged "
            f"(discarding server, gzip; Sender.run() lingers after a small batch); read, envelope, POST, cursor fsync; "
            f"cycles with nothing to send meanwhile: "
            f"median {busy['idle'].get('median', 0):.2f} ms",
        ])
        if "cpu" in r:
            cpu = r["cpu"]
            share = cpu["cpu_s"] / cpu["wall_s"]
            facts["cpu_share"], facts["cpu_writers"] = share, n
            rows.append([
                f"leader CPU, {n} idle live writers",
                f"{share * 100:.1f} % of one core",
                "< 5 %",
                f"process CPU time of the leader over {cpu['wall_s']:.0f} s of the sender's loop; the writers "
                f"(heartbeats every 1 s, commit interval 0.5 s, {math.ceil(n / 256)} processes of 256 Writer objects) "
                f"used {r['helpers_cpu_s'] / cpu['wall_s'] * 100:.0f} % meanwhile",
            ])
    if mem.get("error"):
        rows.append(["memory", "FAILED", "-", mem["error"]])
    elif mem:
        samples = mem["samples"]
        n = mem["n"]

        def rss_at(fraction: float) -> float:
            for _t, acked, rss in samples:
                if acked >= fraction * n:
                    return rss / 1024
            return samples[-1][2] / 1024

        hwm = mem["hwm_kib"] / 1024
        facts["memory_hwm_mib"], facts["memory_rate"] = hwm, n / mem["s"]
        facts["memory_growth_mib"] = rss_at(1.0) - rss_at(0.1)
        rows.append([
            f"memory: leader draining a {mem['bytes'] / 1e9:.1f} GB backlog ({n:,} records)",
            f"peak RSS {hwm:.0f} MiB; {n / mem['s']:,.0f} records/s",
            "< 150 MB, flat",
            f"RSS at 10 % / 50 % / 100 % of the records: {rss_at(0.1):.0f} / {rss_at(0.5):.0f} / {rss_at(1.0):.0f} MiB; "
            f"{mem['s']:.0f} s; HTTPSink gzip 1 into the discarding server; leader CPU "
            f"{mem['cpu_s'] / n * 1e6:.2f} us/record",
        ])
    return rows


def targets(facts: dict[str, Any]) -> list[str]:
    out = []
    rate = facts.get("d_send_gz_rate")
    if rate is not None:
        off = facts.get("d_send_rate", 0)
        out.append(f"throughput into the discarding server >= 300,000 records/s: **{verdict(rate >= 300_000)}** "
                   f"({rate:,.0f}/s with gzip (the default), {off:,.0f}/s without; "
                   f"`distwal drain`: {facts.get('d_cli_rate', 0):,.0f}/s)")
    ratio = facts.get("d_send_gz_ratio")
    if ratio is not None:
        off = facts.get("d_send_ratio", 0)
        out.append(f"within 2x of the raw limit: **{verdict(ratio <= 2 and off <= 2)}** ({ratio:.1f}x slower than "
                   f"POSTing the segment bytes with gzip, {off:.1f}x without; against the same envelopes built "
                   f"ahead: {facts.get('d_send_gz_rate', 0) and facts.get('d_pre_gz_rate', 0) / facts['d_send_gz_rate']:.1f}x "
                   f"with gzip, {facts.get('d_send_rate') and facts.get('d_pre_rate', 0) / facts['d_send_rate']:.1f}x without)")
    if facts.get("s_send_gz_rate") is not None:
        out.append(f"into `distwal serve`: {facts['s_send_gz_rate']:,.0f} records/s with gzip, "
                   f"{facts.get('s_send_rate', 0):,.0f} without (its own limit with envelopes built ahead: "
                   f"{facts.get('s_pre_gz_rate', 0):,.0f} / {facts.get('s_pre_rate', 0):,.0f}); no target")
    if "failover_max" in facts:
        out.append(f"failover <= 2 s: **{verdict(facts['failover_max'] <= 2)}** (median "
                   f"{facts['failover_median'] * 1e3:.0f} ms, max {facts['failover_max'] * 1e3:.0f} ms)")
    if "adopt_same_max" in facts:
        out.append(f"adoption on the same host about 1 s: **{verdict(facts['adopt_same_max'] <= 1.5)}** (worst "
                   f"{facts['adopt_same_max'] * 1e3:.0f} ms to move the folder; pass mark 1.5 s)")
    if "adopt_other_max" in facts:
        lease = facts["adopt_other_lease"]
        out.append(f"adoption of another host's writer within lease + 1 s: "
                   f"**{verdict(facts['adopt_other_max'] <= lease + 1)}** (worst {facts['adopt_other_max']:.2f} s, "
                   f"lease {lease:g} s)")
    elif "other_host_unavailable" in facts:
        out.append(f"adoption of another host's writer: **not checked** ({facts['other_host_unavailable']})")
    if "scan256_full_median" in facts:
        full, sent = facts["scan256_full_median"], facts.get("scan256_sent_median")
        ok = full <= 50 and (sent is None or sent <= 50)
        out.append(f"scan cycle with 256 writers <= 50 ms: **{verdict(ok)}** (full scan {full:.1f} ms with nothing "
                   f"to send; {sent if sent is not None else float('nan'):.1f} ms median for a cycle that sends)")
    if "cpu_share" in facts:
        share = facts["cpu_share"] * 100
        out.append(f"leader CPU < 5 % with {facts['cpu_writers']} idle live writers: **{verdict(share < 5)}** "
                   f"({share:.1f} %)")
    if "memory_hwm_mib" in facts:
        hwm = facts["memory_hwm_mib"]
        flat = facts["memory_growth_mib"] < 10
        out.append(f"leader memory < 150 MB and flat while draining: **{verdict(hwm * 2**20 < 150e6 and flat)}** "
                   f"(peak {hwm:.0f} MiB = {hwm * 2**20 / 1e6:.0f} MB; {facts['memory_growth_mib']:+.1f} MiB from 10 % "
                   f"to the end; {facts['memory_rate']:,.0f} records/s)")
    return out


def main(short: bool = False) -> str:
    """Run the ship benchmark; print the tables; return them (with the targets) as markdown."""
    scale = SHORT if short else FULL
    base = tempfile.mkdtemp(prefix="distwal-bench-ship-")
    started = time.monotonic()
    errors: list[str] = []
    kills: dict[str, Any] = {}
    sc: dict[Any, Any] = {}
    mem: dict[str, Any] = {}
    cases: list[TCase] = []
    facts: dict[str, Any] = {"bytes_per_record": 118.0}

    def attempt(name: str, fn: Callable[[], Any], into: dict[Any, Any]) -> None:
        try:
            into.update(fn())
        except Exception as exc:  # noqa: BLE001 - reported in the table; main() fails after printing
            traceback.print_exc()
            into["error"] = f"{type(exc).__name__}: {exc}"
            errors.append(f"{name}: {into['error']}")

    try:
        discard = child("discard")
        discard_url = discard.next_json(timeout=60)["url"]
        try:
            cases, tfacts = run_throughput(scale, base, discard_url)
            facts.update(tfacts)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            errors.append(f"throughput: {type(exc).__name__}: {exc}")
        errors += [f"{c.label}: {c.error}" for c in cases if c.error]
        attempt("failover and adoption", lambda: run_kill_tests(scale, base), kills)
        attempt("scale", lambda: run_scale(scale, base, discard_url), sc)
        attempt("memory", lambda: run_memory(scale, base, discard_url, facts["bytes_per_record"]), mem)
    finally:
        reap_all(failed=bool(errors))
        shutil.rmtree(base, ignore_errors=True)
    t_rows, facts = throughput_rows(cases, facts)
    o_rows = other_rows(kills, sc, mem, scale, facts)
    report = Report()
    report.text(
        f"Backlog: {scale.writers} writers x {scale.per_writer:,} records of {109} bytes (interval mode, "
        f"DISTWAL_DISABLE_SENDER=1, then finish()), {facts['bytes_per_record']:.0f} bytes/record on disk, "
        f"{scale.writers} x {scale.serve_per_writer:,} for `distwal serve`; every run drains a hard-linked copy of "
        f"it; {scale.reps} interleaved repetition{'s' if scale.reps > 1 else ''}, median (range in brackets). "
        f"The Sender batches {BATCH_RECORDS:,} records (or 4 MiB) per request. Ran in "
        f"{time.monotonic() - started:.0f} s."
    )
    report.table(["case", "records/s", "vs its raw limit", "leader CPU us/record", "bytes/record sent", "notes"],
                 t_rows, align="lrrrrl")
    report.table(["case", "result", "target", "notes"], o_rows, align="llll")
    report.targets(targets(facts))
    if errors:
        raise RuntimeError("ship: parts failed: " + "; ".join(errors))
    return report.markdown()
