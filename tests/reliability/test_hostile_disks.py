"""Hostile disks: full, read-only, removed under a running job, and FUSE.

- Disk full (a 2 MiB tmpfs filled with a ballast file): each on_full policy holds while
  the disk is full (block: log() waits; drop: counted, no seq used; raise: FullError, no
  seq used; sync mode: log() does not return, so it never claims a durability it lacks);
  flush() returns False at its timeout; the segment stays whole (every block readable,
  seqs contiguous, no damage); and once the ballast is deleted every record logged and
  not dropped lands on disk.
- Read-only (a tmpfs remounted read-only: root ignores permission bits, not a read-only
  mount): init() raises ConfigError in one line naming the path; status and cat still
  read the directory; a writer that was already running keeps its records in memory,
  says why, and writes them once the disk is writable again.
- The run directory removed under a running job: the writer recreates it and says so,
  flush() works afterwards, and the leader delivers what is logged next.
- FUSE (bindfs) as the shared directory: a two-rank job with its leader delivers every
  record exactly once.

Mounts need root (tests/reliability/conftest.py skips without it); the FUSE test needs
bindfs (`apt-get install -y bindfs`) and skips without it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers.cluster import (
    KnownBug,
    acks_of,
    assert_acked_delivered_once,
    cluster_env,
    start_writer,
    wait_until,
    writer_id_of,
)
from helpers.jobs import by_writer, sink_rows
from helpers.procs import WriterOnDisk, assert_contiguous_from_1, only_writer, spawn

import distwal
from distwal import ConfigError, FullError
from distwal.cli import main as cli_main

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(60)]

PAD = "x" * 200
BUFFER = 64 * 1024  # max_buffer_bytes: about 290 records of PAD
DISK = "2m"  # the tmpfs: room for the baseline, the ballast, then everything buffered


def record(i: int) -> dict[str, Any]:
    return {"i": i, "pad": PAD}


def line_size(i: int) -> int:
    return len(orjson.dumps(record(i))) + 1


def fill_disk(disk: Path, name: str = "ballast") -> Path:
    """Write `name` until the file system answers ENOSPC; the disk is then full."""
    target = disk / name
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    chunk = b"\1" * 4096
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return target


def spare(disk: Path, size: int, name: str = "spare") -> Path:
    """A file of `size` bytes to delete later: that much space comes back."""
    target = disk / name
    target.write_bytes(b"\2" * size)
    return target


def read_while_full(wal: Path, tries: int = 5) -> WriterOnDisk:
    """The writer folder read while its flusher keeps retrying. A retry may append part of a
    block before ENOSPC and cut it back at once, so a torn tail can flash by for a moment;
    corruption before the tail never may, and a torn tail must not stay."""
    writer = only_writer(wal)
    for _ in range(tries):
        assert not writer.corrupt_spans(), f"corruption while the disk is full: {writer.damage}"
        if not writer.damage:
            return writer
        time.sleep(0.05)
        writer = only_writer(wal)
    raise AssertionError(f"a torn tail stayed in the segment while the disk was full: {writer.damage}")


def assert_exactly(writer: WriterOnDisk, logged: dict[int, dict[str, Any]], context: str = "") -> None:
    """On disk: exactly the records whose log() returned a seq, under that seq, seqs 1..n, no damage."""
    assert not writer.damage, f"damage on disk: {writer.damage} {context}"
    assert writer.seqs == list(range(1, len(writer.seqs) + 1)), f"seqs not contiguous from 1 {context}"
    assert sorted(logged) == writer.seqs, (
        f"logged seqs 1..{max(logged, default=0)} ({len(logged)}), on disk {len(writer.seqs)} {context}"
    )
    wrong = [seq for seq, data in writer.by_seq.items() if data != logged[seq]]
    assert not wrong, f"records on disk differ from what was logged at seqs {wrong[:5]} {context}"


def wait_stalled(w: distwal.Writer, thread: threading.Thread, quiet: float = 0.3, timeout: float = 10.0) -> int:
    """Wait until w.seq has not moved for `quiet` seconds while `thread` is still logging."""
    last, since = w.seq, time.monotonic()
    deadline = since + timeout
    while True:
        assert thread.is_alive(), f"the logging thread finished: log() never waited (seq {w.seq})"
        now, seq = time.monotonic(), w.seq
        if seq != last:
            last, since = seq, now
        elif now - since >= quiet:
            return seq
        assert now < deadline, f"log() kept returning for {timeout}s on a full disk (seq {seq})"
        time.sleep(0.02)


def held_bytes(w: distwal.Writer, logged: dict[int, dict[str, Any]]) -> int:
    return sum(len(orjson.dumps(logged[s])) + 1 for s in logged if s > w.durable_seq)


# -- disk full -------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["block", "drop", "raise", "sync"])
def test_disk_full_holds_the_policy_keeps_segments_whole_and_resumes_when_space_returns(tmp_path, mounts, policy):
    disk = mounts.tmpfs(tmp_path / "disk", DISK)
    wal = disk / "wal"
    sync = policy == "sync"
    w = distwal.init(dir=wal, durability="sync" if sync else "interval", on_full="block" if sync else policy,
                     max_buffer_bytes=BUFFER, heartbeat_interval=0.1)
    logged: dict[int, dict[str, Any]] = {}
    for i in range(20):
        logged[w.log(record(i))] = record(i)
    assert w.flush(5)
    ballast = fill_disk(disk)
    mounts.cleanups.append(lambda: ballast.unlink(missing_ok=True))

    returned: list[tuple[int, int, int]] = []  # (seq, i, durable_seq when log returned)
    failures: list[BaseException] = []
    thread = None
    dropped = 0
    if policy in ("block", "sync"):
        def keep_logging() -> None:
            try:
                for i in range(20, 1020):
                    seq = w.log(record(i))
                    returned.append((seq, i, w.durable_seq))
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        thread = threading.Thread(target=keep_logging, daemon=True)
        thread.start()
        stalled_at = wait_stalled(w, thread)
        assert len(returned) < 1000 and not failures, (len(returned), failures)
        logged.update({seq: record(i) for seq, i, _ in returned})
        if sync:
            # The call in flight holds a seq, is not durable, and has not returned: no lie.
            assert w.durable_seq < stalled_at == len(returned) + 21
            assert all(durable >= seq for seq, _, durable in returned), "sync log() returned before durability"
        else:
            assert held_bytes(w, logged) <= BUFFER, "more than max_buffer_bytes held in memory"
    elif policy == "drop":
        for i in range(20, 1020):
            seq = w.log(record(i))
            if seq:
                logged[seq] = record(i)
            else:
                dropped += 1
        assert dropped > 0, "nothing was dropped although 220 KB were logged into a 64 KB buffer on a full disk"
        assert w.dropped == dropped
        assert sorted(logged) == list(range(1, len(logged) + 1)), "a dropped record used a seq"
        assert held_bytes(w, logged) <= BUFFER
    else:
        with pytest.raises(FullError):
            for i in range(20, 2000):
                logged[w.log(record(i))] = record(i)
        seq = w.seq
        with pytest.raises(FullError):  # still full: the policy holds
            w.log(record(-1))
        assert w.seq == seq == max(logged), "a refused record used a seq"

    # While full: flush() waits its whole timeout and says False; the segment is whole.
    started = time.monotonic()
    assert w.flush(timeout=0.3) is False, "flush() returned True while records could not be written"
    took = time.monotonic() - started
    assert 0.29 <= took < 3.0, f"flush(timeout=0.3) returned after {took:.2f}s"
    during = read_while_full(wal)
    assert len(during.seqs) >= 20 and during.seqs == list(range(1, len(during.seqs) + 1))
    assert all(data == logged.get(seq, record(seq - 1)) for seq, data in during.by_seq.items())

    ballast.unlink()
    if thread is not None:
        thread.join(20)
        assert not thread.is_alive(), f"log() still blocked 20s after space returned (seq {w.seq})"
        assert not failures, failures
        logged.update({seq: record(i) for seq, i, _ in returned})
        assert len(returned) == 1000
        if sync:
            assert all(durable >= seq for seq, _, durable in returned), "sync log() returned before durability"
    assert w.flush(timeout=10), "flush() failed after space returned"
    after = w.seq
    for i in range(5):  # work goes on under the next seqs
        seq = w.log(record(10_000 + i))
        assert seq == after + i + 1, f"after recovery log() returned {seq}, expected {after + i + 1}"
        logged[seq] = record(10_000 + i)
    assert w.finish(timeout=10)
    assert_exactly(only_writer(wal), logged, f"(policy {policy})")
    if policy == "drop":
        rows = distwal.status(wal)["writers"]
        assert [row["dropped"] for row in rows] == [dropped], f"status does not count the drops: {rows}"


def buffered_on_a_full_disk(
    tmp_path: Path, mounts: Any, room_bytes: int, commit_every: int = 0
) -> tuple[Path, distwal.Writer, Path, Path]:
    """A writer (on_full="drop") whose buffer filled on a full tmpfs: (wal, writer, room, ballast).

    Unlinking `room` gives `room_bytes` back; `commit_every` N records, a pause lets a group
    commit seal a block, so that several blocks wait in memory.
    """
    disk = mounts.tmpfs(tmp_path / "disk", DISK)
    wal = disk / "wal"
    w = distwal.init(dir=wal, on_full="drop", max_buffer_bytes=BUFFER, heartbeat_interval=0.1)
    w.log(record(0))
    assert w.flush(5)
    room = spare(disk, room_bytes)
    ballast = fill_disk(disk)
    mounts.cleanups.append(lambda: ballast.unlink(missing_ok=True))
    for i in range(1, 1000):
        w.log(record(i))
        if commit_every and i % commit_every == 0:
            time.sleep(0.005)  # a commit interval's worth: one more block sealed
    return wal, w, room, ballast


def test_disk_full_write_error_shows_in_the_heartbeat_while_a_heartbeat_fits(tmp_path, mounts):
    # Room for a heartbeat but not for the buffered records: status must say why nothing moves.
    wal, w, room, ballast = buffered_on_a_full_disk(tmp_path, mounts, 16 * 1024)
    assert w.dropped > 0
    room.unlink()  # 16 KiB back: a heartbeat fits, the 64 KiB buffer does not

    def row() -> dict[str, Any]:
        return distwal.status(wal)["writers"][0]

    found = wait_until(
        lambda: (r := row())["error"] and "No space left" in r["error"] and (r["heartbeat_age"] or 9) < 1.0 and r,
        2, "status to show the write error with a fresh heartbeat", lambda: str(row()),
    )
    assert found["dropped"] == w.dropped
    ballast.unlink()
    assert w.flush(10)
    wait_until(lambda: row()["error"] is None, 5, "the error to clear once written", lambda: str(row()))


def test_disk_full_writes_the_blocks_that_fit_when_some_space_returns(tmp_path, mounts):
    # Less space back than is buffered, but room for many blocks: what fits is made durable,
    # so a crash now would lose less.
    wal, w, room, ballast = buffered_on_a_full_disk(tmp_path, mounts, 32 * 1024, commit_every=20)
    before = w.durable_seq
    assert w.seq - before > 200, f"expected a full buffer on the full disk (seq {w.seq}, durable {before})"
    room.unlink()  # 32 KiB back: about half of what is buffered fits
    try:
        wait_until(lambda: w.durable_seq > before + 50, 3, "the records that fit to be written",
                   lambda: f"durable_seq {w.durable_seq} (was {before}), seq {w.seq}")
        assert w.durable_seq < w.seq, "everything fit: the test no longer tests a partial fit"
        # What is left is kept for the marks: the heartbeat still beats, and tells why.
        wait_until(lambda: (r := distwal.status(wal)["writers"][0])["error"] and r["heartbeat_age"] < 0.5, 3,
                   "a fresh heartbeat carrying the error", lambda: str(distwal.status(wal)["writers"][0]))
    finally:
        ballast.unlink()
    assert w.flush(10)
    on_disk = only_writer(wal)  # split blocks read back whole: seqs 1.., in order, no damage
    assert_contiguous_from_1(on_disk)
    assert len(on_disk.records) == w.seq and [d["i"] for d in on_disk.by_seq.values()] == sorted(
        d["i"] for d in on_disk.by_seq.values()
    )


def test_disk_full_leaves_no_temporary_files_behind(tmp_path, mounts):
    # A heartbeat due while the disk is full fails after its temp file was created.
    disk = mounts.tmpfs(tmp_path / "disk", DISK)
    wal = disk / "wal"
    w = distwal.init(dir=wal, heartbeat_interval=0.05)
    w.log(record(0))
    assert w.flush(5)
    ballast = fill_disk(disk)
    mounts.cleanups.append(lambda: ballast.unlink(missing_ok=True))
    time.sleep(0.5)  # about ten heartbeats fail
    ballast.unlink()
    assert w.finish(5)
    folder = wal / "writers" / w.id
    litter = sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))
    if litter:
        raise KnownBug(f"temporary files left in {folder}: {litter}")


# -- read-only -------------------------------------------------------------------------------


@pytest.mark.parametrize("existing", [False, True], ids=["new-dir", "existing-dir"])
def test_init_on_a_read_only_mount_raises_one_line_config_error_naming_the_path(tmp_path, mounts, capsys, existing):
    disk = mounts.tmpfs(tmp_path / "disk", "1m")
    wal = disk / "wal"
    if existing:
        w = distwal.init(dir=wal)
        for i in range(5):
            w.log(record(i))
        assert w.finish(5)
    mounts.remount(disk, read_only=True)
    with pytest.raises(ConfigError) as info:
        distwal.init(dir=wal)
    message = str(info.value)
    assert "\n" not in message and str(wal) in message, message
    if not existing:
        return
    # Reading needs no write access: status and cat work on the read-only directory.
    rows = distwal.status(wal)["writers"]
    assert [row["state"] for row in rows] == ["finished"] and rows[0]["records"] == 5, rows
    capsys.readouterr()
    assert cli_main(["cat", str(wal)]) == 0
    out, err = capsys.readouterr()
    assert [orjson.loads(line)["data"] for line in out.splitlines()] == [record(i) for i in range(5)], err
    # drain must write (lease, cursors): exit 2 and one line naming the directory.
    assert cli_main(["drain", str(wal), "--timeout", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(wal) in err, err


def test_running_writer_keeps_records_in_memory_while_its_disk_is_read_only(tmp_path, mounts, caplog):
    disk = mounts.tmpfs(tmp_path / "disk", "4m")
    wal = disk / "wal"
    caplog.set_level(logging.WARNING, logger="distwal")
    w = distwal.init(dir=wal, heartbeat_interval=0.1)
    # Before its first record a writer holds no file open for writing, so the kernel lets
    # the mount turn read-only under it (an open writer would make the remount EBUSY).
    mounts.remount(disk, read_only=True)
    logged = {}
    for i in range(50):
        logged[w.log(record(i))] = record(i)
    assert sorted(logged) == list(range(1, 51))
    assert w.flush(timeout=0.3) is False
    wait_until(lambda: any("Read-only file system" in r.getMessage() for r in caplog.records), 5,
               "the writer to log why it cannot write", lambda: caplog.text)
    assert w.durable_seq == 0
    rows = distwal.status(wal)["writers"]  # status reads a read-only directory
    assert [row["writer"] for row in rows] == [w.id]
    mounts.remount(disk, read_only=False)
    assert w.flush(timeout=10), "flush() failed once the disk was writable again"
    assert w.finish(timeout=10)
    assert_exactly(only_writer(wal), logged)


# -- the directory removed under a running job -------------------------------------------------

REMOVED_RANK = r'''
import distwal

opts = json.loads(sys.argv[1])
w = distwal.init(durability="sync", heartbeat_interval=0.2)
emit("ready", w.id, os.getpid())
for i in range(opts["before"]):
    w.log({"phase": 1, "i": i})
emit("delivered1", w.flush(timeout=20, delivered=True))
while not os.path.exists(opts["go"]):
    time.sleep(0.02)
for i in range(opts["after"]):
    w.log({"phase": 2, "i": i})
emit("flushed2", w.flush(timeout=10), w.id)
emit("delivered2", w.flush(timeout=3, delivered=True))
emit("finished", w.finish(timeout=3))
'''


@pytest.mark.process
def test_directory_removed_under_a_running_job_is_recreated_and_delivery_goes_on(tmp_path):
    wal = tmp_path / "wal"
    sink = tmp_path / "sink.db"  # outside the directory that is removed
    go = tmp_path / "go"
    env = cluster_env(wal, f"sqlite:///{sink}")
    args = orjson.dumps({"before": 30, "after": 40, "go": str(go)}).decode()
    with spawn(tmp_path, REMOVED_RANK, args, env=env, name="removed_rank.py") as rank:
        first_id = writer_id_of(rank)
        assert rank.wait_for("delivered1", 30).parts[1] == "True", rank.describe()
        shutil.rmtree(wal)
        wait_until(lambda: "was removed while writer" in rank.stderr, 10,
                   "the writer to say its directory was removed", rank.describe)
        # It says so first, then recreates the directory: wait for that too.
        wait_until(lambda: (wal / "writers").is_dir() and (wal / "domain.json").is_file(), 10,
                   "the directory to be recreated", rank.describe)
        go.touch()
        flushed = rank.wait_for("flushed2", 30)
        assert flushed.parts[1] == "True", rank.describe()
        second_id = flushed.parts[2]
        assert second_id != first_id
        delivered = rank.wait_for("delivered2", 30)
        lease = (wal / "leader.json").read_bytes() if (wal / "leader.json").exists() else b"(none)"
        assert rank.wait(30) == 0, rank.describe()
    stored = {w: {seq: row.data for seq, row in rows.items()} for w, rows in by_writer(sink_rows(wal, sink)).items()}
    assert sorted(stored.get(first_id, {})) == list(range(1, 31)), "phase 1 was not delivered"
    second = stored.get(second_id, {})
    if delivered.parts[1] != "True" or sorted(second) != list(range(31, 71)):
        raise KnownBug(
            f"after the directory was recreated the leader delivered {len(second)} of 40 records "
            f"(flush(delivered=True) said {delivered.parts[1]}); lease in the new directory: {lease!r}\n"
            f"{rank.describe()}"
        )
    assert all(second[31 + i] == {"phase": 2, "i": i} for i in range(40))


# -- FUSE --------------------------------------------------------------------------------------


@pytest.mark.process
def test_fuse_shared_directory_job_delivers_every_record_once(tmp_path, mounts):
    backing = tmp_path / "backing"
    backing.mkdir()
    fuse = mounts.bindfs(backing, tmp_path / "fuse")
    fstype = [line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1] == str(fuse)]
    assert fstype and fstype[-1].startswith("fuse"), f"{fuse} is not a FUSE mount: {fstype}"
    wal = fuse / "wal"
    env = cluster_env(wal, f"sqlite:///{wal}/collected.db")
    counts = {"a": 150, "b": 120}
    with start_writer(tmp_path, env, "a", count=counts["a"], flush_delivered=[30]) as a, \
            start_writer(tmp_path, env, "b", count=counts["b"], flush_delivered=[30]) as b:
        ids = {"a": writer_id_of(a), "b": writer_id_of(b)}
        for rank in (a, b):
            assert rank.wait(45) == 0, rank.describe()
            assert rank.lines_with("flushed")[0].parts[1] == "True", rank.describe()
            assert rank.lines_with("finished")[0].parts[1] == "True", rank.describe()
    stored = {w: {seq: row.data for seq, row in rows.items()} for w, rows in by_writer(sink_rows(wal)).items()}
    for tag, rank in (("a", a), ("b", b)):
        acks = acks_of(rank)
        assert len(acks) == counts[tag]
        assert_acked_delivered_once(stored, ids[tag], tag, acks, finished=True)
    assert (backing / "wal" / "collected.db").is_file(), "the job did not write through the FUSE mount"
