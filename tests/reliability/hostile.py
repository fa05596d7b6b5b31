"""Building hostile directories for the reliability tests (and fuzz_reader.py).

    root = tmp_path / "wal"
    book = Book(root)                        # a distwal directory (domain, writers/)
    wid = book.writer("a", blocks=[3, 4])    # a finished writer: records {"w": "a", "i": i}, seq i+1
    did = book.writer("d", blocks=[5], finished=False)   # a dead one: no finish mark, a reaped pid
    canaries = Canaries(tmp_path / "outside")            # files a followed link would reveal
    ...plant links, garbage, fifos...
    canaries.assert_untouched()              # content, existence, and (where the clock allows) atime

Writer folders are built the way distwal lays them out (meta.json, segments of checksummed
blocks, heartbeat.json, finish.json) but by hand, so a test controls every byte and knows
every record: `book.records[writer][seq] == data`. Canary records carry {"canary": ...}:
one showing up anywhere means a link was followed or a record invented.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from array import array
from pathlib import Path
from typing import Any

import orjson

from distwal._files import ensure_domain, prepare_dir
from distwal._layout import Identity, Modes, format_segment_name, format_writer_id
from distwal._record import encode_block, timestamps_bytes, writer_tag

MODES = Modes.for_config(False)
T0 = 1.7e9


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped (free unless reused, and then
    the create time we record differs, which liveness also counts as dead)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def this_kernel() -> Identity:
    return Identity.of_this_process()


def fake_identity(pid: int, host: str = "fuzzhost") -> Identity:
    me = this_kernel()
    return Identity(host=host, boot_id=me.boot_id, pid_ns=me.pid_ns, pid=pid, create_time=123.0)


def record_of(tag: str, i: int) -> dict[str, Any]:
    return {"w": tag, "i": i}


def block_bytes(writer_id: str, first_seq: int, recs: list[dict[str, Any]], t0: float = T0) -> bytes:
    """A block of `recs` as writer `writer_id` writes it (its header carries the writer's tag)."""
    payload = b"".join(orjson.dumps(r) + b"\n" for r in recs)
    ts = timestamps_bytes(array("d", [t0 + first_seq + k / 8 for k in range(len(recs))]))
    return encode_block(writer_tag(writer_id), first_seq, ts, payload)


def segment_bytes(
    writer_id: str, first_seq: int, blocks: list[list[dict[str, Any]]]
) -> tuple[bytes, list[tuple[int, int]]]:
    """A segment of writer `writer_id` holding `blocks` from first_seq on, and the (start, end) of each block."""
    out = bytearray()
    spans = []
    seq = first_seq
    for recs in blocks:
        raw = block_bytes(writer_id, seq, recs)
        spans.append((len(out), len(out) + len(raw)))
        out += raw
        seq += len(recs)
    return bytes(out), spans


class Book:
    """A distwal directory built by hand, and every record written into it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        prepare_dir(str(self.root), MODES)
        self.domain = ensure_domain(str(self.root), MODES)
        self.records: dict[str, dict[int, dict[str, Any]]] = {}
        self.blocks: dict[str, list[tuple[int, int, int, int]]] = {}  # (segment, start, end, first_seq)
        self._pid = dead_pid()
        self._n = 0

    def new_id(self, host: str = "fuzzhost") -> str:
        self._n += 1
        return format_writer_id(fake_identity(self._pid, host), suffix=f"{self._n:08x}")

    def meta(self, writer_id: str, tag: str) -> dict[str, Any]:
        ident = fake_identity(self._pid)
        return {
            "version": 1, "writer": writer_id, "host": ident.host, "boot_id": ident.boot_id, "pid_ns": ident.pid_ns,
            "pid": ident.pid, "create_time": ident.create_time, "rank": self._n, "local_rank": 0, "world_size": 8,
            "group_rank": 0, "attempt": 0, "run": "hostile", "domain": self.domain, "durability": "interval",
            "first_seq": 1, "continues": None, "started": T0, "tag": tag,
        }

    def writer(
        self,
        tag: str,
        blocks: list[int],
        per_segment: int = 2,
        finished: bool = True,
        sub: str = "writers",
        writer_id: str | None = None,
    ) -> str:
        """A writer folder holding blocks of the given record counts, `per_segment` blocks a segment."""
        writer_id = writer_id or self.new_id()
        folder = self.root / sub / writer_id
        folder.mkdir(parents=True, mode=0o700)
        (folder / "meta.json").write_bytes(orjson.dumps(self.meta(writer_id, tag)))
        records = self.records.setdefault(writer_id, {})
        spans = self.blocks.setdefault(writer_id, [])
        seq, i = 1, 0
        segment = 0
        offset = 0
        for index in range(0, len(blocks), per_segment):
            chunk = blocks[index : index + per_segment]
            recs = []
            for count in chunk:
                recs.append([record_of(tag, i + k) for k in range(count)])
                for k in range(count):
                    records[seq + k] = record_of(tag, i + k)
                i += count
                seq += count
            data, block_spans = segment_bytes(writer_id, seq - sum(chunk), recs)
            first = seq - sum(chunk)
            for (start, end), count in zip(block_spans, chunk):
                spans.append((segment, start, end, first))
                first += count
            (folder / format_segment_name(segment)).write_bytes(data)
            offset = len(data)
            segment += 1
        last = seq - 1
        beat = {"n": 3, "ts": time.time(), "state": "finished" if finished else "live", "seq": last,
                "durable_seq": last, "segment": max(0, segment - 1), "offset": offset, "dropped": 0, "error": None}
        (folder / "heartbeat.json").write_bytes(orjson.dumps(beat))
        if finished:
            mark = {"seq": last, "segment": max(0, segment - 1), "offset": offset, "ts": time.time(), "dropped": 0,
                    "lost": 0}
            (folder / "finish.json").write_bytes(orjson.dumps(mark))
        return writer_id

    def folder(self, writer_id: str, sub: str = "writers") -> Path:
        return self.root / sub / writer_id


# -- canaries: what a followed link would reveal -----------------------------------------------


class Canaries:
    """Files outside the directory that planted links point at.

    Each holds content that would show if read through a link: a writer folder of canary
    records, a valid segment of canary records (seqs far above any real one), marks whose
    numbers are absurd, a cursor book that would skip records, a lease of a CANARY owner.
    assert_untouched() checks each still exists with the same bytes and, where the file
    system updates access times (relatime does when atime < mtime, which we arrange), that
    nothing read it.
    """

    def __init__(self, where: str | os.PathLike[str]) -> None:
        self.dir = Path(where)
        self.dir.mkdir(parents=True, exist_ok=True)
        canary_id = format_writer_id(fake_identity(dead_pid(), "CANARY"), suffix="c0ffee00")
        self.writer_dir = self.dir / "canary-writer"
        self.writer_dir.mkdir()
        meta = {"writer": canary_id, "host": "CANARY", "pid": 1, "boot_id": "x", "pid_ns": 1, "create_time": 1.0,
                "rank": 666, "run": "CANARY", "first_seq": 1}
        data = self._canary_segment("writer-dir", [canary_id])
        (self.writer_dir / "meta.json").write_bytes(orjson.dumps(meta))
        (self.writer_dir / "00000000.wal").write_bytes(data)
        (self.writer_dir / "finish.json").write_bytes(orjson.dumps({"seq": 900_003, "segment": 0, "offset": len(data)}))
        self.segment = self._put("canary.wal", self._canary_segment("segment", [canary_id]))
        self.meta = self._put("meta.json", orjson.dumps({**meta, "writer": "CANARY"}))
        self.heartbeat = self._put("heartbeat.json", orjson.dumps(
            {"state": "CANARY", "seq": 990_000, "durable_seq": 990_000, "segment": 0, "offset": 0, "error": "CANARY",
             "ts": time.time(), "dropped": 4242}))
        self.finish = self._put("finish.json", orjson.dumps({"seq": 770_000, "segment": 0, "offset": 0, "dropped": 4242}))
        self.lease = self._put("leader.json", orjson.dumps(
            {"owner": "CANARY", "kind": "rank", "epoch": 9999, "n": 1, "ts": time.time() + 3600, "lease_s": 3600}))
        self.tombstone = self._put("tomb.json", orjson.dumps(
            {"writer": "CANARY", "state": "finished", "acked_seq": 31337, "meta": {"host": "CANARY"}, "finish": {}}))
        self.lines = self._put("lines.ndjson", b'{"canary": "deadletter"}\n' * 7)
        self.secret = self._put("secret.txt", b"CANARY-SECRET\n" * 100)
        self.subdir = self.dir / "canary-subdir"
        self.subdir.mkdir()
        (self.subdir / "inside.bin").write_bytes(b"\3" * 12_345)
        (self.subdir / "x.json").write_bytes(orjson.dumps({"writer": "CANARY", "acked_seq": 31337}))
        self.cursors: Path | None = None
        self._snapshot: dict[Path, tuple[bytes, int, int]] = {}

    def _put(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def cursor_book_for(self, writer_id: str) -> Path:
        """A cursor book saying `writer_id` is acknowledged up to seq 5, well into its first segment."""
        self.cursors = self._put("cursors.json", orjson.dumps(
            {"epoch": 9999, "writers": {writer_id: {"seq": 5, "segment": 0, "offset": 0}}}))
        return self.cursors

    def files(self) -> list[Path]:
        return sorted(p for p in self.dir.rglob("*") if p.is_file() and not p.is_symlink())

    @staticmethod
    def _canary_segment(kind: str, writer_ids: list[str]) -> bytes:
        """Canary records (seqs 900001..) in one block per writer id: a reader of any of
        those writers' folders would decode them, so a followed link shows in its output."""
        return b"".join(
            block_bytes(writer_id, 900_001, [{"canary": kind, "i": k} for k in range(3)]) for writer_id in writer_ids
        )

    def _readable_from(self, root: Path) -> None:
        """Rewrite every canary segment (and copy of one) with a block for each name under
        `root` or here that a reader could take for its writer id, whatever path led it there."""
        names = set()
        for base in (root, self.dir):
            for dirpath, dirnames, filenames in os.walk(base):  # never follows links
                names.add(os.path.basename(dirpath))
                names.update(dirnames, filenames)
        originals = {self.segment.read_bytes(): "segment", (self.writer_dir / "00000000.wal").read_bytes(): "writer-dir"}
        sizes = {len(data) for data in originals}
        for base in (root, self.dir):
            for path in base.rglob("*"):
                if path.is_symlink() or not path.is_file() or path.stat().st_size not in sizes:
                    continue  # (a planted sparse file is 10 GB: never read what cannot be a copy)
                if kind := originals.get(path.read_bytes()):
                    path.write_bytes(self._canary_segment(kind, sorted(names)))

    def arm(self, root: str | os.PathLike[str] | None = None) -> None:
        """Snapshot every canary; set its atime before its mtime so that any read moves it.

        With the distwal directory `root`, the canary segments are first made readable
        under every writer id found there (blocks carry their writer's tag).
        """
        if root is not None:
            self._readable_from(Path(root))
        now = time.time()
        for path in self.files():
            os.utime(path, (now - 1000, now - 10))
            st = os.stat(path)
            self._snapshot[path] = (hashlib.sha256(path.read_bytes()).digest(), st.st_atime_ns, st.st_mtime_ns)
        # Reading the files just now moved their atime (relatime: atime < mtime): set it again.
        for path in self._snapshot:
            os.utime(path, (now - 1000, now - 10))
            digest, _, _ = self._snapshot[path]
            st = os.stat(path)
            self._snapshot[path] = (digest, st.st_atime_ns, st.st_mtime_ns)

    def atime_is_kept(self) -> bool:
        """True when this file system moves atime on a read here (relatime, strictatime)."""
        probe = self.dir.parent / f".atime-probe-{os.getpid()}"
        probe.write_bytes(b"x")
        now = time.time()
        os.utime(probe, (now - 1000, now - 10))
        before = os.stat(probe).st_atime_ns
        with open(probe, "rb") as f:
            f.read()
        moved = os.stat(probe).st_atime_ns != before
        probe.unlink()
        return moved

    def assert_untouched(self) -> None:
        assert self._snapshot, "arm() the canaries first"
        check_atime = self.atime_is_kept()
        read = []
        for path, (digest, atime, mtime) in self._snapshot.items():
            assert path.exists(), f"canary {path} was removed through a link"
            st = os.stat(path)
            assert st.st_mtime_ns == mtime, f"canary {path} was modified through a link"
            if check_atime and st.st_atime_ns != atime:
                read.append(str(path.relative_to(self.dir)))
        for path, (digest, atime, mtime) in self._snapshot.items():
            assert hashlib.sha256(path.read_bytes()).digest() == digest, f"canary {path} changed"
            os.utime(path, ns=(atime, mtime))  # our own read: put the access time back
        assert not read, f"canaries read through a planted link: {read}"


CANARY_MARKS = (b"CANARY", b"canary")  # numbers (900001, 990000, 770000, 31337, 4242) are checked by field


def assert_no_canary(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    found = [mark.decode() for mark in CANARY_MARKS if mark in data]
    assert not found, f"{where} shows canary content {found}: a planted link was followed"
