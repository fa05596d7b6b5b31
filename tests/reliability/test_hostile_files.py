"""Hostile files: what a reader, the directory scanner, status, cat, drain and a leader do
with a directory someone else has damaged or booby-trapped.

Garbage files in writers/ and in writer folders, truncated and bit-flipped segments, planted
symlinks (to files, to directories, to /etc/passwd, loops, dangling) in every place,
fifos, files with wrong modes and owners, huge sparse files, names with newlines, unicode,
invalid UTF-8 and 255 bytes. Whatever is planted: distwal.status(dir), `distwal cat`,
`distwal drain` (SQLite sink) and a leader never crash, never hang (every run has a
deadline), never follow a link (the canary a link points at is unchanged and, where the
file system keeps access times, unread; its content never shows), never invent a record
(everything printed or delivered is a record that was written, under its writer and
seq), and damage is quarantined, counted as a torn tail, or ignored with a warning.

The directories are built by hand (hostile.py) so every byte and every record is known.
Hypothesis drives the in-process fuzzing (derandomized: the same examples every run; run
with HYPOTHESIS_PROFILE=thorough for a deeper search); fuzz_reader.py adds a coverage-guided
atheris run when atheris is installed.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers.cluster import KnownBug, cluster_env, run_cli, start_writer, writer_id_of
from helpers.jobs import by_writer, sink_rows
from hostile import Book, Canaries, assert_no_canary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import distwal
from distwal._layout import format_segment_name
from distwal.cli import main as cli_main

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]

HERE = Path(__file__).resolve().parent
NOBODY = 65534
DRAIN_TIMEOUT = "8"  # seconds: every drain here is done in well under a second

# -- running the tools -----------------------------------------------------------------------------


@contextlib.contextmanager
def captured() -> Iterator[tuple[io.BytesIO, io.StringIO]]:
    """stdout (bytes, as `distwal cat` writes it) and stderr of an in-process CLI call."""
    out, err = io.BytesIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    wrapper = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    sys.stdout, sys.stderr = wrapper, err
    try:
        yield out, err
    finally:
        wrapper.flush()
        wrapper.detach()  # or closing the wrapper would close `out`
        sys.stdout, sys.stderr = saved


def in_process(args: list[str]) -> tuple[int, bytes, str]:
    """`distwal ARGS` in this process: (exit code, stdout, stderr). An exception escaping is a crash."""
    with captured() as (out, err):
        try:
            code = cli_main(args)
        except BaseException as exc:
            raise AssertionError(f"distwal {' '.join(args)} crashed: {exc!r}\n{err.getvalue()}") from exc
    return code, out.getvalue(), err.getvalue()


def envelopes(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


def delivered(sink: Path) -> dict[str, dict[int, Any]]:
    return {w: {seq: row.data for seq, row in rows.items()} for w, rows in by_writer(sink_rows(None, sink)).items()}


def assert_written(found: dict[str, dict[int, Any]], book: Book, where: str) -> None:
    """Every record found is one the book wrote, under the same writer and seq: nothing invented."""
    for writer, records in found.items():
        assert writer in book.records, f"{where}: records of {writer!r}, a writer nobody wrote"
        for seq, data in records.items():
            assert book.records[writer].get(seq) == data, f"{where}: {writer} seq {seq} = {data!r} was never written"


def by_seq(envs: list[dict[str, Any]]) -> dict[str, dict[int, Any]]:
    out: dict[str, dict[int, Any]] = {}
    last: dict[str, int] = {}
    for env in envs:
        writer, seq = env["writer"], env["seq"]
        assert seq > last.get(writer, 0), f"cat printed {writer} seq {seq} after seq {last.get(writer)}"
        last[writer] = seq
        out.setdefault(writer, {})[seq] = env["data"]
    return out


def check_status(root: Path, where: str) -> dict[str, Any]:
    try:
        report = distwal.status(root)
    except Exception as exc:
        raise AssertionError(f"{where}: distwal.status crashed: {exc!r}") from exc
    text = orjson.dumps(report)
    assert_no_canary(text, f"{where}: status")
    for row in report["writers"]:
        assert row["records"] < 1000 and row["dropped"] < 1000, f"{where}: status row from a canary mark: {row}"
    assert report["dead_letters"] == 0, f"{where}: dead letters counted through a link: {report['dead_letters']}"
    return report


def lose(book: Book, writer: str, seqs: range | list[int]) -> None:
    """Forget records the test destroyed (so the expected sets are what is left)."""
    for seq in seqs:
        book.records[writer].pop(seq, None)


# -- planting ---------------------------------------------------------------------------------------


def plant_link(path: Path, target: str | os.PathLike[str]) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    os.symlink(target, path)


def plant_fifo(path: Path) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    os.mkfifo(path)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def odd_names(parent: Path) -> None:
    """Entries whose names are not what distwal writes: newline, unicode, invalid UTF-8, 255 bytes."""
    (parent / "bad\nname").write_bytes(b"garbage\n")
    (parent / "ünïcödé-😀").mkdir()
    (parent / ("x" * 255)).write_bytes(b"long")
    os.mkdir(os.fsencode(str(parent)) + b"/\xff\xfe-not-utf8")
    (parent / ".hidden").write_bytes(b"\0" * 64)


class Scenario:
    """A directory with every kind of trap at once; `book` holds what can legitimately be read."""

    def __init__(self, base: Path) -> None:
        self.root = base / "wal"
        self.book = book = Book(self.root)
        self.canaries = canaries = Canaries(base / "outside")
        root = self.root
        w = root / "writers"

        # Writers that must come through whole, whatever happens around them.
        self.a = book.writer("a", [3, 4, 2, 5])  # finished; the planted cursor book names it
        self.z = book.writer("z", [4, 4], finished=False)  # dead
        self.controls = [self.a, self.z]
        # Damaged segments: a flipped byte in a middle block (quarantined), a torn tail (dropped).
        self.b = book.writer("b", [4, 4, 4], per_segment=3, finished=False)
        seg, start, end, first = book.blocks[self.b][1]
        flip(book.folder(self.b) / format_segment_name(seg), (start + end) // 2)
        lose(book, self.b, range(first, first + 4))
        self.c = book.writer("c", [3, 3, 3], per_segment=3, finished=False)
        seg, start, end, first = book.blocks[self.c][2]
        path = book.folder(self.c) / format_segment_name(seg)
        path.write_bytes(path.read_bytes()[: (start + end) // 2])
        lose(book, self.c, range(first, first + 3))

        # Links, fifos, garbage and odd names inside writer folders.
        self.vseg = book.writer("vseg", [3, 3], finished=False)
        folder = book.folder(self.vseg)
        plant_link(folder / format_segment_name(1), canaries.segment)
        plant_fifo(folder / format_segment_name(2))
        (folder / "junk.txt").write_bytes(os.urandom(300))
        (folder / "sub").mkdir()
        (folder / "sub" / "00000000.wal").write_bytes(canaries.segment.read_bytes())
        (folder / (format_segment_name(3) + "\n")).write_bytes(canaries.segment.read_bytes())
        odd_names(folder)
        self.vmeta = book.writer("vmeta", [2], finished=False)  # meta.json is a link: never shipped
        plant_link(book.folder(self.vmeta) / "meta.json", canaries.meta)
        self.vbeat = book.writer("vbeat", [2, 2])
        plant_link(book.folder(self.vbeat) / "heartbeat.json", canaries.heartbeat)
        self.vfin = book.writer("vfin", [3], finished=False)
        plant_link(book.folder(self.vfin) / "finish.json", canaries.finish)
        self.vfifo = book.writer("vfifo", [2], finished=False)
        plant_fifo(book.folder(self.vfifo) / "heartbeat.json")
        plant_fifo(book.folder(self.vfifo) / "finish.json")
        self.vpasswd = book.writer("vpasswd", [2], finished=False)
        plant_link(book.folder(self.vpasswd) / "heartbeat.json", "/etc/passwd")
        plant_link(book.folder(self.vpasswd) / format_segment_name(1), "/etc/passwd")
        self.vperm = book.writer("vperm", [3])  # someone else's files, mode 000 (root still reads)
        for entry in book.folder(self.vperm).iterdir():
            os.chown(entry, NOBODY, NOBODY)
            os.chmod(entry, 0)
        os.chown(book.folder(self.vperm), NOBODY, NOBODY)
        self.f = book.writer("f", [2, 2], finished=False, sub="adopted")  # left in adopted/ by a dead leader

        # writers/ itself: links in place of writer folders, a fifo, a file, garbage, odd names.
        for target in (canaries.writer_dir, canaries.segment, "/etc/passwd", "does-not-exist"):
            plant_link(w / book.new_id(), target)
        loop = book.new_id()
        plant_link(w / loop, loop)
        plant_fifo(w / book.new_id())
        (w / book.new_id()).write_bytes(os.urandom(500))
        (w / "garbage.bin").write_bytes(os.urandom(1000))
        self.empty = book.new_id()
        (w / self.empty).mkdir()  # a writer being born: no metadata yet
        shutil.copytree(canaries.writer_dir, w / (book.new_id() + "\n"))  # not a writer id: never read
        odd_names(w)
        plant_link(root / "adopted" / book.new_id(), canaries.writer_dir)

        # The leader's places.
        for sub in ("history", "deadletters", "quarantine"):
            (root / sub).mkdir(exist_ok=True)
        plant_link(root / "history" / "t.json", canaries.tombstone)
        (root / "history" / "g.json").write_bytes(os.urandom(200))
        plant_fifo(root / "history" / "p.json")
        (root / "history" / "evil\n.json").write_bytes(orjson.dumps({"writer": "odd\nname", "state": "finished"}))
        plant_link(root / "deadletters" / "x.ndjson", canaries.lines)
        plant_fifo(root / "deadletters" / "y.ndjson")
        plant_link(root / "quarantine" / "q.bin", canaries.subdir)
        plant_link(root / "cursors.json", canaries.cursor_book_for(self.a))  # would skip a's seqs 1..5
        plant_link(root / "leader.json", canaries.lease)  # would depose any leader (epoch 9999)
        plant_link(root / "sender.json", canaries.lease)
        canaries.arm(root)

    # What a reader of writers/ may print (cat), and what a leader may deliver.
    def readable(self) -> dict[str, dict[int, Any]]:
        skip = {self.f}
        return {w: dict(r) for w, r in self.book.records.items() if w not in skip}

    def deliverable(self) -> dict[str, dict[int, Any]]:
        return {w: dict(r) for w, r in self.book.records.items() if w != self.vmeta}


@pytest.mark.process
def test_everything_planted_at_once_status_cat_and_drain_stay_safe(tmp_path):
    s = Scenario(tmp_path)
    env = {**os.environ, "DISTWAL_DISABLE_SENDER": "1"}
    # status, in process and as the CLI
    report = check_status(s.root, "before drain")
    rows = {row["writer"]: row for row in report["writers"]}
    assert set(rows) >= {s.a, s.z, s.b, s.c, s.vseg, s.vmeta, s.vbeat, s.vfin, s.vfifo, s.vperm, s.f}
    assert rows[s.vmeta]["host"] is None and rows[s.vbeat]["error"] is None
    assert report["leader"] is None and report["sender"] is None, "a linked lease or sender.json was read"
    assert report["quarantined_bytes"] < 12_345, "status counted the files of a linked directory"
    assert not [h for h in report["history"] if h["writer"] == "CANARY"]
    result = run_cli(["status", "--json", str(s.root)], env, timeout=30)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert_no_canary(result.stdout, "distwal status --json")
    result = run_cli(["status", str(s.root)], env, timeout=30)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr

    # cat: exactly what is readable in writers/, damage reported on stderr
    result = run_cli(["cat", str(s.root)], env, timeout=30)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert_no_canary(result.stdout, "distwal cat")
    printed = by_seq(envelopes(result.stdout.encode()))
    assert_written(printed, s.book, "distwal cat")
    assert printed == {w: r for w, r in s.readable().items() if r}, "cat did not print exactly the readable records"
    assert f"{s.b}: corrupt span" in result.stderr and f"{s.c}: unreadable tail" in result.stderr, result.stderr
    # What is not a writer folder is ignored, with a warning naming it.
    for needle in ("ignoring garbage.bin", "not a writer folder", "(not a directory, or a link)"):
        assert needle in result.stderr, f"no warning {needle!r}:\n{result.stderr}"

    # drain into SQLite: everything deliverable, once; damage quarantined or counted as torn
    sink = tmp_path / "sink.db"
    result = run_cli(["drain", str(s.root), "--sink", f"sqlite:///{sink}", "--timeout", DRAIN_TIMEOUT], env, timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    got = delivered(sink)
    assert_written(got, s.book, "the sink")
    want = {w: r for w, r in s.deliverable().items() if r}
    assert got == want, f"delivered {sorted((w[-8:], len(r)) for w, r in got.items())}, expected " \
                        f"{sorted((w[-8:], len(r)) for w, r in want.items())}"
    health = orjson.loads((s.root / "sender.json").read_bytes())
    assert health["quarantined_bytes"] > 0 and health["torn_bytes"] > 0, health
    assert any(name.startswith(s.b) for name in os.listdir(s.root / "quarantine")), "b's corrupt block not kept"
    check_status(s.root, "after drain")
    s.canaries.assert_untouched()
    assert (s.root / "cursors.json").is_file() and not (s.root / "cursors.json").is_symlink()


@pytest.mark.process
def test_a_leader_over_a_booby_trapped_directory_delivers_and_never_restarts(tmp_path):
    s = Scenario(tmp_path)
    sink = tmp_path / "sink.db"
    env = cluster_env(s.root, f"sqlite:///{sink}")
    with start_writer(tmp_path, env, "rank", count=40, flush_delivered=[20]) as rank:
        rank_id = writer_id_of(rank)
        assert rank.wait(45) == 0, rank.describe()
    assert rank.lines_with("flushed")[0].parts[1] == "True", rank.describe()
    assert rank.lines_with("finished")[0].parts[1] == "True", rank.describe()
    assert "Traceback" not in rank.stderr, rank.describe()
    got = delivered(sink)
    assert sorted(got.pop(rank_id, {})) == list(range(1, 41)), "the leader's own records were not all delivered"
    assert_written(got, s.book, "the sink")
    want = {w: r for w, r in s.deliverable().items() if r}
    assert got == want, f"delivered {sorted((w[-8:], len(r)) for w, r in got.items())}, expected " \
                        f"{sorted((w[-8:], len(r)) for w, r in want.items())}"
    lease = orjson.loads((s.root / "leader.json").read_bytes())
    assert lease["epoch"] == 1, f"the sender was restarted (crashed?): {lease}"
    check_status(s.root, "after the leader")
    s.canaries.assert_untouched()


# -- links, fifos and files in the leader's own places -----------------------------------------------


@pytest.mark.parametrize("sub", [
    "writers", "adopted", "history", "deadletters",
    "quarantine",
])
def test_leader_subdirectory_planted_as_a_link_is_refused_never_followed(tmp_path, sub):
    book = Book(tmp_path / "wal")
    book.writer("a", [2, 2])
    canaries = Canaries(tmp_path / "outside")
    tree = canaries.dir / "tree"  # looks like each of the leader's directories at once
    shutil.copytree(canaries.writer_dir, tree / book.new_id())
    (tree / "x.json").write_bytes(canaries.tombstone.read_bytes())
    (tree / "x.ndjson").write_bytes(canaries.lines.read_bytes())
    (tree / "inside.bin").write_bytes(b"\3" * 12_345)
    place = book.root / sub
    if place.exists():
        shutil.rmtree(place)
    plant_link(place, tree)
    canaries.arm(book.root)
    report = distwal.status(book.root)
    assert_no_canary(orjson.dumps(report), "status")
    assert report["dead_letters"] == 0 and not report["history"]
    if report["quarantined_bytes"] >= 12_345:
        raise KnownBug(f"status followed the {sub}/ link: quarantined_bytes={report['quarantined_bytes']}")
    code, _, err = in_process(["drain", str(book.root), "--sink", f"sqlite:///{tmp_path}/sink.db", "--timeout", "3"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and sub in err, (code, err)
    code, out, err = in_process(["cat", str(book.root)])
    assert_no_canary(out, "cat")
    canaries.assert_untouched()


def _make_link(root: Path, name: str, canaries: Canaries) -> None:
    target = canaries.subdir if name == "epochs" else canaries.lease
    plant_link(root / name, target)


def _make_fifo(root: Path, name: str, canaries: Canaries) -> None:
    plant_fifo(root / name)


def _make_dir(root: Path, name: str, canaries: Canaries) -> None:
    (root / name).mkdir()
    (root / name / "inside").write_bytes(b"x")


def _make_file(root: Path, name: str, canaries: Canaries) -> None:
    (root / name).write_bytes(b"\0garbage")


ROOT_TRAPS = [
    ("leader.lock", "link"), ("leader.lock", "fifo"), ("leader.lock", "dir"),
    ("epochs", "link"), ("epochs", "file"),
    ("leader.json", "link"), ("leader.json", "fifo"), ("leader.json", "dir"),
    ("cursors.json", "link"), ("cursors.json", "fifo"), ("cursors.json", "dir"),
    ("sink.json", "link"), ("sink.json", "fifo"),
    ("sender.json", "link"), ("sender.json", "fifo"),
    ("domain.json", "link"), ("domain.json", "fifo"),
]


@pytest.mark.parametrize("name,kind", [pytest.param(n, k, id=f"{n}-{k}") for n, k in ROOT_TRAPS])
def test_election_and_book_files_planted_as_links_fifos_or_dirs_never_crash_drain(tmp_path, name, kind):
    book = Book(tmp_path / "wal")
    a = book.writer("a", [2, 3])
    canaries = Canaries(tmp_path / "outside")
    if name == "domain.json":
        (book.root / name).unlink()
    {"link": _make_link, "fifo": _make_fifo, "dir": _make_dir, "file": _make_file}[kind](book.root, name, canaries)
    canaries.arm(book.root)
    check_status(book.root, f"{name} as a {kind}")
    sink = tmp_path / "sink.db"
    started = time.monotonic()
    with captured() as (_, err):
        try:
            code = cli_main(["drain", str(book.root), "--sink", f"sqlite:///{sink}", "--timeout", "3"])
        except Exception as exc:
            raise KnownBug(f"drain crashed on {name} planted as a {kind}: {exc!r}") from exc
    took = time.monotonic() - started
    message = err.getvalue()
    assert took < 10, f"drain took {took:.1f}s with --timeout 3"
    assert code in (0, 1, 2), code
    if code == 2:
        assert len(message.strip().splitlines()) == 1 and name in message, message
    if name in ("leader.json", "cursors.json", "sink.json", "sender.json") and kind in ("link", "fifo"):
        # Replaced or ignored, never followed: delivery goes on.
        assert code == 0, message
    if code == 0:
        assert delivered(sink) == {a: book.records[a]}, message
    canaries.assert_untouched()


# -- segments: gaps, splices, huge sparse files -------------------------------------------------------


@pytest.mark.parametrize("finished", [False, True], ids=["dead", "finished"])
def test_a_missing_middle_segment_does_not_hide_the_segments_after_it(tmp_path, finished):
    book = Book(tmp_path / "wal")
    w = book.writer("g", [3, 3, 3], per_segment=1, finished=finished)
    (book.folder(w) / format_segment_name(1)).unlink()
    lose(book, w, range(4, 7))
    code, out, _ = in_process(["cat", str(book.root)])
    assert by_seq(envelopes(out)) == {w: book.records[w]}, "cat does not skip the gap"
    sink = tmp_path / "sink.db"
    code, _, err = in_process(["drain", str(book.root), "--sink", f"sqlite:///{sink}", "--timeout", "1"])
    got = delivered(sink).get(w, {})
    left = sorted(os.listdir(book.folder(w))) if book.folder(w).exists() else []
    if got != book.records[w]:
        raise KnownBug(f"drain exit {code}; delivered seqs {sorted(got)} of {sorted(book.records[w])}; "
                       f"left in the folder: {left}\n{err}")
    assert code == 0, err


def test_a_directory_named_like_a_segment_never_crashes_the_leader(tmp_path):
    book = Book(tmp_path / "wal")
    w = book.writer("v", [2, 2, 2], per_segment=1, finished=False)
    first = book.folder(w) / format_segment_name(0)
    first.unlink()
    first.mkdir()
    lose(book, w, [1, 2])
    sink = tmp_path / "sink.db"
    with captured() as (_, err):
        try:
            code = cli_main(["drain", str(book.root), "--sink", f"sqlite:///{sink}", "--timeout", "3"])
        except Exception as exc:
            raise KnownBug(f"drain crashed: {exc!r}") from exc
    assert code == 0, err.getvalue()
    assert delivered(sink) == {w: book.records[w]}


def test_a_block_spliced_in_from_another_writer_is_not_taken_as_this_writers_records(tmp_path):
    book = Book(tmp_path / "wal")
    x = book.writer("x", [3, 3], per_segment=2)
    y = book.writer("y", [3, 3], per_segment=2)
    seg, start, end, _ = book.blocks[x][1]  # x's seqs 4..6
    foreign = (book.folder(x) / format_segment_name(seg)).read_bytes()[start:end]
    path = book.folder(y) / format_segment_name(0)
    data = path.read_bytes()
    y_first_end = book.blocks[y][0][2]
    path.write_bytes(data[:y_first_end] + foreign + data[y_first_end:])
    _, out, _ = in_process(["cat", str(book.root)])
    printed = by_seq(envelopes(out))
    sink = tmp_path / "sink.db"
    in_process(["drain", str(book.root), "--sink", f"sqlite:///{sink}", "--timeout", "3"])
    got = delivered(sink)
    for where, found in (("cat", printed), ("the sink", got)):
        assert_written(found, book, where)
        assert found.get(y) == book.records[y], f"{where}: y's own records {found.get(y)}"
    # The foreign block is damage in y's folder: set aside, not lost and not delivered.
    assert [p.stat().st_size for p in (book.root / "quarantine").iterdir()] == [end - start]


LIMITED = r'''
import resource, sys
limit, report = int(sys.argv[1]), sys.argv[2]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from distwal.cli import main
try:
    code = main(sys.argv[3:])
finally:
    with open(report, "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
sys.exit(code)
'''
GIB = 1 << 30


def run_limited(tmp_path: Path, args: list[str], timeout: float, limit: int = 2 * GIB) -> tuple[int | None, str, int]:
    """`distwal ARGS` in a child whose address space is capped: (exit code or None at the deadline, stderr, maxrss)."""
    script = tmp_path / "limited.py"
    script.write_text(LIMITED)
    report = tmp_path / f"maxrss-{time.monotonic_ns()}"
    env = {**os.environ, "DISTWAL_DISABLE_SENDER": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(limit), str(report), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        _, err = proc.communicate()
        code = None
    maxrss = int(report.read_text()) if report.exists() else -1
    return code, err.decode(errors="replace"), maxrss


def sparse_writer(book: Book, tag: str, hole: int) -> str:
    """A dead writer whose one segment is a block, `hole` bytes of nothing (sparse), and a block."""
    w = book.writer(tag, [3, 3], per_segment=2, finished=False)
    path = book.folder(w) / format_segment_name(0)
    data = path.read_bytes()
    first_end = book.blocks[w][0][2]
    with open(path, "wb") as f:
        f.write(data[:first_end])
        f.truncate(first_end + hole)
        f.seek(first_end + hole)
        f.write(data[first_end:])
    assert os.stat(path).st_blocks * 512 < 1 << 20, "the test file system does not make sparse files"
    return w


@pytest.mark.process
def test_a_10gb_sparse_segment_is_neither_read_into_memory_nor_scanned_byte_by_byte(tmp_path):
    book = Book(tmp_path / "wal")
    w = sparse_writer(book, "s", 10 * GIB)
    report = check_status(book.root, "a 10 GB sparse segment")
    assert [row["pending_bytes"] for row in report["writers"]] == [os.stat(book.folder(w) / "00000000.wal").st_size]
    code, err, maxrss = run_limited(tmp_path, ["cat", str(book.root)], timeout=4)
    if code is None:
        raise KnownBug("distwal cat did not finish within 4 s on a 10 GB sparse segment")
    assert code == 0 and maxrss < GIB, (code, maxrss, err)


@pytest.mark.process
def test_quarantining_a_huge_damaged_span_does_not_read_it_into_memory(tmp_path):
    control = Book(tmp_path / "control")
    control.writer("c", [3, 3], finished=False)
    code, err, baseline = run_limited(
        tmp_path, ["drain", str(control.root), "--sink", f"sqlite:///{tmp_path}/control.db", "--timeout", "10"], 30)
    assert code == 0 and baseline > 0, err
    book = Book(tmp_path / "wal")
    w = sparse_writer(book, "s", 256 << 20)
    code, err, maxrss = run_limited(
        tmp_path, ["drain", str(book.root), "--sink", f"sqlite:///{tmp_path}/sink.db", "--timeout", "20"], timeout=40)
    assert code == 0, f"drain exit {code}\n{err}"
    assert delivered(tmp_path / "sink.db") == {w: book.records[w]}
    if maxrss > baseline + (128 << 20):
        raise KnownBug(f"drain peaked at {maxrss >> 20} MiB (a plain drain: {baseline >> 20} MiB) to quarantine "
                       "a 256 MiB span")


@pytest.mark.process
def test_status_with_a_10gb_sparse_dead_letter_file_stays_small_and_fast(tmp_path):
    book = Book(tmp_path / "wal")
    book.writer("a", [2])
    (book.root / "deadletters").mkdir()
    (book.root / "deadletters" / "y.ndjson").write_bytes(b'{"envelope": 1}\n' * 3)
    limit = GIB // 2
    code, err, _ = run_limited(tmp_path, ["status", "--json", str(book.root)], timeout=20, limit=limit)
    assert code == 0, f"status does not even run within {limit >> 20} MiB: {err}"
    with open(book.root / "deadletters" / "x.ndjson", "wb") as f:
        f.truncate(10 * GIB)
    code, err, maxrss = run_limited(tmp_path, ["status", "--json", str(book.root)], timeout=20, limit=limit)
    if code != 0:
        raise KnownBug(f"distwal status exit {code}, maxrss {maxrss >> 20} MiB: {err.strip().splitlines()[-1:]}")
    assert maxrss < GIB


@pytest.mark.process
def test_10gb_sparse_marks_cursors_lease_and_tombstones_are_refused_quickly(tmp_path):
    book = Book(tmp_path / "wal")
    a = book.writer("a", [2, 2])
    v = book.writer("v", [2], finished=False)
    for path in (book.folder(v) / "meta.json", book.folder(v) / "heartbeat.json", book.folder(a) / "heartbeat.json",
                 book.root / "cursors.json", book.root / "leader.json", book.root / "sender.json",
                 book.root / "history" / "t.json"):
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(10 * GIB)
    started = time.monotonic()
    for args in (["status", "--json", str(book.root)], ["cat", str(book.root)]):
        code, err, maxrss = run_limited(tmp_path, args, timeout=20)
        assert code == 0 and maxrss < GIB, (args, code, maxrss, err)
    code, err, maxrss = run_limited(
        tmp_path, ["drain", str(book.root), "--sink", f"sqlite:///{tmp_path}/sink.db", "--timeout", "5"], timeout=20)
    assert code == 0 and maxrss < GIB, (code, maxrss, err)
    assert delivered(tmp_path / "sink.db") == {a: book.records[a]}  # v has no readable meta: not shipped
    assert time.monotonic() - started < 15


# -- modes and owners: a reader that permission bits apply to ----------------------------------------


@pytest.mark.process
def test_unreadable_files_and_folders_are_skipped_by_a_reader_without_dac_override(tmp_path):
    """Root reads everything; a reader that permission bits apply to (root without CAP_DAC_OVERRIDE
    and CAP_DAC_READ_SEARCH, via setpriv) meets files it may not open: status and cat skip them."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv (util-linux) to drop the DAC override capabilities")
    book = Book(tmp_path / "wal")
    os.chmod(tmp_path, 0o755)
    for path in (book.root, book.root / "writers"):
        os.chmod(path, 0o755)
    ok = book.writer("ok", [2, 2])
    shut = book.writer("shut", [2])  # folder of nobody, mode 0700
    noseg = book.writer("noseg", [2, 2], per_segment=1)  # second segment of nobody, mode 0600
    nometa = book.writer("nometa", [2])  # meta.json mode 000
    for w in (ok, noseg, nometa):
        os.chmod(book.folder(w), 0o755)
        for entry in book.folder(w).iterdir():
            os.chmod(entry, 0o644)
    os.chown(book.folder(shut), NOBODY, NOBODY)
    os.chmod(book.folder(shut), 0o700)
    second = book.folder(noseg) / format_segment_name(1)
    os.chown(second, NOBODY, NOBODY)
    os.chmod(second, 0o600)
    os.chmod(book.folder(nometa) / "meta.json", 0)
    drop = [setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m", "distwal"]
    env = {**os.environ, "DISTWAL_DISABLE_SENDER": "1"}

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(drop + args, env=env, capture_output=True, text=True, timeout=30, check=False)

    result = run(["status", "--json", str(book.root)])
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    rows = {row["writer"]: row for row in orjson.loads(result.stdout)["writers"]}
    assert shut not in rows and rows[nometa]["host"] is None and rows[ok]["records"] == 4
    result = run(["cat", str(book.root)])
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    printed = by_seq(envelopes(result.stdout.encode()))
    assert_written(printed, book, "cat without DAC override")
    assert printed == {ok: book.records[ok], noseg: {1: book.records[noseg][1], 2: book.records[noseg][2]},
                       nometa: book.records[nometa]}
    # drain may write here (root owns the directory) but not read everything: it delivers what it
    # can read and, since a finished writer's last segment is unreadable, says so at its timeout.
    result = run(["drain", str(book.root), "--sink", f"sqlite:///{tmp_path}/sink.db", "--timeout", "2"])
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr
    got = delivered(tmp_path / "sink.db")
    assert_written(got, book, "drain without DAC override")
    assert got == {ok: book.records[ok], noseg: {1: book.records[noseg][1], 2: book.records[noseg][2]}}


# -- fuzzing ---------------------------------------------------------------------------------------

def examples(n: int) -> int:
    """n under the default (CI) profile; the profile's own count when it asks for more (thorough)."""
    return max(n, settings.default.max_examples) if settings.default.max_examples > 40 else n


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_not_an_object = st.one_of(
    st.binary(max_size=400),
    _json.filter(lambda v: not isinstance(v, dict)).map(orjson.dumps),
    st.integers(1, 3000).map(lambda n: b"[" * n),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n),
    st.just(b"{" + b" " * 70_000 + b"}"),
    st.just(b"\xff\xfe{}"),
)
MARK_KEYS = ["seq", "durable_seq", "segment", "offset", "dropped", "error", "ts", "state", "n", "epoch", "lease_s",
             "owner", "meta", "finish", "acked_seq", "dead_letters", "writer", "pid", "create_time", "boot_id",
             "pid_ns", "rank", "host", "run", "first_seq", "sink", "domain", "writers", "removed", "kind", "released"]
_wrong_types = st.dictionaries(st.sampled_from(MARK_KEYS), _json, min_size=1, max_size=6)
MARK_PLACES = ["meta", "heartbeat", "finish", "finished-heartbeat", "finished-finish", "tombstone", "leader",
               "cursors", "sender", "sink", "deadletter"]


def _mark_path(book: Book, dead: str, done: str, place: str) -> Path:
    return {
        "meta": book.folder(dead) / "meta.json",
        "heartbeat": book.folder(dead) / "heartbeat.json",
        "finish": book.folder(dead) / "finish.json",
        "finished-heartbeat": book.folder(done) / "heartbeat.json",
        "finished-finish": book.folder(done) / "finish.json",
        "tombstone": book.root / "history" / "t.json",
        "leader": book.root / "leader.json",
        "cursors": book.root / "cursors.json",
        "sender": book.root / "sender.json",
        "sink": book.root / "sink.json",
        "deadletter": book.root / "deadletters" / "x.ndjson",
    }[place]


def run_everything(book: Book, sink: Path, drain_timeout: str = "2") -> tuple[dict[str, Any], int, str]:
    """status, cat and drain in process; fails on a crash; checks nothing was invented.
    Returns the status report, drain's exit code and its stderr."""
    report = distwal.status(book.root)
    code, out, _ = in_process(["cat", str(book.root)])
    assert code == 0
    assert_written(by_seq(envelopes(out)), book, "cat")
    started = time.monotonic()
    code, _, err = in_process(["drain", str(book.root), "--sink", f"sqlite:///{sink}", "--timeout", drain_timeout])
    assert time.monotonic() - started < float(drain_timeout) + 5, "drain overran its timeout"
    assert code in (0, 1, 2), code
    if code == 2:
        assert len(err.strip().splitlines()) == 1, f"drain refused without one line saying why:\n{err}"
    assert_written(delivered(sink), book, "the sink")
    return report, code, err


def _fuzz_marks(tmp_path_factory: Any, contents: dict[str, bytes], meta: dict[str, Any] | None = None) -> None:
    base = tmp_path_factory.mktemp("marks")
    book = Book(base / "wal")
    dead = book.writer("d", [2, 3], finished=False)
    done = book.writer("f", [3, 1])
    if meta:
        _with_meta(book, dead, **meta)
    for place, data in contents.items():
        path = _mark_path(book, dead, done, place)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    run_everything(book, base / "sink.db")


@settings(max_examples=examples(30), suppress_health_check=[HealthCheck.too_slow])
@given(contents=st.dictionaries(st.sampled_from(MARK_PLACES), _not_an_object, min_size=1, max_size=5))
def test_fuzz_marks_that_are_not_json_objects_never_crash_or_invent(tmp_path_factory, contents):
    _fuzz_marks(tmp_path_factory, contents)


# Fields of meta.json that make a writer another host's (a drain then waits, by design, a whole
# lease to see whether it beats) or another process's.
_META_KEPT = {"host", "pid", "writer", "boot_id", "pid_ns", "create_time"}
_any_meta = st.dictionaries(st.sampled_from([k for k in MARK_KEYS if k not in _META_KEPT]), _json, max_size=6)


@settings(max_examples=examples(30), suppress_health_check=[HealthCheck.too_slow])
@given(meta=_any_meta, contents=st.fixed_dictionaries({}, optional={"cursors": _wrong_types.map(orjson.dumps),
                                                                   "sender": _wrong_types.map(orjson.dumps)}))
def test_fuzz_meta_cursors_and_sender_objects_with_any_fields_never_crash_or_invent(tmp_path_factory, meta, contents):
    # The places whose readers check their fields today; the marks that do not are pinned,
    # case by case, below. Fuzzed meta fields are merged into a real meta.
    _fuzz_marks(tmp_path_factory, contents, meta)


WRONG_TYPED = [
    # place, content, where the crash is, who crashes
    ("heartbeat", {"durable_seq": "many"}, "distwal/_status.py _writer_row int(beat['durable_seq'])", "status"),
    ("heartbeat", {"seq": [1], "dropped": {}}, "distwal/_status.py _writer_row int(beat['seq'])", "status"),
    ("finish", {"seq": "x"},
     "distwal/_status.py _writer_row and distwal/leader/sender.py pending_marks/drained/retire int(finish['seq'])",
     "status and drain (a rank's sender too)"),
    ("finished-finish", {"seq": [7]}, "distwal/_status.py _writer_row, distwal/leader/sender.py pending_marks", "status and drain"),
    ("tombstone", {"writer": "w", "meta": "not-a-dict"}, "distwal/_status.py _history_row (meta.get on a str)", "status"),
    ("tombstone", {"writer": "w", "acked_seq": "x"}, "distwal/_status.py _history_row int(tomb['acked_seq'])", "status"),
    ("leader", {"epoch": 1, "lease_s": "long"}, "distwal/_status.py status() float(lease['lease_s'])", "status"),
    ("leader", {"epoch": "x", "ts": 1.0}, "distwal/leader/election.py LeaseKeeper.renew_if_due int(lease['epoch'])",
     "drain (and every leader)"),
]


@pytest.mark.parametrize("place,content,where,who", [
    pytest.param(*case, id=f"{case[0]}-{'-'.join(case[1])}") for case in WRONG_TYPED
])
def test_marks_with_wrong_typed_fields_never_crash_status_or_drain(tmp_path, place, content, where, who):
    book = Book(tmp_path / "wal")
    dead = book.writer("d", [2, 3], finished=False)
    done = book.writer("f", [3, 1])
    path = _mark_path(book, dead, done, place)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(orjson.dumps(content))
    try:
        distwal.status(book.root)
    except Exception as exc:
        raise KnownBug(f"status crashed: {exc!r}") from exc
    with captured() as (_, err):
        try:
            code = cli_main(["drain", str(book.root), "--sink", f"sqlite:///{tmp_path}/sink.db", "--timeout", "2"])
        except Exception as exc:
            raise KnownBug(f"drain crashed: {exc!r}") from exc
    assert code in (0, 1, 2), err.getvalue()
    assert_written(delivered(tmp_path / "sink.db"), book, "the sink")


def _with_meta(book: Book, writer: str, **fields: Any) -> None:
    path = book.folder(writer) / "meta.json"
    path.write_bytes(orjson.dumps({**orjson.loads(path.read_bytes()), **fields}))


@pytest.mark.parametrize("field,value", [("rank", {"a": 1}), ("host", ["x"])])
def test_a_meta_field_the_sink_cannot_store_never_stalls_other_writers(tmp_path, field, value):
    book = Book(tmp_path / "wal")
    odd = book.writer("odd", [2], finished=False)
    ok = book.writer("ok", [3, 2])
    _with_meta(book, odd, **{field: value})
    sink = tmp_path / "sink.db"
    code, _, err = in_process(["drain", str(book.root), "--sink", f"sqlite:///{sink}", "--timeout", "1"])
    got = delivered(sink)
    assert_written(got, book, "the sink")
    if got.get(ok) != book.records[ok]:
        raise KnownBug(f"drain exit {code}; the healthy writer was not delivered: {err.strip().splitlines()[-1:]}")


@pytest.mark.parametrize("pid", [2**31, 2**64 - 1])
def test_an_out_of_range_pid_in_meta_never_crashes_status_or_drain(tmp_path, pid):
    book = Book(tmp_path / "wal")
    odd = book.writer("odd", [2], finished=False)
    _with_meta(book, odd, pid=pid)
    try:
        distwal.status(book.root)
    except Exception as exc:
        raise KnownBug(f"status crashed: {exc!r}") from exc
    with captured():
        try:
            code = cli_main(["drain", str(book.root), "--sink", f"sqlite:///{tmp_path}/sink.db", "--timeout", "2"])
        except Exception as exc:
            raise KnownBug(f"drain crashed: {exc!r}") from exc
    assert code in (0, 1)


def test_a_checksummed_record_that_is_not_utf8_json_never_crashes_the_leader(tmp_path):
    book = Book(tmp_path / "wal")
    w = book.writer("d", [2], finished=False)
    from array import array

    from distwal._record import encode_block, timestamps_bytes, writer_tag

    payload = b"\xff\xfe not json\n"
    ts = timestamps_bytes(array("d", [1.7e9]))
    path = book.folder(w) / format_segment_name(0)
    path.write_bytes(path.read_bytes() + encode_block(writer_tag(w), 3, ts, payload))
    code, out, _ = in_process(["cat", str(book.root)])
    assert code == 0 and len(out.splitlines()) == 3
    with captured() as (_, err):
        try:
            code = cli_main(["drain", str(book.root), "--sink", f"sqlite:///{tmp_path}/sink.db", "--timeout", "2"])
        except Exception as exc:
            raise KnownBug(f"drain crashed: {exc!r}") from exc
    assert delivered(tmp_path / "sink.db") == {w: book.records[w]}, err.getvalue()


# Plantings for the tree fuzz: (place, kind). Places hold a victim writer's files, writers/
# entries and the leader's files; kinds are what gets put there.
VICTIM_FILES = ["meta.json", "heartbeat.json", "finish.json", "00000000.wal", "00000001.wal", "00000002.wal"]
KINDS = ["link-canary-writer", "link-canary-segment", "link-canary-mark", "link-passwd", "link-loop",
         "link-dangling", "fifo", "garbage", "empty", "dir", "nobody-000", "sparse"]
ROOT_PLACES = ["writers/<id>", "writers/<odd>", "adopted/<id>", "history/t.json", "deadletters/x.ndjson",
               "quarantine/q.bin", "cursors.json", "leader.json", "sender.json", "sink.json"]


plantings = st.lists(
    st.tuples(st.sampled_from(["victim:" + f for f in VICTIM_FILES] + ROOT_PLACES), st.sampled_from(KINDS),
              st.binary(max_size=200)),
    min_size=1, max_size=8, unique_by=lambda p: p[0],
)


def _plant(book: Book, canaries: Canaries, victim: str, place: str, kind: str, garbage: bytes) -> None:
    if place.startswith("victim:"):
        path = book.folder(victim) / place.split(":", 1)[1]
    elif place == "writers/<id>":
        path = book.root / "writers" / book.new_id()
    elif place == "writers/<odd>":
        path = book.root / "writers" / (book.new_id() + "\n")
    elif place == "adopted/<id>":
        path = book.root / "adopted" / book.new_id()
    else:
        path = book.root / place
    path.parent.mkdir(exist_ok=True)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    if kind.startswith("link-"):
        target = {"link-canary-writer": canaries.writer_dir, "link-canary-segment": canaries.segment,
                  "link-canary-mark": canaries.heartbeat if "json" in place else canaries.finish,
                  "link-passwd": "/etc/passwd", "link-loop": path.name, "link-dangling": "nowhere"}[kind]
        os.symlink(target, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
        (path / "00000000.wal").write_bytes(garbage)
    elif kind == "sparse":
        with open(path, "wb") as f:
            f.truncate(16 << 20)
    else:
        path.write_bytes(b"" if kind == "empty" else garbage)
        if kind == "nobody-000":
            os.chown(path, NOBODY, NOBODY)
            os.chmod(path, 0)


@settings(max_examples=examples(25), suppress_health_check=[HealthCheck.too_slow])
@given(planted=plantings)
def test_fuzz_planted_trees_never_crash_follow_or_invent_and_untouched_writers_come_through(tmp_path_factory,
                                                                                          planted):
    base = tmp_path_factory.mktemp("tree")
    book = Book(base / "wal")
    a = book.writer("a", [3, 2])  # controls: nothing is planted in them
    z = book.writer("z", [2, 2], finished=False)
    victim = book.writer("v", [2, 2, 2], per_segment=1, finished=False)
    canaries = Canaries(base / "outside")
    for place, kind, garbage in planted:
        _plant(book, canaries, victim, place, kind, garbage)
    canaries.arm(book.root)
    sink = base / "sink.db"
    report, code, err = run_everything(book, sink, drain_timeout=DRAIN_TIMEOUT)
    assert_no_canary(orjson.dumps(report), "status")
    got = delivered(sink)
    assert_no_canary(orjson.dumps(got, option=orjson.OPT_NON_STR_KEYS), "the sink")
    if code != 2:  # 2: refused in one line (a damaged sink.json names no sink to ship to)
        assert code == 0, err
        for control in (a, z):
            assert got.get(control) == book.records[control], f"control writer {control[-8:]} not delivered whole"
    canaries.assert_untouched()


MUTATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 5), st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
        st.tuples(st.just("truncate"), st.integers(0, 5), st.floats(0, 1), st.just(b"")),
        st.tuples(st.just("insert"), st.integers(0, 5), st.floats(0, 1),
                  st.binary(min_size=1, max_size=60) | st.integers(1, 6).map(lambda n: b"DWB1" * n)),
        st.tuples(st.just("zero"), st.integers(0, 5), st.floats(0, 1, exclude_max=True), st.integers(1, 300)),
    ),
    min_size=1, max_size=6, unique_by=lambda m: m[1],  # at most one mutation a segment
)


def mutate(data: bytes, kind: str, where: float, what: Any) -> tuple[bytes, set[int]]:
    """The mutated segment, and the (original) offsets whose bytes changed or vanished; an
    insertion reports its offset only when it lands strictly inside a block (see caller)."""
    at = int(where * len(data))
    if kind == "flip":
        at = min(at, len(data) - 1)
        out = bytearray(data)
        out[at] ^= 1 << what
        return bytes(out), {at}
    if kind == "zero":
        at = min(at, len(data) - 1)
        end = min(len(data), at + what)
        return data[:at] + bytes(end - at) + data[end:], {i for i in range(at, end) if data[i]}
    if kind == "truncate":
        return data[:at], set(range(at, len(data)))
    return data[:at] + what + data[at:], {-at - 1}  # insertion point, encoded


@settings(max_examples=examples(30), suppress_health_check=[HealthCheck.too_slow])
@given(mutations=MUTATIONS)
def test_fuzz_damaged_segments_lose_only_the_touched_blocks(tmp_path_factory, mutations):
    base = tmp_path_factory.mktemp("segments")
    book = Book(base / "wal")
    w = book.writer("m", [2, 3, 1, 4, 2, 3, 2, 2, 5, 1, 2, 3], per_segment=2, finished=False)  # 6 segments
    lost: set[int] = set()  # seqs of blocks whose bytes changed
    damaged = False
    for kind, seg, where, what in mutations:
        path = book.folder(w) / format_segment_name(seg)
        data = path.read_bytes()
        out, changed = mutate(data, kind, where, what)
        if out == data:
            continue
        path.write_bytes(out)
        for s, start, stop, first in book.blocks[w]:
            if s != seg:
                continue
            hit = any(start <= i < stop if i >= 0 else start < -i - 1 < stop for i in changed)
            if hit:
                lost.update(range(first, first + _count(book, w, first)))
            # Damage a reader can see: changed bytes, inserted bytes, or a block cut in two
            # (a segment cut at a block boundary just ends early: nothing to report).
            if hit and (kind != "truncate" or start < min(changed) < stop):
                damaged = True
        damaged = damaged or kind == "insert"
    intact = {seq: data for seq, data in book.records[w].items() if seq not in lost}
    code, out, err = in_process(["cat", str(book.root)])
    printed = by_seq(envelopes(out)).get(w, {})
    assert_written({w: printed}, book, "cat")
    missing = sorted(set(intact) - set(printed))
    assert not missing, f"cat lost intact records {missing[:10]} (lost {sorted(lost)})\n{err}"
    if damaged:
        assert "distwal cat:" in err, "cat met damage without reporting it"
    sink = base / "sink.db"
    code, _, err = in_process(["drain", str(book.root), "--sink", f"sqlite:///{sink}", "--timeout", DRAIN_TIMEOUT])
    assert code == 0, err
    got = delivered(sink).get(w, {})
    assert_written({w: got}, book, "the sink")
    missing = sorted(set(intact) - set(got))
    assert not missing, f"the leader lost intact records {missing[:10]} (lost {sorted(lost)})\n{err}"
    if damaged and set(got) != set(book.records[w]):
        health = orjson.loads((book.root / "sender.json").read_bytes())
        assert health["quarantined_bytes"] + health["torn_bytes"] > 0, f"damage neither quarantined nor counted {health}"


def _count(book: Book, writer: str, first: int) -> int:
    firsts = sorted(f for _, _, _, f in book.blocks[writer])
    index = firsts.index(first)
    nxt = firsts[index + 1] if index + 1 < len(firsts) else max(book.records[writer]) + 1
    return nxt - first


# -- atheris ---------------------------------------------------------------------------------------


@pytest.mark.process
def test_atheris_fuzzes_the_reader_and_scanner_for_a_few_seconds(tmp_path):
    """A short coverage-guided run of fuzz_reader.py (skipped without atheris: pip install atheris)."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        pytest.skip("atheris is not installed (pip install atheris)")
    result = subprocess.run(
        [sys.executable, str(HERE / "fuzz_reader.py"), "-max_total_time=3", "-rss_limit_mb=2048", "-timeout=10",
         "-seed=1", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Done" in result.stderr, result.stderr[-2000:]
