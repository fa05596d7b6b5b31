"""The in-process Writer (distwal.writer.writer) and the module API (distwal._api), on tmp_path.

tests/conftest.py finishes the current writer and restores os.environ after each test.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
import types
from pathlib import Path
from typing import Any

import orjson
import pytest

import distwal
from distwal import _api, _files
from distwal._folder import iter_envelopes, iter_items, list_writers
from distwal._layout import Identity, Modes
from distwal._segment import Block, Damage

LONG = 3600.0  # seconds: an interval so long the flusher only runs when woken


def read_back(root: Path) -> tuple[list[dict[str, Any]], list[Damage]]:
    """Every envelope of every writer under root, parsed, and the damaged spans found."""
    damage: list[Damage] = []
    out = []
    for writer in list_writers(str(root)):
        for seq, ts, raw in iter_envelopes(writer, damage):
            envelope = orjson.loads(raw)
            assert (envelope["seq"], envelope["ts"]) == (seq, ts)
            out.append(envelope)
    return out, damage


def data_of(root: Path) -> list[tuple[int, Any]]:
    envelopes, damage = read_back(root)
    assert damage == []
    return [(e["seq"], e["data"]) for e in envelopes]


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "run"


# -- seqs --------------------------------------------------------------------------------------


def test_log_returns_contiguous_seqs_from_one(root: Path) -> None:
    writer = distwal.init(dir=root)
    assert [writer.log({"i": i}) for i in range(5)] == [1, 2, 3, 4, 5]
    assert writer.seq == 5


def test_module_log_uses_the_current_writer(root: Path) -> None:
    writer = distwal.init(dir=root)
    assert distwal.log({"a": 1}) == 1
    assert writer.log({"a": 2}) == 2
    assert distwal.flush() is True
    assert data_of(root) == [(1, {"a": 1}), (2, {"a": 2})]


def test_seqs_are_contiguous_across_segment_rotation(root: Path) -> None:
    writer = distwal.init(dir=root, segment_bytes=256, interval=LONG)
    expected = []
    for i in range(40):
        record = {"i": i, "pad": "x" * (i % 7) * 10}
        assert writer.log(record) == i + 1
        expected.append((i + 1, record))
        if i % 3 == 2:
            assert writer.flush(timeout=10)  # one block per flush
    assert writer.flush(timeout=10)
    segments = sorted(p.name for p in (root / "writers" / writer.id).glob("*.wal"))
    assert len(segments) > 3, f"no rotation happened: {segments}"
    assert data_of(root) == expected


def test_flush_makes_everything_readable(root: Path) -> None:
    writer = distwal.init(dir=root, interval=LONG)
    records = [{"step": i, "loss": 1.0 / (i + 1), "tags": ["a", {"b": None}]} for i in range(100)]
    for record in records:
        writer.log(record)
    assert writer.flush(timeout=10) is True
    assert writer.durable_seq == 100
    assert data_of(root) == list(zip(range(1, 101), records))


def test_flush_with_nothing_logged_is_true(root: Path) -> None:
    writer = distwal.init(dir=root)
    assert writer.flush(timeout=10) is True


def test_sync_durability_log_returns_once_durable(root: Path) -> None:
    writer = distwal.init(dir=root, durability="sync", interval=LONG)
    assert writer.log({"a": 1}) == 1
    assert writer.durable_seq >= 1
    assert data_of(root) == [(1, {"a": 1})]


def test_log_from_several_threads_loses_and_repeats_nothing(root: Path) -> None:
    writer = distwal.init(dir=root)
    seqs: list[list[int]] = [[] for _ in range(4)]

    def worker(n: int) -> None:
        for i in range(250):
            seqs[n].append(writer.log({"t": n, "i": i}))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(s for per in seqs for s in per) == list(range(1, 1001))
    assert writer.flush(timeout=10)
    got = data_of(root)
    assert [seq for seq, _ in got] == list(range(1, 1001))
    for n in range(4):  # each thread's records in its own order, with the seqs log() returned
        mine = [(seq, data["i"]) for seq, data in got if data["t"] == n]
        assert mine == list(zip(seqs[n], range(250)))


# -- refused records ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        {"x": object()},
        {1: "int key"},
        {"nested": {"bad": {1, 2}}},
        {"bytes": b"raw"},
    ],
    ids=["object", "int-key", "set", "bytes"],
)
def test_unserializable_record_raises_type_error_and_uses_no_seq(root: Path, record: Any) -> None:
    writer = distwal.init(dir=root, interval=LONG)
    assert writer.log({"before": True}) == 1
    with pytest.raises(TypeError):
        writer.log(record)
    assert writer.seq == 1
    assert writer.log({"after": True}) == 2
    assert writer.flush(timeout=10)
    assert data_of(root) == [(1, {"before": True}), (2, {"after": True})]


@pytest.mark.parametrize("record", [[1, 2], "text", 5, None, (1,), 1.5], ids=repr)
def test_non_mapping_record_raises_type_error(root: Path, record: Any) -> None:
    writer = distwal.init(dir=root, interval=LONG)
    with pytest.raises(TypeError):
        writer.log(record)
    assert writer.log({"ok": 1}) == 1
    assert writer.flush(timeout=10)
    assert data_of(root) == [(1, {"ok": 1})]


def test_a_mapping_that_is_not_a_dict_is_accepted(root: Path) -> None:
    writer = distwal.init(dir=root)
    assert writer.log(types.MappingProxyType({"a": 1})) == 1
    assert writer.flush(timeout=10)
    assert data_of(root) == [(1, {"a": 1})]


def test_oversize_record_raises_value_error_and_uses_no_seq(root: Path) -> None:
    writer = distwal.init(dir=root, max_record_bytes=100, interval=LONG)
    with pytest.raises(ValueError, match="max_record_bytes"):
        writer.log({"x": "y" * 200})
    assert writer.log({"x": "small"}) == 1
    assert writer.flush(timeout=10)
    assert data_of(root) == [(1, {"x": "small"})]


def test_log_after_finish_raises_closed_error(root: Path) -> None:
    writer = distwal.init(dir=root)
    writer.log({"a": 1})
    assert writer.finish(timeout=10) is True
    assert writer.closed
    with pytest.raises(distwal.ClosedError):
        writer.log({"a": 2})
    assert data_of(root) == [(1, {"a": 1})]


def test_finish_is_idempotent_and_writes_the_finish_mark(root: Path) -> None:
    writer = distwal.init(dir=root, interval=LONG)
    for i in range(3):
        writer.log({"i": i})
    assert writer.finish(timeout=10) is True
    assert writer.finish(timeout=10) is True
    (found,) = list_writers(str(root))
    assert found.finish is not None and found.finish.durable_seq == 3 and found.finish.lost == 0
    assert found.heartbeat is not None and found.heartbeat.state == "finished"


# -- full buffer -------------------------------------------------------------------------------------

RECORD = {"pad": "z" * 80}
RECORD_BYTES = len(orjson.dumps(RECORD)) + 1  # with its newline
PRIME = {"prime": 0}


def full_writer(root: Path, on_full: str) -> tuple[distwal.Writer, int]:
    """A writer whose 1000-byte buffer only the caller fills: the flusher runs only when woken.

    One record is logged and flushed first, so these tests see the policy after a commit;
    test_max_buffer_bytes_applies_before_the_first_commit covers the start.
    """
    writer = distwal.init(dir=root, on_full=on_full, max_buffer_bytes=1000, max_record_bytes=500, interval=LONG)
    assert writer.log(PRIME) == 1
    assert writer.flush(timeout=10)
    return writer, 1000 // RECORD_BYTES


def test_on_full_drop_counts_drops_returns_zero_and_uses_no_seq(root: Path) -> None:
    writer, fits = full_writer(root, "drop")
    results = [writer.log(RECORD) for _ in range(20)]
    assert results == list(range(2, fits + 2)) + [0] * (20 - fits)
    assert writer.dropped == 20 - fits
    assert writer.flush(timeout=10)
    assert writer.log({"after": 1}) == fits + 2  # the buffer has room again; drops used no seq
    assert writer.finish(timeout=10)
    assert data_of(root) == [(1, PRIME)] + [(i, RECORD) for i in range(2, fits + 2)] + [(fits + 2, {"after": 1})]
    (found,) = list_writers(str(root))
    assert found.finish is not None and found.finish.dropped == 20 - fits


def test_on_full_raise_raises_full_error_and_uses_no_seq(root: Path) -> None:
    writer, fits = full_writer(root, "raise")
    assert [writer.log(RECORD) for _ in range(fits)] == list(range(2, fits + 2))
    with pytest.raises(distwal.FullError):
        writer.log(RECORD)
    assert writer.seq == fits + 1
    assert writer.flush(timeout=10)
    assert writer.log(RECORD) == fits + 2
    assert writer.flush(timeout=10)
    assert data_of(root) == [(1, PRIME)] + [(i, RECORD) for i in range(2, fits + 3)]


@pytest.mark.parametrize("on_full", ["drop", "raise"])
def test_max_buffer_bytes_applies_before_the_first_commit(root: Path, on_full: str) -> None:
    writer = distwal.init(dir=root, on_full=on_full, max_buffer_bytes=1000, max_record_bytes=500, interval=LONG)
    fits = 1000 // RECORD_BYTES
    accepted = 0
    for _ in range(fits + 5):
        try:
            accepted += writer.log(RECORD) > 0
        except distwal.FullError:
            pass
    assert accepted == fits


def test_on_full_block_waits_for_the_flusher_and_loses_nothing(root: Path) -> None:
    writer, fits = full_writer(root, "block")
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.extend(writer.log(RECORD) for _ in range(60)), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "log() stayed blocked on a full buffer"
    assert done == list(range(2, 62))
    assert writer.flush(timeout=10)
    assert data_of(root) == [(1, PRIME)] + [(i, RECORD) for i in range(2, 62)]
    # The interval is an hour: only a full buffer woke the flusher, and no block exceeds the buffer.
    blocks = [item for item in iter_items(str(root / "writers" / writer.id)) if isinstance(item, Block)]
    assert len(blocks) >= 1 + 60 // fits
    assert all(sum(len(line) + 1 for line in block.lines) <= 1000 for block in blocks)


# -- files, modes, envelopes ----------------------------------------------------------------------------


def modes_under(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(os.lstat(root).st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_files_are_0600_and_dirs_0700(root: Path, umask, mask: int) -> None:
    umask(mask)
    writer = distwal.init(dir=root, segment_bytes=1, interval=LONG)
    for i in range(3):
        writer.log({"i": i})
        assert writer.flush(timeout=10)
    assert writer.finish(timeout=10)
    modes = modes_under(root)
    wdir = f"writers/{writer.id}"
    assert {f"{wdir}/meta.json", f"{wdir}/heartbeat.json", f"{wdir}/finish.json", "domain.json"} <= set(modes)
    assert sum(name.endswith(".wal") for name in modes) == 3
    for name, mode in modes.items():
        is_dir = (root / name).is_dir()
        assert mode == (0o700 if is_dir else 0o600), f"{name}: {oct(mode)}"


def test_shared_group_files_are_0660_and_dirs_2770(root: Path, umask) -> None:
    umask(0o077)  # the group bits must not depend on the umask
    writer = distwal.init(dir=root, shared_group=True)
    writer.log({"a": 1})
    assert writer.finish(timeout=10)
    wdir = root / "writers" / writer.id
    assert stat.S_IMODE(os.lstat(root / "writers").st_mode) == 0o2770
    assert stat.S_IMODE(os.lstat(wdir).st_mode) == 0o2770
    for path in wdir.iterdir():
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660, path.name


def test_envelopes_carry_the_writer_fields_exactly(root: Path, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    writer = distwal.init(dir=root, run_id="run-42")
    before = time.time()
    records = [{"step": 1, "loss": 0.25}, {"nested": {"a": [1, None, "x"]}}]
    for record in records:
        writer.log(record)
    after = time.time()
    assert writer.flush(timeout=10)
    envelopes, damage = read_back(root)
    assert damage == []
    assert len(envelopes) == 2
    for seq, (envelope, record) in enumerate(zip(envelopes, records), start=1):
        assert envelope["writer"] == writer.id
        assert envelope["seq"] == seq
        assert before <= envelope["ts"] <= after
        assert envelope["host"] == socket.gethostname()
        assert envelope["pid"] == os.getpid()
        assert envelope["rank"] == 3
        assert envelope["run"] == "run-42"
        assert envelope["data"] == record
        assert envelope["local_rank"] == 1 and envelope["attempt"] == 2
        assert set(envelope) == {"writer", "seq", "ts", "host", "pid", "rank", "run", "data", "local_rank", "attempt"}
    assert envelopes[0]["ts"] <= envelopes[1]["ts"]


def test_meta_describes_the_writer(root: Path) -> None:
    writer = distwal.init(dir=root, run_id="r")
    (found,) = list_writers(str(root))
    assert found.id == writer.id
    assert found.meta is not None
    assert (found.meta.writer, found.meta.pid, found.meta.run) == (writer.id, os.getpid(), "r")
    assert found.meta.domain == writer.domain == orjson.loads((root / "domain.json").read_bytes())["domain"]


def test_heartbeat_is_renewed(root: Path) -> None:
    writer = distwal.init(dir=root, heartbeat_interval=0.02, interval=0.005)
    path = root / "writers" / writer.id / "heartbeat.json"
    first = orjson.loads(path.read_bytes())["n"]
    assert wait_until(lambda: orjson.loads(path.read_bytes())["n"] > first + 1)


def test_a_writer_whose_folder_is_moved_away_continues_in_a_new_folder(root: Path) -> None:
    writer = distwal.init(dir=root, heartbeat_interval=0.02, interval=0.005)
    writer.log({"a": 1})
    assert writer.flush(timeout=10)
    old = writer.id
    os.rename(root / "writers" / old, root / "adopted")  # as a leader that took it for dead
    assert wait_until(lambda: writer.id != old), "the writer did not notice its folder was gone"
    assert writer.log({"a": 2}) == 2  # seqs go on
    assert writer.flush(timeout=10)
    meta = orjson.loads((root / "writers" / writer.id / "meta.json").read_bytes())
    assert (meta["continues"], meta["first_seq"]) == (old, 2)
    assert data_of(root) == [(2, {"a": 2})]
    assert writer.finish(timeout=10)
    assert orjson.loads((root / "writers" / writer.id / "finish.json").read_bytes())["seq"] == 2


# -- init ---------------------------------------------------------------------------------------------------


def test_init_twice_returns_the_same_writer(root: Path) -> None:
    writer = distwal.init(dir=root)
    assert distwal.init(dir=root) is writer
    assert distwal.init() is writer  # from the exported environment
    assert distwal.current() is writer
    assert len(list_writers(str(root))) == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"durability": "sync"}, {"on_full": "drop"}, {"sink": "jsonl:///other.jsonl"}, {"segment_bytes": 4096}],
)
def test_init_with_conflicting_arguments_raises(root: Path, kwargs: dict[str, Any]) -> None:
    writer = distwal.init(dir=root)
    with pytest.raises(distwal.ConfigError):
        distwal.init(dir=root, **kwargs)
    assert distwal.current() is writer and not writer.closed


def test_init_with_another_dir_raises(root: Path, tmp_path: Path) -> None:
    distwal.init(dir=root)
    with pytest.raises(distwal.ConfigError, match="dir"):
        distwal.init(dir=tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()


def test_init_after_finish_starts_a_new_writer(root: Path) -> None:
    first = distwal.init(dir=root)
    first.log({"a": 1})
    assert distwal.finish(timeout=10)
    assert distwal.current() is None
    second = distwal.init(dir=root)
    assert second is not first and second.id != first.id
    assert second.log({"b": 1}) == 1
    assert second.flush(timeout=10)
    by_writer = {(e["writer"], e["seq"]): e["data"] for e in read_back(root)[0]}
    assert by_writer == {(first.id, 1): {"a": 1}, (second.id, 1): {"b": 1}}


def test_init_exports_dir_sink_and_run_id(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    writer = distwal.init(dir="relative-run")
    assert os.environ["DISTWAL_DIR"] == str(tmp_path / "relative-run")
    assert os.environ["DISTWAL_SINK"] == writer.config.sink == f"sqlite:///{tmp_path}/relative-run/collected.db"
    assert os.environ["DISTWAL_RUN_ID"] == writer.config.run_id
    assert writer.config.run_id


def test_init_takes_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DISTWAL_DIR", str(tmp_path / "envrun"))
    monkeypatch.setenv("DISTWAL_DURABILITY", "none")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "elastic-7")
    writer = distwal.init()
    assert (writer.config.dir, writer.config.durability, writer.config.run_id) == (
        str(tmp_path / "envrun"),
        "none",
        "elastic-7",
    )
    assert (tmp_path / "envrun" / "writers" / writer.id).is_dir()


def test_module_shortcuts_without_a_writer(monkeypatch) -> None:
    assert _api._current is None
    assert distwal.current() is None
    assert distwal.flush() is True
    assert distwal.finish() is True


# -- the elector init hands the writer -----------------------------------------------------------------------


class FakeElector:
    """Stands in for a rank's elector: records how the writer started and stopped it."""

    def __init__(self) -> None:
        self.started: list[tuple[str, Any, str]] = []  # (writer id, rank, domain)
        self.stops: list[float] = []

    def start(self, config: Any, identity: Any, writer_id: str, rank: Any, domain: str) -> FakeElector:
        assert identity.pid == os.getpid()
        self.started.append((writer_id, rank, domain))
        return self

    def stop(self, drain_timeout: float = 0.0) -> None:
        self.stops.append(drain_timeout)

    def forget_after_fork(self) -> None:
        raise AssertionError("no fork here")


def test_a_writer_starts_the_elector_it_is_given_and_stops_it_at_finish(root: Path, monkeypatch) -> None:
    from distwal._config import Config
    from distwal.writer.writer import Writer

    monkeypatch.setenv("RANK", "5")
    config = Config.load(dir=root)
    domain = _files.ensure_domain(_prepared(config), Modes.for_config(False))
    elector = FakeElector()
    writer = Writer(config, domain, elector.start)
    assert elector.started == [(writer.id, 5, domain)]
    assert writer.finish(timeout=5)
    assert len(elector.stops) == 1 and 0 < elector.stops[0] <= 5, "finish() did not drain the elector in its time"
    writer.finish(timeout=5)
    assert len(elector.stops) == 1


def _prepared(config: Any) -> str:
    _files.prepare_dir(config.dir, Modes.for_config(False))
    return config.dir


def test_init_gives_a_writer_that_may_lead_the_ranks_elector(root: Path, monkeypatch) -> None:
    import distwal.leader.rank

    elector = FakeElector()
    monkeypatch.setattr(distwal.leader.rank, "start_elector", elector.start)
    distwal.init(dir=root)  # the unit tests' environment disables the sender
    assert elector.started == []
    distwal.finish(timeout=5)
    monkeypatch.delenv("DISTWAL_DISABLE_SENDER")
    writer = distwal.init(dir=root)
    assert [started[0] for started in elector.started] == [writer.id]


def test_a_rank_defers_to_a_preferred_leader_only_while_it_runs_on_this_kernel() -> None:
    from dataclasses import replace

    from distwal.leader.rank import format_preferred, preferred_alive

    me = Identity.of_this_process()
    assert preferred_alive(format_preferred(me), me)  # this process runs
    assert not preferred_alive(format_preferred(replace(me, create_time=me.create_time - 100)), me)  # pid reused
    assert not preferred_alive(format_preferred(replace(me, boot_id="0" * 32)), me)  # another host's
    assert not preferred_alive("not:a:preferred", me)


def test_the_writer_side_imports_no_elector_sender_or_launcher() -> None:
    """init hands the writer its elector; the writer reads formats (cursor book, lease) only."""
    import ast

    import distwal.writer

    allowed_from_leader = {"distwal.leader.cursor", "distwal.leader.election"}
    package = Path(distwal.writer.__file__).parent
    for source in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = "distwal" if node.level == 2 else "distwal.writer" if node.level == 1 else ""
                names = [f"{base}.{node.module}".strip(".") if node.module else base]
                names += [f"{names[0]}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                leader = name.startswith("distwal.leader.") and not name.startswith(tuple(allowed_from_leader))
                assert not leader and not name.startswith("distwal.launch"), f"{source.name} imports {name}"
