"""A small cluster for process tests: writer ranks, a fault-injecting ingest server, the CLI.

    with FaultServer(tmp_path / "sink.db") as server, ExitStack() as stack:
        env = cluster_env(wal_dir, server.url)
        rank = stack.enter_context(start_writer(tmp_path, env, "a", stop_file))
        rank.wait_for("ready")
        ...
        wait_until(lambda: server.has_all(acks), 30, "every acked record in the sink")

FaultServer is the reference IngestServer (real HTTP on 127.0.0.1, port 0, SQLite, dedup on
(writer, seq), epoch fencing, the `requests` table) with two hooks: `plan(request)` picks a
fault for each request before it is stored, and `on_commit(request)` runs after a batch was
committed and before the reply leaves (to SIGKILL the leader between the sink's commit and
its cursor write). Every request is also kept in `server.log` with its envelopes.

WRITER is a rank script driven by a JSON argument (see writer_args): it logs records
{"w": tag, "i": i} (seq == i + 1, one logging thread) in sync mode and reports every seq
that `log` returned as an "ack" line, so the parent knows exactly what was acknowledged.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

from distwal._server import IngestServer, Reply

from .procs import Child, child_env, pick_seed, read_json, spawn

LEASE_S = "2"  # seconds: short, so failovers in tests take about a second or two


# -- waiting -----------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, describe: Callable[[], str] | None = None) -> Any:
    """Poll `predicate` until truthy (returned) or fail after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            extra = f"\n{describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.1)


# -- the fault-injecting server ------------------------------------------------------------


@dataclass
class Request:
    """One POST as the server saw it."""

    index: int
    arrived: float
    epoch: int
    domain: str
    envelopes: list[dict[str, Any]]
    status: int | None = None  # what the server answered; None: no reply (dropped, or pending)
    fault: str = ""
    finished: float | None = None

    @property
    def keys(self) -> list[tuple[str, int]]:
        return [(e["writer"], e["seq"]) for e in self.envelopes]

    def __repr__(self) -> str:
        return f"<req #{self.index} epoch={self.epoch} n={len(self.envelopes)} status={self.status} {self.fault}>"


class KnownBug(AssertionError):
    """Raised by the assertion a strict xfail expects to fail (xfail(raises=KnownBug)): any
    other error, in the test or its fixtures, still fails the test instead of passing as xfail."""


def check_known_bug(condition: bool, message: str) -> None:
    if not condition:
        raise KnownBug(message)


class Drop(Exception):
    """Raised inside a handler to close the connection without any reply."""


@dataclass
class Fault:
    """What the plan wants done with one request (None from the plan: serve it normally)."""

    kind: str  # "reply", "drop", "commit_drop", "slow", "hold"
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    gate: threading.Event | None = None
    body: Callable[[Any], bytes] | None = None  # reply body from the request headers

    @classmethod
    def reply(cls, status: int, body: Callable[[Any], bytes] | None = None, **headers: str) -> Fault:
        return cls("reply", status=status, headers={k.replace("_", "-"): v for k, v in headers.items()}, body=body)


Plan = Callable[[Request], "Fault | None"]


class FaultServer(IngestServer):
    """IngestServer on 127.0.0.1:0 with fault injection; a context manager that serves on a thread."""

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        token: str | None = None,
        plan: Plan | None = None,
        port: int = 0,
        probes: bool = False,
    ) -> None:
        super().__init__(os.fspath(db_path), "127.0.0.1", port, token)
        self.db_file = os.fspath(db_path)
        self.plan = plan
        # The empty POST a first leader sends to check its sink: logged and given to the plan only
        # when a test checks that probe itself; other tests see batches alone.
        self.probes = probes
        self.on_commit: Callable[[Request], None] | None = None
        self.log: list[Request] = []
        self.seen_headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._gates: list[threading.Event] = []
        self._thread: threading.Thread | None = None
        self._inflight = 0
        self._idle = threading.Condition(self._lock)

    # -- lifecycle
    def __enter__(self) -> FaultServer:
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), name="fault-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for gate in self._gates:
            gate.set()
        self.shutdown()
        # IngestServer.server_close() closes its SQLite connections under running handler
        # threads (daemon threads, never joined): let the handlers leave the store first.
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=10)
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (Drop, ConnectionError, OSError)):
            return  # a deliberate drop, or a client we SIGKILLed: nothing to report
        super().handle_error(request, client_address)

    # -- the hook the reference server offers
    def handle_batch(self, headers: Any, body: bytes) -> Reply:
        with self._lock:
            self._inflight += 1
        try:
            return self._handle(headers, body)
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _handle(self, headers: Any, body: bytes) -> Reply:
        if not body and not self.probes:
            return super().handle_batch(headers, body)
        envelopes = _decode(headers, body)
        with self._lock:
            req = Request(len(self.log), time.time(), _int(headers.get("Distwal-Epoch")),
                          headers.get("Distwal-Domain", ""), envelopes)
            self.log.append(req)
            self.seen_headers.append(dict(headers.items()))
        fault = self.plan(req) if self.plan is not None else None
        try:
            reply = self._apply(req, headers, body, fault)
        except Drop:
            req.finished = time.time()
            raise
        req.status = reply[0]
        req.finished = time.time()
        return reply

    def _apply(self, req: Request, headers: Any, body: bytes, fault: Fault | None) -> Reply:
        if fault is not None:
            req.fault = fault.kind if fault.kind != "reply" else str(fault.status)
            if fault.kind == "reply":
                hdrs = {"Content-Type": "application/json", **fault.headers}
                text = fault.body(headers) if fault.body else orjson.dumps({"error": f"injected {fault.status}"})
                return fault.status, hdrs, text
            if fault.kind == "drop":
                raise Drop()
            if fault.kind == "slow":
                time.sleep(fault.seconds)  # the fault itself: a slow peer
            if fault.kind == "hold":
                assert fault.gate is not None
                self._gates.append(fault.gate)
                fault.gate.wait(60)
        reply = super().handle_batch(headers, body)
        if reply[0] == 200 and self.on_commit is not None:
            self.on_commit(req)
        if fault is not None and fault.kind == "commit_drop":
            req.status = reply[0]
            raise Drop()
        return reply

    # -- reading back
    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"file:{self.db_file}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def records(self) -> dict[str, dict[int, Any]]:
        """{writer: {seq: data}} as stored (deduplicated on (writer, seq) by the store)."""
        out: dict[str, dict[int, Any]] = defaultdict(dict)
        rows = self._query("SELECT writer, seq, data FROM records")
        for writer, seq, data in rows:
            assert seq not in out[writer], f"({writer}, {seq}) is stored more than once"
            out[writer][seq] = json.loads(data)
        return dict(out)

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM records")[0][0])

    def requests_table(self) -> list[dict[str, Any]]:
        """The server's own `requests` table (only stored or fenced batches are in it)."""
        cols = ("started", "ended", "domain", "epoch", "envelopes", "new", "status")
        rows = self._query(f"SELECT {', '.join(cols)} FROM requests ORDER BY rowid")
        return [dict(zip(cols, row)) for row in rows]

    def wire_duplicates(self) -> int:
        """Envelopes the store had already: delivered more than once at the wire."""
        return sum(r["envelopes"] - r["new"] for r in self.requests_table() if r["status"] == 200)

    def requests(self) -> list[Request]:
        with self._lock:
            return list(self.log)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _decode(headers: Any, body: bytes) -> list[dict[str, Any]]:
    try:
        if headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        return [orjson.loads(line) for line in body.splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def has_poison(req: Request) -> bool:
    return any(isinstance(e.get("data"), dict) and e["data"].get("poison") is True for e in req.envelopes)


# -- fencing: what "never two senders at once" can honestly mean -------------------------------


def assert_fenced(table: list[dict[str, Any]], context: str = "") -> None:
    """The server's log shows one leader's writes at a time, as fencing allows.

    Two leaders may well have requests in flight at once (a deposed leader's request can
    be on the wire, or paused, while its successor sends): fencing does not prevent that
    and we do not claim it. What it guarantees, and what is asserted:
    - a successful (200) request of epoch e never started after a 200 request of a newer
      epoch ended (an old leader never writes after a newer one has written), which is
      also "the epochs the server accepts only grow over time": if a ended before b
      started, epoch(a) <= epoch(b);
    - every 409 names an epoch older than one the server had already accepted.
    """
    ok = [r for r in table if r["status"] == 200]
    for newer in ok:
        for older in ok:
            if older["epoch"] < newer["epoch"]:
                assert older["started"] < newer["ended"], (
                    f"epoch {older['epoch']} wrote (started {older['started']:.6f}) after epoch "
                    f"{newer['epoch']} had written (ended {newer['ended']:.6f}) {context}"
                )
    for fenced in (r for r in table if r["status"] == 409):
        assert any(r["epoch"] > fenced["epoch"] and r["started"] < fenced["ended"] for r in ok), (
            f"409 for epoch {fenced['epoch']} but no newer epoch had been accepted before it {context}"
        )


# -- ranks -------------------------------------------------------------------------------------


WRITER = r'''
import distwal

opts = json.loads(sys.argv[1])
w = distwal.init(durability="sync")
emit("ready", w.id, os.getpid())
stop = opts.get("stop")
poison = set(opts.get("poison", []))
count = opts.get("count")
pace = opts.get("pace", 0.0)
i = 0
while (count is None or i < count) and not (stop and os.path.exists(stop)):
    record = {"w": opts["tag"], "i": i}
    if i in poison:
        record["poison"] = True
    seq = w.log(record)
    emit("ack", seq, i)      # after log returned: seq is acknowledged (durable)
    i += 1
    if pace:
        time.sleep(pace)     # the rank's own work between records
emit("logged", i)
for timeout in opts.get("flush_delivered", []):
    started = time.monotonic()
    emit("flushed", w.flush(timeout=timeout, delivered=True), round(time.monotonic() - started, 3))
if opts.get("wait_stop") and stop:
    while not os.path.exists(stop):
        time.sleep(0.02)
ok = w.finish(timeout=opts.get("finish_timeout", 30.0))
emit("finished", ok)
'''


def writer_args(tag: str, **opts: Any) -> str:
    return json.dumps({"tag": tag, **opts})


def cluster_env(wal_dir: str | os.PathLike[str], sink: str, sender: bool = True, **extra: str) -> dict[str, str]:
    """A rank's environment: the directory, the sink, a short lease."""
    return child_env(wal_dir, sender=sender, **{"DISTWAL_SINK": sink, "DISTWAL_LEASE_S": LEASE_S, **extra})


@contextmanager
def start_writer(workdir: str | os.PathLike[str], env: dict[str, str], tag: str, **opts: Any) -> Iterator[Child]:
    """A rank running WRITER (own script file, so concurrent spawns never share one); reaped on exit."""
    with spawn(workdir, WRITER, writer_args(tag, **opts), env=env, name=f"rank_{tag}.py") as child:
        yield child


def acks_of(child: Child) -> dict[int, int]:
    """{seq: i} of every record whose log() returned, as the rank reported."""
    return {int(line.parts[1]): int(line.parts[2]) for line in child.lines_with("ack")}


def writer_id_of(child: Child, timeout: float = 20.0) -> str:
    return child.wait_for("ready", timeout=timeout).parts[1]


def expected_record(tag: str, i: int) -> dict[str, Any]:
    return {"w": tag, "i": i}


def assert_acked_delivered_once(
    stored: dict[str, dict[int, Any]], writer: str, tag: str, acks: dict[int, int], context: str = "",
    finished: bool = False, skip: frozenset[int] = frozenset(),
) -> None:
    """Every acknowledged seq of `writer` is stored (once: (writer, seq) is the store's key) with
    the record logged under it, and nothing else is: the stored seqs are 1..n (minus `skip`,
    e.g. a dead letter), with n == the last ack for a writer that finished and n <= last ack + 1
    for one killed with a log() call in flight (one logging thread)."""
    got = stored.get(writer, {})
    missing = sorted(seq for seq in acks if seq not in got and seq not in skip)
    assert not missing, f"{writer}: {len(missing)} acked seqs missing, first {missing[:10]}; stored {len(got)} {context}"
    for seq, i in acks.items():
        assert seq == i + 1, f"{writer}: log returned seq {seq} for its record #{i} {context}"
    unexpected = sorted(set(got) & set(skip))
    assert not unexpected, f"{writer}: seqs {unexpected} should not be in the sink {context}"
    n = max(set(got) | set(skip), default=0)
    gaps = sorted(set(range(1, n + 1)) - set(got) - set(skip))
    assert not gaps, f"{writer}: stored seqs have gaps {gaps[:10]} below {n} {context}"
    last = max(acks, default=0)
    if finished:
        assert n == last, f"{writer} finished after seq {last} but the sink holds 1..{n} {context}"
    else:
        assert last <= n <= last + 1, f"{writer}: last ack {last}, sink holds 1..{n} {context}"
    for seq, data in got.items():
        assert data == expected_record(tag, seq - 1), f"{writer} seq {seq}: stored {data} {context}"


def assert_ranks_acked_delivered_once(stored: dict[str, dict[int, Any]], ranks: list[Any], context: str = "") -> int:
    """assert_acked_delivered_once for each rank (.child, .id, .tag, .killed; one not killed
    finished); returns how many records they acknowledged in all."""
    total = 0
    for rank in ranks:
        acks = acks_of(rank.child)
        total += len(acks)
        assert_acked_delivered_once(stored, rank.id, rank.tag, acks, context, finished=not rank.killed)
    return total


# -- the leader ------------------------------------------------------------------------------


def sender_pids(rank_pid: int) -> list[int]:
    """The sender subprocesses (`python -m distwal.leader`) a rank started."""
    import psutil

    try:
        children = psutil.Process(rank_pid).children()
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in children:
        try:
            if "distwal.leader" in proc.cmdline():
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def kill_and_wait_gone(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL `pid` and wait until it runs no more (gone or a zombie nobody reaped yet)."""
    import psutil

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, timeout, f"pid {pid} to die after SIGKILL")


# -- killing the leader at random points -------------------------------------------------------

KILL_MODES = ("rank", "sender", "commit_rank", "commit_sender")


@dataclass
class Rank:
    """A rank of a kill test: its WRITER child, writer id, and whether the test SIGKILLed it."""

    tag: str
    child: Child
    id: str = ""
    killed: bool = False


class Ranks(list):  # type: ignore[type-arg]
    """The ranks of a kill test. `spawn(i)` starts rank number i (not yet ready), `ready(rank)`
    waits for it and returns its writer id; a rank SIGKILLed as leader is replaced by a new
    writer, as torchrun would restart it."""

    def __init__(self, spawn: Callable[[int], Any], ready: Callable[[Any], str]) -> None:
        super().__init__()
        self._spawn = spawn
        self._ready = ready

    @classmethod
    def of_writers(cls, stack: ExitStack, workdir: str | os.PathLike[str], env: dict[str, str], stop: Path,
                   pace: Callable[[], float], finish_timeout: float = 30) -> Ranks:
        """WRITER ranks tagged r0, r1, ... logging until `stop` exists, each at its own `pace()`."""

        def spawn(i: int) -> Rank:
            tag = f"r{i}"
            return Rank(tag, stack.enter_context(
                start_writer(workdir, env, tag, stop=str(stop), pace=pace(), finish_timeout=finish_timeout)))

        return cls(spawn, lambda rank: writer_id_of(rank.child))

    def add(self, n: int = 1) -> list[Any]:
        """Start n more ranks (all spawned before any is waited for); they are ready on return."""
        new = []
        for _ in range(n):
            new.append(self._spawn(len(self)))
            self.append(new[-1])
        for rank in new:
            rank.id = self._ready(rank)
        return new

    def leader(self, pid: int, where: str) -> Any:
        """The live rank with this pid (leader.json names it)."""
        leader = next((r for r in self if r.child.pid == pid and not r.killed), None)
        assert leader is not None, f"leader.json names pid {pid}, not one of our live ranks {where}"
        return leader

    def reap_killed(self, rank: Any, replace: bool = True) -> Any:
        """`rank` was SIGKILLed: check it died of it, mark it, and start its replacement (returned)."""
        assert rank.child.wait() == -signal.SIGKILL, rank.child.describe()
        rank.killed = True
        return self.add()[0] if replace else None

    def kill(self, rank: Any, replace: bool = True) -> Any:
        """SIGKILL `rank`, then as reap_killed."""
        rank.child.kill(signal.SIGKILL)
        return self.reap_killed(rank, replace)

    def live(self) -> list[Any]:
        return [rank for rank in self if not rank.killed]

    def finish(self, stop: Path, timeout: float) -> None:
        """Touch `stop`; every rank not killed exits 0 within `timeout`."""
        stop.touch()
        for rank in self.live():
            assert rank.child.wait(timeout) == 0, rank.child.describe()


def kill_senders(pid: int, where: str = "", required: bool = True) -> None:
    """SIGKILL the sender subprocesses of rank `pid` (there must be one if `required`)."""
    victims = sender_pids(pid)
    assert victims or not required, f"the leader rank {pid} has no sender subprocess {where}"
    for victim in victims:
        kill_and_wait_gone(victim)


def random_kill_modes(rng: Any, rounds: int) -> list[str]:
    """`rounds` KILL_MODES; at least one commit_* mode, to cover the ack-before-cursor window."""
    modes = [rng.choice(KILL_MODES) for _ in range(rounds)]
    if not any(mode.startswith("commit") for mode in modes):
        modes[rng.randrange(rounds)] = rng.choice(("commit_rank", "commit_sender"))
    return modes


@dataclass
class KillSink:
    """How kill_leaders_at_random_points sees a sink (FaultServer, OTLPReceiver, ...).

    shipped(epoch): a reply 200 came for a request of that epoch; count(): records held;
    set_hook(fn or None): run fn(request) after the sink kept a batch, before its reply leaves;
    in_epoch(request, epoch): the request was sent by that epoch's leader."""

    shipped: Callable[[int], bool]
    count: Callable[[], int]
    set_hook: Callable[[Callable[[Any], None] | None], None]
    in_epoch: Callable[[Any, int], bool]
    noun: str = "stored"  # what the sink does with records, for messages
    describe: Callable[[], str] | None = None


def kill_leaders_at_random_points(ranks: Ranks, modes: list[str], wal: Path, sink: KillSink, rng: Any,
                                  context: str, lease_epochs: list[int] | None = None,
                                  kills: list[tuple[str, int, float]] | None = None) -> list[Any]:
    """Per mode (KILL_MODES), wait for a new leader shipping, let it ship a random amount, then
    SIGKILL its rank or its sender, at a random moment or, for commit_*, inside the sink's hook
    after a commit and before the reply (the ack never reaches the leader). A killed rank is
    replaced. Returns the requests committed whose leader was killed before the reply.
    `lease_epochs` collects the leader.json epochs as sampled over time; `kills` collects
    (mode, epoch killed, time.time() just before the kill)."""
    committed_then_killed: list[Any] = []
    last_epoch = 0
    for round_, mode in enumerate(modes):
        where = f"round {round_} ({mode}) {context}"

        def new_leader_shipping(last_epoch: int = last_epoch) -> Any:
            lease = read_json(wal / "leader.json")
            if lease is not None and lease_epochs is not None:
                lease_epochs.append(int(lease["epoch"]))
            if lease is None or lease["epoch"] <= last_epoch or lease.get("released"):
                return None
            return lease if sink.shipped(lease["epoch"]) else None

        lease = wait_until(new_leader_shipping, 30, f"a new leader after epoch {last_epoch} shipping {where}",
                           sink.describe)
        epoch, pid = int(lease["epoch"]), int(lease["pid"])
        leader = ranks.leader(pid, where)

        # The random point: let the new leader ship a random amount first.
        base = sink.count()
        want = rng.randint(1, 150)
        wait_until(lambda base=base, want=want: sink.count() >= base + want, 30,
                   f"{want} more records {sink.noun} {where}")
        killed_at: list[float] = []
        if mode.startswith("commit"):
            fired = threading.Event()
            victims = sender_pids(pid)
            assert victims, f"the leader rank {pid} has no sender subprocess {where}"

            def on_commit(req: Any, epoch: int = epoch, pid: int = pid, victims: list[int] = victims,
                          mode: str = mode, fired: threading.Event = fired) -> None:
                # In the sink, after the commit, before the reply: the ack never reaches the leader.
                if not sink.in_epoch(req, epoch) or fired.is_set():
                    return
                killed_at.append(time.time())
                for victim in victims:
                    kill_and_wait_gone(victim)
                if mode == "commit_rank":
                    os.kill(pid, signal.SIGKILL)
                committed_then_killed.append(req)
                fired.set()

            sink.set_hook(on_commit)
            assert fired.wait(30), f"the leader of epoch {epoch} committed nothing more {where}"
            sink.set_hook(None)
        else:
            time.sleep(rng.uniform(0, 0.05))  # the random moment itself, not a wait for a condition
            killed_at.append(time.time())
            if mode == "rank":
                leader.child.kill(signal.SIGKILL)
            else:
                kill_senders(pid, where)
        if kills is not None:
            kills.append((mode, epoch, killed_at[0]))
        if mode in ("rank", "commit_rank"):
            ranks.reap_killed(leader)
        print(f"round {round_}: {mode} killed the leader of epoch {epoch} (pid {pid}) "
              f"after {sink.count()} records {sink.noun}")
        last_epoch = epoch
    return committed_then_killed


def drain_ok(wal: str | os.PathLike[str], sink: str, env: dict[str, str], context: str = "", timeout: float = 60,
             cli_timeout: float = 60.0) -> None:
    """`distwal drain WAL --sink SINK --timeout T` exits 0."""
    drained = run_cli(["drain", os.fspath(wal), "--sink", sink, "--timeout", f"{timeout:g}"], env, timeout=cli_timeout)
    assert drained.returncode == 0, f"drain failed {context}"


# -- the CLI ---------------------------------------------------------------------------------


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`distwal ARGS...` in a fresh interpreter; its output is printed for -rA."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "distwal", *args], env=env, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    print(f"$ distwal {' '.join(args)} -> {result.returncode} in {time.monotonic() - started:.2f}s\n"
          f"{result.stdout}{result.stderr}")
    return result


@contextmanager
def serve_cli(db: str, env: dict[str, str]) -> Iterator[str]:
    """`distwal serve --db DB --port 0` in a subprocess: its URL once it listens; stopped on exit."""
    proc = subprocess.Popen([sys.executable, "-m", "distwal", "serve", "--db", db, "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline() if proc.stdout else ""  # "distwal serve: listening on URL (db PATH)"
        assert "listening on" in line, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        yield line.split("listening on ", 1)[1].split()[0]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def files_named(root: str | os.PathLike[str], fragment: str) -> list[str]:
    """Every path under root whose name contains `fragment`."""
    found = []
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            if fragment in name:
                found.append(os.path.relpath(os.path.join(parent, name), root))
    return sorted(found)


def seqs_on_disk(wal_dir: str | os.PathLike[str]) -> dict[str, list[int]]:
    """{writer: readable seqs} of every writer folder, in writers/ and in adopted/."""
    from distwal._folder import iter_envelopes, load_writer

    found: dict[str, list[int]] = {}
    for sub in ("writers", "adopted"):
        parent = os.path.join(os.fspath(wal_dir), sub)
        if not os.path.isdir(parent):
            continue
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in sorted(os.listdir(parent)):
                files = load_writer(fd, name, os.path.join(parent, name))
                if files is not None:
                    found[name] = [seq for seq, _, _ in iter_envelopes(files)]
        finally:
            os.close(fd)
    return found


def domain_of(wal_dir: str | os.PathLike[str]) -> str:
    """Create the directory (as init() would) and return its domain id."""
    from distwal._files import ensure_domain, prepare_dir
    from distwal._layout import Modes

    modes = Modes.for_config(False)
    prepare_dir(os.fspath(wal_dir), modes)
    return ensure_domain(os.fspath(wal_dir), modes)


__all__ = [
    "pick_seed", "KnownBug", "check_known_bug", "Drop", "Fault", "FaultServer", "Path", "Request", "acks_of", "assert_acked_delivered_once", "assert_fenced",
    "cluster_env", "domain_of", "expected_record", "files_named", "has_poison", "kill_and_wait_gone", "read_json",
    "run_cli", "sender_pids", "seqs_on_disk", "start_writer", "wait_until", "writer_args", "writer_id_of",
    "KILL_MODES", "KillSink", "Rank", "Ranks", "drain_ok", "kill_leaders_at_random_points", "kill_senders",
    "random_kill_modes", "serve_cli", "assert_ranks_acked_delivered_once",
]
