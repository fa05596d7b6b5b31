"""Real child processes for process tests: spawn, wait for a named point, kill, always reap.

    with spawn(tmp_path, SCRIPT, env=child_env(dir)) as child:
        child.wait_for("ready")              # a named point the script announces on stdout
        child.wait_for(lambda: len(child.acks()) >= 100)
        child.kill()                         # real SIGKILL
        child.wait()                         # returncode; reads stdout to EOF first
    # leaving the block kills the child's whole process group and reaps it, even on failure

Child scripts start with PRELUDE: `emit(*parts)` writes one line to stdout with a single
unbuffered os.write (atomic for a pipe below PIPE_BUF), so several threads can report
without interleaving and nothing sits in a stdio buffer when SIGKILL lands. Every line the
parent holds was therefore written by the child before it died.

Seeds: `pick_seed()` takes DISTWAL_TEST_SEED when set (to replay a failure), else a fresh
random seed; tests print it and put it in their assertion messages.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from distwal._marks import Finish, Heartbeat, Meta

SEED_ENV = "DISTWAL_TEST_SEED"

PRELUDE = '''\
import os, sys, time, threading, signal, json

def emit(*parts):
    """One line on stdout in one write(2): atomic on a pipe, never buffered."""
    os.write(1, (" ".join(str(p) for p in parts) + "\\n").encode())
'''


_REPLAY_SEED = os.environ.get(SEED_ENV, "").strip()  # read at import: test fixtures scrub DISTWAL_*


def pick_seed() -> int:
    """The seed to use: DISTWAL_TEST_SEED to replay, else a fresh one. Printed for -rA."""
    raw = _REPLAY_SEED
    seed = int(raw) if raw else random.SystemRandom().randrange(2**32)
    print(f"seed={seed} (replay with {SEED_ENV}={seed})")
    return seed


_SCRUB_PREFIXES = ("DISTWAL_", "TORCHELASTIC_", "SLURM_")
_SCRUB_NAMES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "LOCAL_WORLD_SIZE")


def hermetic_environ() -> None:
    """Remove distwal's and the launchers' variables from this process; it never leads."""
    for name in list(os.environ):
        if name.startswith(_SCRUB_PREFIXES) or name in _SCRUB_NAMES:
            del os.environ[name]
    os.environ["DISTWAL_DISABLE_SENDER"] = "1"


def child_env(distwal_dir: str | os.PathLike[str] | None = None, sender: bool = False, **extra: str) -> dict[str, str]:
    """This environment without distwal's or a launcher's variables, plus the given ones.

    sender=False sets DISTWAL_DISABLE_SENDER=1: durability tests read the writer folders
    back, and a leader shipping (or adopting) a killed writer's folder must not move them
    away under the test.
    """
    env = {k: v for k, v in os.environ.items() if not (k.startswith(_SCRUB_PREFIXES) or k in _SCRUB_NAMES)}
    env.pop("PYTHONSTARTUP", None)
    if distwal_dir is not None:
        env["DISTWAL_DIR"] = os.fspath(distwal_dir)
    if not sender:
        env["DISTWAL_DISABLE_SENDER"] = "1"
    env.update(extra)
    return env


@dataclass
class Line:
    at: float  # time.time() when the parent read it
    text: str

    @property
    def parts(self) -> list[str]:
        return self.text.split()


class ChildFailed(AssertionError):
    pass


class Child:
    """A running child python; stdout is collected line by line by a reader thread."""

    def __init__(self, popen: subprocess.Popen[bytes], script_path: Path) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.script_path = script_path
        self.killed_at: float | None = None  # time.time() just before the kill signal
        self._lines: list[Line] = []
        self._taken = 0  # lines next_json() has returned
        self._stderr: list[bytes] = []
        self._cond = threading.Condition()
        self._eof = False
        self._out = threading.Thread(target=self._read_stdout, daemon=True)
        self._err = threading.Thread(target=self._read_stderr, daemon=True)
        self._out.start()
        self._err.start()

    # -- collecting output ------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = Line(time.time(), raw.decode(errors="replace").rstrip("\n"))
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            self._stderr.append(raw)

    @property
    def lines(self) -> list[Line]:
        with self._cond:
            return list(self._lines)

    def lines_with(self, tag: str) -> list[Line]:
        """Lines whose first word is `tag`."""
        return [line for line in self.lines if line.parts[:1] == [tag]]

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    def describe(self) -> str:
        tail = self.lines[-5:]
        return (
            f"child pid {self.pid} ({self.script_path}), returncode {self.popen.poll()}\n"
            f"last stdout lines: {[line.text for line in tail]}\n"
            f"stderr:\n{textwrap.indent(self.stderr[-4000:], '    ')}"
        )

    # -- waiting ------------------------------------------------------------------------

    def wait_for(self, what: str | Callable[[], Any], timeout: float = 20.0) -> Any:
        """Wait until a line tagged `what` arrives (returns it), or the predicate is truthy.

        Fails with the child's output if it exits first or the deadline passes.
        """
        if isinstance(what, str):
            tag = what

            def check() -> Any:
                found = self.lines_with(tag)
                return found[0] if found else None

            name = f"line {tag!r}"
        else:
            check, name = what, getattr(what, "__name__", "condition")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = check()
                if result:
                    return result
                if self._eof:
                    raise ChildFailed(f"child ended before {name}\n{self.describe()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChildFailed(f"no {name} within {timeout} s\n{self.describe()}")
                self._cond.wait(min(remaining, 0.05))

    def next_json(self, timeout: float = 20.0) -> dict[str, Any]:
        """The next line not yet taken, as JSON (a child that answers requests line by line)."""
        line = self.wait_for(lambda: self._lines[self._taken] if len(self._lines) > self._taken else None, timeout)
        self._taken += 1
        value = json.loads(line.text) if line.text.startswith("{") else {"text": line.text}
        return value  # type: ignore[no-any-return]

    def send(self, text: str) -> None:
        """One line to the child's stdin (started with stdin=True)."""
        assert self.popen.stdin is not None, "started without stdin"
        self.popen.stdin.write(text.rstrip("\n").encode() + b"\n")
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            self.popen.stdin.close()

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the child to exit and its stdout to reach EOF; return its returncode."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ChildFailed(f"child still running after {timeout} s\n{self.describe()}") from None
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._eof:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChildFailed(f"stdout of the child not closed after {timeout} s (a grandchild holds it?)")
                self._cond.wait(min(remaining, 0.05))
        self._err.join(timeout)
        return code

    # -- signals ------------------------------------------------------------------------

    def kill(self, sig: int = signal.SIGKILL) -> float:
        """Send `sig` to the child only (not its group); return the time just before."""
        self.killed_at = time.time()
        os.kill(self.pid, sig)
        return self.killed_at

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self) -> None:
        """Kill the child's whole process group (pool workers included) and wait for it."""
        self.kill_group(signal.SIGKILL)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a kernel that ignores SIGKILL
            pass
        self._out.join(5)  # the group is dead, so the readers reach EOF at once
        self._err.join(5)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def spawn(
    workdir: str | os.PathLike[str],
    script: str,
    *args: str,
    env: dict[str, str] | None = None,
    name: str = "child.py",
) -> Iterator[Child]:
    """Run PRELUDE + `script` in a fresh python in its own session; always reap it.

    The script is written to `workdir/name` (so multiprocessing's spawn can import it as
    __main__) and runs with cwd=workdir.
    """
    path = Path(workdir) / name
    path.write_text(PRELUDE + textwrap.dedent(script))
    child = start([sys.executable, str(path), *args], env=env, cwd=workdir)
    try:
        yield child
    finally:
        child.reap()


def start(argv: list[str], env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
          stdin: bool = False) -> Child:
    """Start a command line in its own session (reap() kills its whole group); stdin=True to send() it lines.

    The caller reaps it; spawn() is the form that always does.
    """
    popen = subprocess.Popen(
        argv,
        cwd=None if cwd is None else os.fspath(cwd),
        env=child_env() if env is None else env,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: reap() kills grandchildren too
    )
    return Child(popen, Path(argv[1] if len(argv) > 1 else argv[0]))


# -- reading a directory back -------------------------------------------------------------


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file's value, or None while it is missing or half written (the writer replaces it atomically)."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return None


@dataclass
class WriterOnDisk:
    id: str
    meta: Meta | None
    heartbeat: Heartbeat | None
    finish: Finish | None
    records: list[tuple[int, float, Any]] = field(default_factory=list)  # (seq, ts, data)
    damage: list[Any] = field(default_factory=list)

    @property
    def seqs(self) -> list[int]:
        return [seq for seq, _, _ in self.records]

    @property
    def by_seq(self) -> dict[int, Any]:
        return {seq: data for seq, _, data in self.records}

    def corrupt_spans(self) -> list[Any]:
        """Damage that is not a torn tail: never expected, whatever killed the writer."""
        return [d for d in self.damage if not d.at_tail]


def read_dir(root: str | os.PathLike[str]) -> dict[str, WriterOnDisk]:
    """Every writer under `root` with its marks and records, read with distwal._folder."""
    from distwal._folder import iter_envelopes, list_writers

    found = {}
    for files in list_writers(os.fspath(root)):
        writer = WriterOnDisk(files.id, files.meta, files.heartbeat, files.finish)
        for seq, ts, envelope in iter_envelopes(files, writer.damage):
            decoded = json.loads(envelope)
            assert decoded["seq"] == seq and decoded["writer"] == files.id, envelope
            writer.records.append((seq, ts, decoded["data"]))
        found[files.id] = writer
    return found


def only_writer(root: str | os.PathLike[str], context: str = "") -> WriterOnDisk:
    writers = read_dir(root)
    assert len(writers) == 1, f"expected exactly one writer folder, found {sorted(writers)} {context}"
    return next(iter(writers.values()))


def assert_contiguous_from_1(writer: WriterOnDisk, context: str = "") -> None:
    seqs = writer.seqs
    assert seqs == list(range(1, len(seqs) + 1)), (
        f"seqs of {writer.id} are not 1..{len(seqs)}: first gaps "
        f"{[(a, b) for a, b in zip([0, *seqs], seqs) if b != a + 1][:5]} {context}"
    )
    assert not writer.corrupt_spans(), f"corruption (not a torn tail) in {writer.id}: {writer.damage} {context}"
