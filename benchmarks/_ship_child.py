"""Child processes of the ship benchmark (benchmarks/ship.py): `python _ship_child.py ROLE ARGS...`.

Roles (each prints JSON lines on stdout; commands, where any, come as lines on stdin):

  backlog DIR N RANK    a writer (DISTWAL_DISABLE_SENDER=1 from the parent) logs N records of the
                        109-byte record of append.py as fast as it can, then finish(): a backlog
  discard               an HTTP/1.1 server that reads every body and answers 200 (GET /stats: counts)
  worker                runs throughput jobs sent as JSON lines: the library's Sender draining a
                        directory, or the raw limit (read the segment files and POST the bytes)
  many DIR K INTERVAL   K live writer folders from one process (K Writer objects, each with its
                        flusher renewing its heartbeat); `trickle RATE` / `idle` on stdin
  scan DIR URL          a leader timing Sender.cycle() and its CPU use (commands on stdin)
  memory DIR URL N      a leader draining a large backlog, sampling its own RSS

Nothing here is imported by distwal; everything it uses from distwal is what a leader uses.
`leading()` is the one place that takes leadership and builds the Sender (for ship, hosts,
otlp and postgres alike).
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import cycle, islice
from typing import Any, Iterator

pc = time.perf_counter


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _steps(n: int) -> Any:
    return islice(cycle(range(10, 100)), n)  # two-digit steps: every record is exactly 109 bytes


# -- writers ------------------------------------------------------------------------------------------


def role_backlog(root: str, n: int, rank: int) -> None:
    import distwal

    w = distwal.init(dir=root, durability="interval", disable_sender=True)
    log = w.log
    t0 = pc()
    for step in _steps(n):
        log({"type": "metric", "rank": rank, "step": step, "ts": 1732200000.123,
             "data": {"loss": 0.4321, "lr": 0.0003, "grad_norm": 1.234}})  # fmt: skip
    ok = w.finish(timeout=600)
    emit({"n": n, "seq": w.durable_seq, "ok": ok, "s": pc() - t0, "writer": w.id})


def role_many(root: str, k: int, interval: float) -> None:
    """K writer folders kept live by one process: K Writer objects, each with its own flusher thread.

    Each renews its heartbeat every second (the default heartbeat interval); the commit
    interval is `interval` so that K idle flushers do not wake 50 times a second each.
    """
    from distwal._config import Config
    from distwal._files import ensure_domain, prepare_dir
    from distwal._layout import Modes
    from distwal.writer.writer import Writer

    config = Config.load(dir=root, durability="interval", disable_sender=True, interval=interval)
    modes = Modes.for_config(config.shared_group)
    prepare_dir(config.dir, modes)
    domain = ensure_domain(config.dir, modes)
    writers = []
    t0 = pc()
    for i in range(k):
        w = Writer(config, domain)
        w.log({"type": "metric", "rank": i % 10, "step": 42, "ts": 1732200000.123,
               "data": {"loss": 0.4321, "lr": 0.0003, "grad_norm": 1.234}})  # fmt: skip
        writers.append(w)
    for w in writers:
        w.flush(timeout=60)
    emit({"ready": True, "writers": len(writers), "s": pc() - t0, "pid": os.getpid()})
    rate = [0.0]

    def trickle() -> None:
        i = 0
        while True:
            r = rate[0]
            if r <= 0:
                time.sleep(0.05)
                continue
            burst = max(1, int(r / 20))
            for _ in range(burst):
                writers[i % len(writers)].log(
                    {"type": "metric", "rank": i % 10, "step": 42, "ts": 1732200000.123,
                     "data": {"loss": 0.4321, "lr": 0.0003, "grad_norm": 1.234}})  # fmt: skip
                i += 1
            time.sleep(burst / r)

    threading.Thread(target=trickle, daemon=True).start()
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["trickle"]:
            rate[0] = float(words[1])
        elif words[:1] == ["idle"]:
            rate[0] = 0.0
        emit({"ok": line.strip()})
    os._exit(0)  # the folders are the parent's to delete; no finish marks


# -- the discarding server --------------------------------------------------------------------------------


class _Discard(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    counts = {"requests": 0, "bytes": 0}
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        left = length
        buf = getattr(self.server, "scratch", None)
        if buf is None:
            buf = self.server.scratch = bytearray(1 << 20)  # type: ignore[attr-defined]
        view = memoryview(buf)
        read = self.rfile.readinto
        while left > 0:
            got = read(view[: min(left, len(buf))])
            if not got:
                break
            left -= got
        with self.lock:
            self.counts["requests"] += 1
            self.counts["bytes"] += length
        # Status line, headers and body in one write: two small writes on one connection
        # meet Nagle's algorithm and the peer's delayed ACK, a 40 ms stall per request.
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps(self.counts).encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def log_message(self, format: str, *args: Any) -> None:
        pass


def role_discard() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
    server.daemon_threads = True
    emit({"url": f"http://127.0.0.1:{server.server_address[1]}/ingest", "pid": os.getpid()})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # until the parent closes our stdin


# -- leading ------------------------------------------------------------------------------------------


@contextmanager
def leading(root: str, url: str, compress: bool = True, sink: Any = None) -> Iterator[Any]:
    """Lead `root` through the library's lead(), as `distwal drain` does, for the length of a with
    block: its Sender, with HTTPSink(url, compress) or `sink` (for benchmarks of other sinks)."""
    from distwal.leader.lead import lead
    from distwal.sinks.http import HTTPSink

    using = sink if sink is not None else HTTPSink(url, compress=compress)
    with lead(root, url, using=using, kind="bench", timeout=30) as sender:
        yield sender


def drain(sender: Any, expected: int, timeout: float = 900.0, max_errors: int = 50) -> dict[str, Any]:
    """Run the sender's cycles until `expected` records are acknowledged; time and CPU from the first cycle."""
    gc.collect()
    c0, t0 = _cpu(), pc()
    cycles = 0
    deadline = time.monotonic() + timeout
    while sender.health.acked_records < expected:
        cycles += 1
        if not sender.cycle():
            if time.monotonic() > deadline or sender.health.errors > max_errors:
                break
            time.sleep(0.005)
    t1, c1 = pc(), _cpu()
    health = sender.health
    return {"n": health.acked_records, "expected": expected, "s": t1 - t0, "cpu_s": c1 - c0,
            "batches": health.acked_batches, "cycles": cycles, "errors": health.errors,
            "last_error": health.last_error}


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def job_sender(job: dict[str, Any]) -> dict[str, Any]:
    """Drain a backlog of finished writers with the library's Sender; time until every record is acked."""
    with leading(job["dir"], job["url"], job["compress"]) as sender:
        result = drain(sender, job["records"], job.get("timeout", 600))
        sender.roster.retire(sender.sink)
    return result


def _segments(root: str) -> list[str]:
    from distwal._layout import WRITERS, parse_segment_name

    paths = []
    base = os.path.join(root, WRITERS)
    for name in sorted(os.listdir(base)):
        folder = os.path.join(base, name)
        for seg in sorted(os.listdir(folder)):
            if parse_segment_name(seg) is not None:
                paths.append(os.path.join(folder, seg))
    return paths


def _post_all(url: str, compress: bool, bodies: Any) -> tuple[int, int]:
    """POST each body (gzip level 1 when compress, as HTTPSink does) with an httpx client like HTTPSink's."""
    import httpx

    client = httpx.Client(timeout=60, verify=True)
    headers = {"Content-Type": "application/x-ndjson", "User-Agent": "distwal/1",
               "Distwal-Epoch": "1", "Distwal-Domain": "bench"}  # fmt: skip
    if compress:
        headers["Content-Encoding"] = "gzip"
    requests = sent = 0
    try:
        for body in bodies:
            if compress:
                body = gzip.compress(body, compresslevel=1)
            response = client.post(url, content=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
            requests += 1
            sent += len(body)
    finally:
        client.close()
    return requests, sent


def _read_chunks(paths: list[str], chunk: int) -> Any:
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while True:
                data = f.read(chunk)
                if not data:
                    break
                yield data


def job_raw(job: dict[str, Any]) -> dict[str, Any]:
    """The raw limit: read the segment files in chunks of `chunk` bytes and POST them as they are."""
    paths = _segments(job["dir"])
    total = sum(os.path.getsize(p) for p in paths)
    gc.collect()
    c0, t0 = _cpu(), pc()
    requests, sent = _post_all(job["url"], job["compress"], _read_chunks(paths, job["chunk"]))
    t1, c1 = pc(), _cpu()
    return {"n": job["records"], "s": t1 - t0, "cpu_s": c1 - c0, "requests": requests, "bytes": total, "sent": sent}


_PREBUILT: dict[str, tuple[str, list[int]]] = {}


def job_prebuilt(job: dict[str, Any]) -> dict[str, Any]:
    """Envelopes built ahead (not timed) into a file of request bodies; timed: read them and POST them.

    The bodies are what the Sender would send for the same backlog (the same envelopes, one
    request per `batch_records`), built once per backlog with distwal's own reader.
    """
    from distwal._folder import iter_envelopes, list_writers

    key = job["dir"]
    if key not in _PREBUILT:
        path = os.path.join(job["scratch"], f"bodies-{len(_PREBUILT)}.ndjson")
        sizes = []
        per = job["batch_records"]
        with open(path, "wb") as f:
            for writer in list_writers(job["dir"]):
                lines: list[bytes] = []
                for _seq, _ts, envelope in iter_envelopes(writer):
                    lines.append(envelope)
                    if len(lines) == per:
                        body = b"\n".join(lines) + b"\n"
                        f.write(body)
                        sizes.append(len(body))
                        lines = []
                if lines:
                    body = b"\n".join(lines) + b"\n"
                    f.write(body)
                    sizes.append(len(body))
        _PREBUILT[key] = (path, sizes)
    path, sizes = _PREBUILT[key]

    def bodies() -> Any:
        with open(path, "rb", buffering=0) as f:
            for size in sizes:
                yield f.read(size)

    gc.collect()
    c0, t0 = _cpu(), pc()
    requests, sent = _post_all(job["url"], job["compress"], bodies())
    t1, c1 = pc(), _cpu()
    return {"n": job["records"], "s": t1 - t0, "cpu_s": c1 - c0, "requests": requests, "bytes": sum(sizes),
            "sent": sent}


def job_parts(job: dict[str, Any]) -> dict[str, Any]:
    """Where the Sender's CPU goes, per record, on one batch of the backlog: reading and checking
    the blocks (read_segment), building the envelopes (Batch.ndjson), gzip level 1 (as HTTPSink)."""
    from array import array

    from distwal._folder import iter_items, list_writers
    from distwal._marks import Meta
    from distwal._segment import Block
    from distwal.sinks import Batch, Chunk

    writer = list_writers(job["dir"])[0]
    per = job["batch_records"]

    def best(fn: Any, reps: int = 5) -> float:
        times = []
        for _ in range(reps):
            t0 = pc()
            fn()
            times.append(pc() - t0)
        return statistics.median(times)

    blocks: list[Any] = []
    read_s = best(lambda: blocks.__setitem__(slice(None), [b for b in iter_items(writer.path) if isinstance(b, Block)]), 3)
    records = sum(len(b.lines) for b in blocks)
    ts, lines = array("d"), []
    for b in blocks:
        ts.extend(b.ts)
        lines.extend(b.lines)
        if len(lines) >= per:
            break
    chunk = Chunk(writer.id, (writer.meta or Meta()).who, writer.envelope_prefix, blocks[0].first_seq, ts[:per], lines[:per])
    batch = Batch(1, "bench", (chunk,))
    n = len(chunk)
    envelope_s = best(batch.ndjson)
    body = batch.ndjson()
    gzip_s = best(lambda: gzip.compress(body, compresslevel=1))
    return {"read_us": read_s / records * 1e6, "envelope_us": envelope_s / n * 1e6, "gzip_us": gzip_s / n * 1e6,
            "envelope_bytes": len(body) / n}


def job_rtt(job: dict[str, Any]) -> dict[str, Any]:
    """Round trip of a one-envelope POST (a leader's batch when little is logged), as HTTPSink sends it."""
    import httpx

    client = httpx.Client(timeout=60, verify=True)
    headers = {"Content-Type": "application/x-ndjson", "User-Agent": "distwal/1",
               "Distwal-Epoch": "1", "Distwal-Domain": "bench-rtt"}  # fmt: skip
    times = []
    try:
        for seq in range(1, job["count"] + 1):
            body = b'{"writer":"bench-rtt","seq":%d,"ts":1732200000.123,"data":{"loss":0.4321}}\n' % seq
            t0 = pc()
            response = client.post(job["url"], content=body, headers=headers)
            times.append(pc() - t0)
            if response.status_code != 200:
                raise RuntimeError(f"{job['url']} answered {response.status_code}")
    finally:
        client.close()
    return {"median_ms": statistics.median(times[1:]) * 1e3, "min_ms": min(times[1:]) * 1e3, "count": len(times) - 1}


def role_worker() -> None:
    jobs = {"sender": job_sender, "raw": job_raw, "prebuilt": job_prebuilt, "parts": job_parts, "rtt": job_rtt}
    emit({"ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        job = json.loads(line)
        try:
            emit(jobs[job["kind"]](job))
        except Exception as exc:  # noqa: BLE001 - the parent reports it
            import traceback

            traceback.print_exc()
            emit({"error": f"{type(exc).__name__}: {exc}"})


# -- the scan at scale ------------------------------------------------------------------------------------


def _stats_ms(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3  # noqa: E731
    return {"count": len(values), "median": statistics.median(values) * 1e3, "p90": pick(0.90), "p99": pick(0.99),
            "max": ordered[-1] * 1e3}


def role_scan(root: str, url: str) -> None:
    """A leader timing Sender.cycle() over many writers; commands on stdin, one JSON result each.

    drain SECONDS      cycle until nothing was acked for a second (at most SECONDS)
    cycles SECONDS     the sender's own loop (Sender.run, with its pauses): time every cycle
    full N             N cycles with every timer forced due: discovery, liveness of every writer and a
                       read attempt of every writer in the same cycle (the worst case of one cycle)
    cpu SECONDS        Sender.run for SECONDS: process CPU time / wall time
    """
    with leading(root, url) as sender:
        _scan(sender)


def _scan(sender: Any) -> None:
    from distwal.leader import sender as _sender

    t0 = pc()
    first_acked = sender.cycle()
    emit({"first_cycle_ms": (pc() - t0) * 1e3, "writers": len(sender.roster.writers), "acked": first_acked})

    real_cycle = sender.cycle

    def loop(seconds: float, timed: list[float] | None, sent_times: list[float] | None) -> int:
        """The sender's own loop (Sender.run: its pauses when idle or trickling), timing every cycle."""
        acked = [0]

        def timed_cycle() -> int:
            s0 = pc()
            sent = real_cycle()
            dt = pc() - s0
            acked[0] += sent
            if sent and sent_times is not None:
                sent_times.append(dt)
            elif not sent and timed is not None:
                timed.append(dt)
            return sent

        sender.cycle = timed_cycle  # type: ignore[method-assign]
        stop = time.monotonic() + seconds
        try:
            outcome = sender.run(lambda: time.monotonic() >= stop)
        finally:
            sender.cycle = real_cycle  # type: ignore[method-assign]
        if outcome != "stopped":
            raise RuntimeError(f"the sender's loop ended: {outcome}")
        return acked[0]

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd, arg = words[0], float(words[1])
        if cmd == "drain":
            stop = time.monotonic() + arg
            quiet_since = time.monotonic()
            acked = 0
            while time.monotonic() < stop and time.monotonic() - quiet_since < 1.0:
                sent = sender.cycle()
                acked += sent
                if sent:
                    quiet_since = time.monotonic()
                else:
                    time.sleep(_sender.IDLE_PAUSE)
            emit({"cmd": cmd, "acked": acked, "writers": len(sender.roster.writers)})
        elif cmd == "cycles":
            idle: list[float] = []
            busy: list[float] = []
            acked = loop(arg, idle, busy)
            emit({"cmd": cmd, "idle": _stats_ms(idle), "sent": _stats_ms(busy), "acked": acked,
                  "writers": len(sender.roster.writers), "batches": sender.health.acked_batches})
        elif cmd == "full":
            times = []
            for _ in range(int(arg)):
                sender.roster.look_again()
                s0 = pc()
                sender.cycle()
                times.append(pc() - s0)
                time.sleep(_sender.IDLE_PAUSE)
            emit({"cmd": cmd, "full": _stats_ms(times), "writers": len(sender.roster.writers)})
        elif cmd == "cpu":
            gc.collect()
            c0, w0 = time.process_time(), pc()
            acked = loop(arg, None, None)
            c1, w1 = time.process_time(), pc()
            emit({"cmd": cmd, "cpu_s": c1 - c0, "wall_s": w1 - w0, "acked": acked, "writers": len(sender.roster.writers),
                  "adopted": sender.health.adopted})


# -- memory -------------------------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def role_memory(root: str, url: str, expected: int) -> None:
    """Drain a large backlog as the leader does (HTTPSink, gzip on); sample our RSS as we go."""
    with leading(root, url) as sender:
        _sample_memory(sender, expected)


def _sample_memory(sender: Any, expected: int) -> None:
    samples: list[tuple[float, int, int]] = []  # (seconds, acked, rss KiB)
    gc.collect()
    t0 = pc()
    c0 = _cpu()
    next_sample = 0.0
    samples.append((0.0, 0, _status_kib("VmRSS")))
    while sender.health.acked_records < expected:
        sent = sender.cycle()
        now = pc() - t0
        if now >= next_sample:
            samples.append((now, sender.health.acked_records, _status_kib("VmRSS")))
            next_sample = now + 0.25
        if not sent:
            if sender.health.errors > 50 or now > 1800:
                break
            time.sleep(0.01)
    t1, c1 = pc(), _cpu()
    samples.append((t1 - t0, sender.health.acked_records, _status_kib("VmRSS")))
    emit({"n": sender.health.acked_records, "expected": expected, "s": t1 - t0, "cpu_s": c1 - c0,
          "hwm_kib": _status_kib("VmHWM"), "samples": samples, "errors": sender.health.errors})


def main(argv: list[str]) -> None:
    role, args = argv[0], argv[1:]
    if role == "backlog":
        role_backlog(args[0], int(args[1]), int(args[2]))
    elif role == "many":
        role_many(args[0], int(args[1]), float(args[2]))
    elif role == "discard":
        role_discard()
    elif role == "worker":
        role_worker()
    elif role == "scan":
        role_scan(args[0], args[1])
    elif role == "memory":
        role_memory(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
