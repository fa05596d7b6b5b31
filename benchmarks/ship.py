"""The ship benchmark: how fast and how soon the leader gets every writer's records to the sink.

One run measures, with real processes on this host (child roles in _ship_child.py):

  1. throughput  a backlog (8 writers x N records of append.py's 109-byte record, written with
                 DISTWAL_DISABLE_SENDER=1 in interval mode, each writer finished) drained by the
                 library's Sender (distwal.leader.sender.Sender in a child process, led as `distwal drain`
                 leads, HTTPSink with gzip on and off) into (a) a discarding HTTP server and (b)
                 `distwal serve`; against the raw limit: the same segment files read and POSTed as
                 they are, in chunks of the same number of records, by the same HTTP client (and,
                 for `distwal serve`, which only takes envelopes, the same envelopes built ahead of
                 time); plus `distwal drain DIR --sink URL` itself, as a subprocess.
  2. failover    3 ranks log continuously (sender enabled, sink = an IngestServer); SIGKILL the
                 leading rank (leader.json "pid"); time until the server stores a batch from a
                 higher epoch.
  3. adoption    SIGKILL a non-leading rank: time until its folder leaves writers/ and until its
                 last durable record is stored. Then a rank in its own pid and UTS namespaces
                 (`unshare --pid --uts --fork --mount-proc`, another "host"), DISTWAL_LEASE_S=3:
                 its liveness can only be judged from its heartbeat.
  4. scale       256 (and 1024) live writer folders: Sender.cycle() time with nothing to send and
                 with a trickle of records, a forced full scan, and the leader's CPU share over a
                 stretch of idle time.
  5. memory      the leader draining a 2 GB backlog (200 MB in --short): RSS as it goes, peak.

Run it through run.py (`python benchmarks/run.py [--short] [ship]`) or alone:
`python benchmarks/ship.py [--short]`.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "_ship_child.py")
PY = sys.executable
BATCH_RECORDS = 20_000  # the Sender's default batch (DEFAULT_BATCH_RECORDS); the raw limit uses the same
RATE = 1_000  # records/s each live rank logs in the failover and adoption runs
LEASE_OTHER_HOST = 3.0  # DISTWAL_LEASE_S for the other-host adoption runs


@dataclass
class Scale:
    reps: int  # throughput repetitions (interleaved)
    writers: int  # backlog writers
    per_writer: int  # records per writer, discarding server
    serve_per_writer: int  # records per writer, distwal serve (SQLite: much slower)
    failovers: int
    adoptions: int
    other_host: int
    scan_sizes: tuple[int, ...]  # writer folders for the scan measurements
    phase_s: float  # seconds of cycles measured per phase
    cpu_writers: int  # idle live writers for the CPU measurement
    cpu_s: float
    memory_bytes: int  # backlog for the memory run


FULL = Scale(reps=3, writers=8, per_writer=250_000, serve_per_writer=40_000, failovers=7, adoptions=5, other_host=3,
             scan_sizes=(256, 1024), phase_s=5.0, cpu_writers=1024, cpu_s=20.0, memory_bytes=2_000_000_000)
SHORT = Scale(reps=1, writers=8, per_writer=25_000, serve_per_writer=10_000, failovers=2, adoptions=2, other_host=1,
              scan_sizes=(256,), phase_s=2.0, cpu_writers=256, cpu_s=5.0, memory_bytes=200_000_000)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTWAL_")}
    env.update(extra)
    return env


# -- child processes ----------------------------------------------------------------------------------


class Child:
    """A child process speaking JSON lines on stdout; its stderr goes to the shared log."""

    live: list[Child] = []

    def __init__(self, args: list[str], env: dict[str, str], log: Any, argv: list[str] | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            argv or [PY, CHILD, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            env=env, bufsize=1,
        )
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        Child.live.append(self)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def read(self, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no answer from {' '.join(self.args[:2])} within {timeout:.0f} s") from None
            if line is None:
                self._lines.put(None)
                raise RuntimeError(f"child {' '.join(self.args[:2])} ended (exit {self.proc.wait()})")
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
            if line:
                return {"text": line}

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.rstrip("\n") + "\n")
        self.proc.stdin.flush()

    def close(self, timeout: float = 30.0) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        if self in Child.live:
            Child.live.remove(self)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self in Child.live:
            Child.live.remove(self)


def kill_all() -> None:
    for child in list(Child.live):
        try:
            child.kill()
        except OSError:
            pass


# -- backlogs -----------------------------------------------------------------------------------------


@dataclass
class Backlog:
    dir: str
    records: int
    bytes: int  # segment bytes on disk
    write_s: float


def make_backlog(root: str, writers: int, per_writer: int, log: Any) -> Backlog:
    """`writers` processes each log `per_writer` records (interval mode, no sender) and finish."""
    env = clean_env(DISTWAL_DISABLE_SENDER="1")
    t0 = time.perf_counter()
    procs = [Child(["backlog", root, str(per_writer), str(i)], env, log) for i in range(writers)]
    results = [p.read(timeout=1800) for p in procs]
    for p in procs:
        p.close()
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


def run_throughput(scale: Scale, base: str, log: Any, discard_url: str) -> tuple[list[TCase], dict[str, Any]]:
    big = make_backlog(os.path.join(base, "tpl-discard"), scale.writers, scale.per_writer, log)
    small = make_backlog(os.path.join(base, "tpl-serve"), scale.writers, scale.serve_per_writer, log)
    print(f"ship: backlogs written ({big.records:,} records, {big.bytes / 1e6:.0f} MB in {big.write_s:.1f} s; "
          f"{small.records:,} records for distwal serve)", file=sys.stderr, flush=True)
    cases = throughput_cases()
    worker = Child(["worker"], clean_env(), log)
    worker.read(timeout=60)
    scratch = os.path.join(base, "scratch")
    os.makedirs(scratch, exist_ok=True)
    parts: dict[str, Any] = {}
    try:
        worker.send(json.dumps({"kind": "parts", "dir": big.dir, "batch_records": BATCH_RECORDS}))
        parts = worker.read(timeout=300)
        rtt = _round_trips(worker, scratch, log, discard_url)
        for rep in range(scale.reps):
            order = cases[rep % len(cases):] + cases[: rep % len(cases)]
            for case in order:
                if case.error:
                    continue
                backlog = big if case.server == "discard" else small
                try:
                    case.results.append(_throughput_run(case, backlog, base, scratch, worker, log, discard_url, rep))
                except Exception as exc:  # noqa: BLE001 - the row says so; main() fails after printing
                    traceback.print_exc()
                    case.error = f"{type(exc).__name__}: {exc}"
            print(f"ship: throughput repetition {rep + 1}/{scale.reps} done", file=sys.stderr, flush=True)
    finally:
        worker.close()
    facts = {"records": big.records, "bytes_per_record": big.bytes / big.records, "serve_records": small.records,
             "backlog_write_s": big.write_s, "parts": parts if "error" not in parts else {}, "rtt": rtt}
    for tpl in (big, small):
        shutil.rmtree(tpl.dir, ignore_errors=True)
    return cases, facts


def _round_trips(worker: Child, scratch: str, log: Any, discard_url: str) -> dict[str, Any]:
    """Median round trip of a one-envelope POST to a fresh `distwal serve` and to the discarding server."""
    out = {}
    serve = Child([], clean_env(), log, argv=[PY, "-m", "distwal", "serve", "--db", os.path.join(scratch, "rtt.db"),
                                              "--port", "0"])
    try:
        url = serve.read(timeout=60)["text"].split("listening on ", 1)[1].split()[0]
        for name, target in (("serve", url), ("discard", discard_url)):
            worker.send(json.dumps({"kind": "rtt", "url": target, "count": 21}))
            out[name] = worker.read(timeout=120)
    finally:
        serve.proc.send_signal(signal.SIGTERM)
        serve.close()
    return out


def _throughput_run(case: TCase, backlog: Backlog, base: str, scratch: str, worker: Child, log: Any,
                    discard_url: str, rep: int) -> dict[str, Any]:
    serve: Child | None = None
    copy = None
    try:
        if case.server == "serve":
            db = os.path.join(scratch, f"serve-{case.key}-{rep}.db")
            serve = Child([], clean_env(), log, argv=[PY, "-m", "distwal", "serve", "--db", db, "--port", "0"])
            url = serve.read(timeout=60)["text"].split("listening on ", 1)[1].split()[0]
        else:
            url = discard_url
        before = discard_stats(discard_url)
        if case.kind in ("sender", "cli"):
            copy = os.path.join(base, f"run-{case.key}-{rep}")
            hard_copy(backlog.dir, copy)
        os.sync()  # earlier write-back does not land inside this run
        if case.kind == "cli":
            assert copy is not None
            t0 = time.perf_counter()
            done = subprocess.run([PY, "-m", "distwal", "drain", copy, "--sink", url, "--timeout", "900"],
                                  env=clean_env(), stdout=log, stderr=log, timeout=1000)
            elapsed = time.perf_counter() - t0
            if done.returncode != 0:
                raise RuntimeError(f"distwal drain exited {done.returncode}")
            result: dict[str, Any] = {"n": backlog.records, "s": elapsed}
        else:
            chunk = round(backlog.bytes / backlog.records * BATCH_RECORDS)
            job = {"kind": case.kind, "dir": copy or backlog.dir, "url": url, "compress": case.compress,
                   "records": backlog.records, "chunk": chunk, "scratch": scratch, "batch_records": BATCH_RECORDS}
            worker.send(json.dumps(job))
            result = worker.read(timeout=1800)
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
        if serve is not None:
            serve.proc.send_signal(signal.SIGTERM)
            serve.close()
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)


# -- 2 and 3. failover and adoption ---------------------------------------------------------------------


def watched_server(db: str) -> Any:
    """distwal's IngestServer on a thread of this process, noting the time each batch is stored:
    (time, epoch, status, {writer: highest seq in the batch})."""
    from distwal._server import IngestServer

    class Watched(IngestServer):
        def __init__(self, path: str) -> None:
            super().__init__(path, "127.0.0.1", 0)
            self.events: list[tuple[float, int, int, dict[str, int]]] = []
            self._local = threading.local()
            real = self.store.write

            def write(domain: str, epoch: int, rows: Any, *args: Any, **kwargs: Any) -> int:
                rows = list(rows)
                new = real(domain, epoch, rows, *args, **kwargs)
                top: dict[str, int] = {}
                for row in rows:
                    if row[1] > top.get(row[0], 0):
                        top[row[0]] = row[1]
                self._local.top = top
                return new

            self.store.write = write  # type: ignore[method-assign]

        def handle_error(self, request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                super().handle_error(request, client_address)  # a killed leader's connection is expected

        def handle_batch(self, headers: Any, body: bytes) -> Any:
            self._local.top = {}
            reply = super().handle_batch(headers, body)
            try:
                epoch = int(headers.get("Distwal-Epoch", "0"))
            except ValueError:
                epoch = -1
            self.events.append((time.time(), epoch, reply[0], self._local.top))
            return reply

    server = Watched(db)
    threading.Thread(target=server.serve_forever, name="bench-serve", daemon=True).start()
    return server


@dataclass
class Rank:
    child: Child
    writer: str
    pid: int  # as this host sees it
    host: str | None = None


class Cluster:
    """Ranks logging continuously into one directory, shipping to a watched IngestServer."""

    def __init__(self, base: str, name: str, log: Any, lease: float | None = None) -> None:
        self.dir = os.path.join(base, name)
        os.makedirs(self.dir)
        self.server = watched_server(os.path.join(base, f"{name}.db"))
        extra = {"DISTWAL_SINK": self.server.url}
        if lease is not None:
            extra["DISTWAL_LEASE_S"] = str(lease)
        self.env = clean_env(**extra)
        self.log = log
        self.ranks: list[Rank] = []
        self._n = 0

    def start_rank(self, host: str | None = None) -> Rank:
        self._n += 1
        args = ["live", self.dir, str(RATE), str(self._n % 10)]
        if host is None:
            child = Child(args, self.env, self.log)
        else:  # another "host": own pid and UTS namespaces
            env = dict(self.env, BENCH_HOSTNAME=host)
            argv = ["unshare", "--pid", "--uts", "--fork", "--mount-proc", "--kill-child", PY, CHILD, *args]
            child = Child(args, env, self.log, argv=argv)
        ready = child.read(timeout=60)
        pid = ready["pid"]
        if host is not None:
            pid = _grandchild(child.pid)
        rank = Rank(child, ready["writer"], pid, host)
        self.ranks.append(rank)
        return rank

    def leader(self) -> tuple[int, int]:
        from distwal.leader.election import highest_epoch, read_lease

        lease = read_lease(self.dir) or {}
        epoch = int(lease.get("epoch", 0))
        if not lease or lease.get("released") or epoch != highest_epoch(self.dir):
            return 0, 0
        return int(lease.get("pid", 0)), epoch

    def wait_steady(self, timeout: float = 60.0) -> None:
        """A leader stands, and every live rank has had records stored since now."""
        mark = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, _epoch = self.leader()
            if pid and any(r.pid == pid for r in self.ranks):
                seen: set[str] = set()
                for when, _e, status, top in reversed(self.server.events):
                    if when < mark:
                        break
                    if status == 200:
                        seen.update(top)
                if all(r.writer in seen for r in self.ranks):
                    return
            time.sleep(0.02)
        raise TimeoutError(f"cluster {self.dir} not steady within {timeout:.0f} s")

    def kill(self, rank: Rank) -> float:
        t = time.time()
        os.kill(rank.pid, signal.SIGKILL)
        self.ranks.remove(rank)
        return t

    def first_event(self, since: int, predicate: Callable[[tuple[float, int, int, dict[str, int]]], bool]) -> Any:
        events = self.server.events
        for i in range(since, len(events)):
            if predicate(events[i]):
                return events[i]
        return None

    def close(self) -> None:
        for rank in list(self.ranks):
            rank.child.kill()
        self.ranks.clear()
        self.server.shutdown()
        self.server.server_close()


def _grandchild(pid: int) -> int:
    """The writer's pid on this host, under `unshare --fork` (the child of the unshare process)."""
    import psutil

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = [p for p in psutil.Process(pid).children(recursive=True) if CHILD in " ".join(p.cmdline())]
        if kids:
            return kids[0].pid
        time.sleep(0.01)
    raise RuntimeError("cannot find the writer under unshare")


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    import psutil

    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        raise RuntimeError(f"process {pid} still alive {timeout} s after SIGKILL") from None


def _final_seq(root: str, writer: str) -> int | None:
    """The last durable seq a killed writer left on disk (its folder in writers/ or adopted/)."""
    from distwal._folder import iter_items
    from distwal._segment import Block

    for sub in ("writers", "adopted"):
        path = os.path.join(root, sub, writer)
        if not os.path.isdir(path):
            continue
        try:
            last = 0
            for item in iter_items(path):
                if isinstance(item, Block):
                    last = max(last, item.last_seq)
            return last
        except OSError:
            continue
    return None


def run_failover(scale: Scale, base: str, log: Any) -> dict[str, Any]:
    cl = Cluster(base, "cluster", log)
    out: dict[str, Any] = {"failover": [], "adopt": []}
    try:
        for _ in range(3):
            cl.start_rank()
        cl.wait_steady()
        for _ in range(scale.failovers):
            pid, epoch = cl.leader()
            victim = next(r for r in cl.ranks if r.pid == pid)
            since = len(cl.server.events)
            t_kill = cl.kill(victim)
            t_epoch = t_ack = None
            deadline = time.monotonic() + 60
            from distwal.leader.election import highest_epoch

            while t_ack is None and time.monotonic() < deadline:
                if t_epoch is None and highest_epoch(cl.dir) > epoch:
                    t_epoch = time.time()
                ev = cl.first_event(since, lambda e, old=epoch: e[1] > old and e[2] == 200)
                if ev is not None:
                    t_ack = ev[0]
                    if t_epoch is None:
                        t_epoch = t_ack
                time.sleep(0.002)
            victim.child.kill()
            if t_ack is None or t_epoch is None:
                raise TimeoutError("no batch from a new epoch within 60 s of killing the leader")
            out["failover"].append({"ack_s": t_ack - t_kill, "epoch_s": t_epoch - t_kill})
            cl.start_rank()
            cl.wait_steady()
        print("ship: failovers done", file=sys.stderr, flush=True)
        for _ in range(scale.adoptions):
            pid, _epoch = cl.leader()
            victim = next(r for r in cl.ranks if r.pid != pid)
            out["adopt"].append(_adopt_once(cl, victim, wait_tombstone=True))
            cl.start_rank()
            cl.wait_steady()
        print("ship: same-host adoptions done", file=sys.stderr, flush=True)
    finally:
        cl.close()
    return out


def _adopt_once(cl: Cluster, victim: Rank, wait_tombstone: bool) -> dict[str, Any]:
    writer = victim.writer
    t_kill = cl.kill(victim)
    _wait_gone(victim.pid)
    final = _final_seq(cl.dir, writer)
    t_moved = t_tomb = t_acked = None
    tomb_path = os.path.join(cl.dir, "history", f"{writer}.json")
    folder = os.path.join(cl.dir, "writers", writer)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = time.time()
        if t_moved is None and not os.path.exists(folder):
            t_moved = now
        if t_tomb is None and os.path.exists(tomb_path):
            t_tomb = now
            if final is None:
                with open(tomb_path) as f:
                    final = int(json.load(f)["acked_seq"])
        if t_acked is None and final is not None:
            ev = cl.first_event(0, lambda e, last=final: e[2] == 200 and e[3].get(writer, 0) >= last)
            if ev is not None:
                t_acked = max(ev[0], t_kill)
        if t_moved is not None and t_acked is not None and (t_tomb is not None or not wait_tombstone):
            break
        time.sleep(0.005)
    victim.child.kill()
    if t_moved is None or t_acked is None:
        raise TimeoutError(f"writer {writer} not adopted and shipped within 60 s (moved={t_moved}, acked={t_acked})")
    return {"moved_s": t_moved - t_kill, "acked_s": t_acked - t_kill,
            "tomb_s": None if t_tomb is None else t_tomb - t_kill, "final_seq": final}


def unshare_usable() -> str | None:
    """None if `unshare --pid --uts --fork --mount-proc` works here, else why not."""
    try:
        done = subprocess.run(["unshare", "--pid", "--uts", "--fork", "--mount-proc", "--kill-child", PY, "-c",
                               "import os; print(os.getpid())"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unshare not usable: {exc}"
    if done.returncode != 0 or done.stdout.strip() != "1":
        return f"unshare not usable: {(done.stderr or done.stdout).strip()[:200]}"
    return None


def run_other_host(scale: Scale, base: str, log: Any) -> dict[str, Any]:
    why = unshare_usable()
    if why is not None:
        return {"unavailable": why}
    cl = Cluster(base, "cluster-hosts", log, lease=LEASE_OTHER_HOST)
    out: list[dict[str, Any]] = []
    try:
        for _ in range(2):
            cl.start_rank()
        cl.wait_steady()
        for i in range(scale.other_host):
            victim = cl.start_rank(host=f"otherhost{i}")
            cl.wait_steady()
            out.append(_adopt_once(cl, victim, wait_tombstone=False))
        print("ship: other-host adoptions done", file=sys.stderr, flush=True)
    finally:
        cl.close()
    return {"adopt": out}


# -- 4. scale -----------------------------------------------------------------------------------------


def run_scale(scale: Scale, base: str, log: Any, discard_url: str) -> dict[int, dict[str, Any]]:
    import psutil

    out: dict[int, dict[str, Any]] = {}
    for n in scale.scan_sizes:
        root = os.path.join(base, f"scale-{n}")
        helpers: list[Child] = []
        leader: Child | None = None
        try:
            t0 = time.perf_counter()
            per = 256
            helpers = [Child(["many", root, str(min(per, n - i)), "0.5"], clean_env(), log) for i in range(0, n, per)]
            for h in helpers:
                h.read(timeout=600)
            made_s = time.perf_counter() - t0
            leader = Child(["scan", root, discard_url], clean_env(), log)
            first = leader.read(timeout=300)
            leader.send("drain 120")
            drained = leader.read(timeout=200)
            leader.send(f"cycles {scale.phase_s}")
            idle = leader.read(timeout=scale.phase_s + 120)
            leader.send("full 10")
            full = leader.read(timeout=300)
            for h in helpers:
                h.send(f"trickle {10 * 256}")  # about 10 records/s for every writer
                h.read(timeout=30)
            time.sleep(1.0)
            leader.send(f"cycles {scale.phase_s}")
            busy = leader.read(timeout=scale.phase_s + 120)
            for h in helpers:
                h.send("idle")
                h.read(timeout=30)
            result: dict[str, Any] = {"writers": n, "made_s": made_s, "first": first, "drained": drained,
                                      "idle": idle, "full": full, "busy": busy}
            if n == scale.cpu_writers:
                leader.send("drain 30")
                leader.read(timeout=60)
                before = [psutil.Process(h.pid).cpu_times() for h in helpers]
                leader.send(f"cpu {scale.cpu_s}")
                result["cpu"] = leader.read(timeout=scale.cpu_s + 120)
                after = [psutil.Process(h.pid).cpu_times() for h in helpers]
                result["helpers_cpu_s"] = sum(a.user + a.system - b.user - b.system for a, b in zip(after, before))
            out[n] = result
            print(f"ship: scale with {n} writers done", file=sys.stderr, flush=True)
        finally:
            if leader is not None:
                leader.close()
            for h in helpers:
                h.kill()
            shutil.rmtree(root, ignore_errors=True)
    return out


# -- 5. memory ----------------------------------------------------------------------------------------


def run_memory(scale: Scale, base: str, log: Any, discard_url: str, bytes_per_record: float) -> dict[str, Any]:
    per_writer = math.ceil(scale.memory_bytes / bytes_per_record / scale.writers)
    backlog = make_backlog(os.path.join(base, "memory"), scale.writers, per_writer, log)
    print(f"ship: memory backlog written ({backlog.bytes / 1e6:,.0f} MB, {backlog.records:,} records, "
          f"{backlog.write_s:.0f} s)", file=sys.stderr, flush=True)
    os.sync()  # the backlog's write-back does not compete with the drain
    child = Child(["memory", backlog.dir, discard_url, str(backlog.records)], clean_env(), log)
    try:
        result = child.read(timeout=3600)
    finally:
        child.close()
        shutil.rmtree(backlog.dir, ignore_errors=True)
    result["bytes"] = backlog.bytes
    return result


# -- report -------------------------------------------------------------------------------------------


def _range(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    if len(values) < 2:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def _ms(values: list[float]) -> str:
    return _range([v * 1e3 for v in values], ".0f") + " ms"


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
        rows.append([case.label, _range(rates, ",.0f"), ratio_cell, cpu_cell, wire_cell, "; ".join(notes)])
    return rows, facts


def other_rows(fo: dict[str, Any], oh: dict[str, Any], sc: dict[int, dict[str, Any]], mem: dict[str, Any],
               scale: Scale, facts: dict[str, Any]) -> list[list[str]]:
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
    if fo.get("error"):
        rows.append(["failover / same-host adoption", "FAILED", "-", fo["error"]])
    if fo.get("failover"):
        ack = [r["ack_s"] for r in fo["failover"]]
        ep = [r["epoch_s"] for r in fo["failover"]]
        facts["failover_median"], facts["failover_max"] = statistics.median(ack), max(ack)
        rows.append([
            "failover: SIGKILL of the leading rank -> first batch of the new epoch stored",
            f"median {statistics.median(ack) * 1e3:.0f} ms, max {max(ack) * 1e3:.0f} ms",
            "<= 2 s",
            f"{len(ack)} kills, 3 ranks logging {RATE:,} records/s each, default lease; new epoch claimed after "
            f"{_ms(ep)}; all: {', '.join(f'{a * 1e3:.0f}' for a in ack)} ms",
        ])
    if fo.get("adopt"):
        moved = [r["moved_s"] for r in fo["adopt"]]
        acked = [r["acked_s"] for r in fo["adopt"]]
        tomb = [r["tomb_s"] for r in fo["adopt"] if r["tomb_s"] is not None]
        facts["adopt_same_max"] = max(max(moved), max(acked))
        rows.append([
            "adoption, same host: SIGKILL of a non-leading rank -> folder moved to adopted/; its last record stored",
            f"moved {_ms(moved)}; stored {_ms(acked)}",
            "about 1 s",
            f"{len(moved)} kills; liveness by pid and start time; removed with a tombstone after {_ms(tomb)}",
        ])
    if oh.get("unavailable"):
        rows.append(["adoption, other host (own pid namespace)", "not measured", "lease + 1 s", oh["unavailable"]])
    elif oh.get("error"):
        rows.append(["adoption, other host (own pid namespace)", "FAILED", "-", oh["error"]])
    elif oh.get("adopt"):
        moved = [r["moved_s"] for r in oh["adopt"]]
        acked = [r["acked_s"] for r in oh["adopt"]]
        facts["adopt_other_max"] = max(max(moved), max(acked))
        rows.append([
            "adoption, other host (`unshare --pid --uts --fork --mount-proc`): SIGKILL -> moved; last record stored",
            f"moved {_ms(moved)}; stored {_ms(acked)}",
            f"lease + 1 s = {LEASE_OTHER_HOST + 1:.0f} s",
            f"{len(moved)} kills; DISTWAL_LEASE_S={LEASE_OTHER_HOST:g} for every process; liveness by heartbeat "
            "(renewed every 1 s) seen unchanged for the lease on the leader's clock",
        ])
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

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

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
                   f"{facts['adopt_same_max'] * 1e3:.0f} ms to move the folder and store its last record; pass mark 1.5 s)")
    if "adopt_other_max" in facts:
        limit = LEASE_OTHER_HOST + 1
        out.append(f"adoption of another host's writer within lease + 1 s: "
                   f"**{verdict(facts['adopt_other_max'] <= limit)}** (worst {facts['adopt_other_max']:.2f} s, "
                   f"lease {LEASE_OTHER_HOST:g} s)")
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


def markdown_table(headers: list[str], align: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


def text_table(headers: list[str], rows: list[list[str]], numeric: int) -> str:
    """Columns 1..numeric-1 right-aligned and padded; the last column (notes) free."""
    cols = len(headers) - 1
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(cols)]
    out = []
    for r in [headers, *rows]:
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) if i < numeric else r[i].ljust(widths[i])
                                            for i in range(1, cols)]
        out.append("  ".join(cells) + "  " + r[cols])
    return "\n".join(out)


T_HEADERS = ["case", "records/s", "vs its raw limit", "leader CPU us/record", "bytes/record sent", "notes"]
T_ALIGN = ["---", "---:", "---:", "---:", "---:", "---"]
O_HEADERS = ["case", "result", "target", "notes"]
O_ALIGN = ["---", "---", "---", "---"]


def main(short: bool = False) -> str:
    """Run the ship benchmark; print the tables; return them (with the targets) as markdown."""
    scale = SHORT if short else FULL
    base = tempfile.mkdtemp(prefix="distwal-bench-ship-")
    log_path = os.path.join(base, "children.log")
    log = open(log_path, "w")
    started = time.monotonic()
    discard = Child(["discard"], clean_env(), log)
    errors: list[str] = []
    fo: dict[str, Any] = {}
    oh: dict[str, Any] = {}
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
        discard_url = discard.read(timeout=60)["url"]
        try:
            cases, tfacts = run_throughput(scale, base, log, discard_url)
            facts.update(tfacts)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            errors.append(f"throughput: {type(exc).__name__}: {exc}")
        errors += [f"{c.label}: {c.error}" for c in cases if c.error]
        attempt("failover", lambda: run_failover(scale, base, log), fo)
        attempt("other host", lambda: run_other_host(scale, base, log), oh)
        if oh.get("unavailable"):
            facts["other_host_unavailable"] = oh["unavailable"]
        attempt("scale", lambda: run_scale(scale, base, log, discard_url), sc)
        attempt("memory", lambda: run_memory(scale, base, log, discard_url, facts["bytes_per_record"]), mem)
    finally:
        kill_all()
        log.close()
        if errors:
            with open(log_path, errors="replace") as f:
                tail = f.read()[-3000:]
            print(f"ship: children's stderr (last 3000 characters):\n{tail}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
    t_rows, facts = throughput_rows(cases, facts)
    o_rows = other_rows(fo, oh, sc, mem, scale, facts)
    goals = targets(facts)
    elapsed = time.monotonic() - started
    print(text_table(T_HEADERS, t_rows, 5))
    print()
    print(text_table(O_HEADERS, o_rows, 1))
    print()
    for line in goals:
        print("- " + line.replace("**", ""))
    if errors:
        raise RuntimeError("ship: parts failed: " + "; ".join(errors))
    sizes = (
        f"Backlog: {scale.writers} writers x {scale.per_writer:,} records of {109} bytes (interval mode, "
        f"DISTWAL_DISABLE_SENDER=1, then finish()), {facts['bytes_per_record']:.0f} bytes/record on disk, "
        f"{scale.writers} x {scale.serve_per_writer:,} for `distwal serve`; every run drains a hard-linked copy of "
        f"it; {scale.reps} interleaved repetition{'s' if scale.reps > 1 else ''}, median (range in brackets). "
        f"The Sender batches {BATCH_RECORDS:,} records (or 4 MiB) per request. Ran in {elapsed:.0f} s."
    )
    md = [
        sizes,
        "",
        markdown_table(T_HEADERS, T_ALIGN, t_rows),
        "",
        markdown_table(O_HEADERS, O_ALIGN, o_rows),
        "",
        "Targets:",
        "",
        *[f"- {line}" for line in goals],
    ]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    text = main(short="--short" in sys.argv[1:])
    out_dir = os.path.join(HERE, ".out")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "ship.md"), "w") as f:
        f.write(text)
