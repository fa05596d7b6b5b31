"""Directory layout (distwal._layout): names, writer ids, modes, atomic writes, refusing links."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from distwal import ConfigError, LayoutError, _files
from distwal._files import ensure_domain, make_subdir, open_dir, prepare_dir, read_json, write_atomic
from distwal._layout import (
    Identity,
    Modes,
    format_deadletter_name,
    format_quarantine_name,
    format_segment_name,
    format_tombstone_name,
    format_writer_id,
    is_writer_id,
    parse_quarantine_name,
    parse_segment_name,
    parse_tombstone_name,
)

PRIVATE = Modes.for_config(shared_group=False)
SHARED = Modes.for_config(shared_group=True)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = open_dir(str(tmp_path))
    yield fd
    os.close(fd)


# -- names -------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_segment_name_round_trips(index: int) -> None:
    name = format_segment_name(index)
    assert re.fullmatch(r"[0-9a-f]{8}\.wal", name)
    assert parse_segment_name(name) == index


@given(st.lists(st.integers(min_value=0, max_value=0xFFFFFFFF), min_size=2, max_size=20, unique=True))
def test_segment_names_sort_like_their_indexes(indexes: list[int]) -> None:
    assert sorted(format_segment_name(i) for i in indexes) == [format_segment_name(i) for i in sorted(indexes)]


@pytest.mark.parametrize(
    "name",
    ["0000000.wal", "000000000.wal", "0000000A.wal", "0000000g.wal", "00000000.wal.tmp", ".00000000.wal", "00000000"],
)
def test_parse_segment_name_rejects_other_names(name: str) -> None:
    assert parse_segment_name(name) is None


WRITER = "node.a_1-0123abcd-4026531836-42-1700000000123-deadbeef"


def test_tombstone_names_round_trip_and_refuse_other_files() -> None:
    assert format_tombstone_name(WRITER) == f"{WRITER}.json"
    assert parse_tombstone_name(format_tombstone_name(WRITER)) == WRITER
    for name in ("t.json", f"{WRITER}.json.tmp", f".{WRITER}.json.1.ab.tmp", WRITER, f"{WRITER}.ndjson"):
        assert parse_tombstone_name(name) is None, name


@given(st.integers(min_value=0, max_value=0xFFFFFFFF), st.integers(min_value=0, max_value=2**40))
def test_quarantine_names_round_trip(segment: int, start: int) -> None:
    name = format_quarantine_name(WRITER, segment, start)
    assert parse_quarantine_name(name) == (WRITER, segment, start)


@pytest.mark.parametrize("name", [f"{WRITER}.0000000.5.bin", "x.00000001.5.bin", f"{WRITER}.00000001.-5.bin",
                                  f"{WRITER}.00000001.5.bin.tmp"])
def test_parse_quarantine_name_rejects_other_names(name: str) -> None:
    assert parse_quarantine_name(name) is None


def test_dead_letters_are_one_file_per_writer() -> None:
    assert format_deadletter_name(WRITER) == f"{WRITER}.ndjson"


_hosts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=100)
_identities = st.builds(
    Identity,
    host=_hosts,
    boot_id=st.text("0123456789abcdef", min_size=8, max_size=32),
    pid_ns=st.integers(min_value=0, max_value=2**32),
    pid=st.integers(min_value=1, max_value=2**22),
    create_time=st.floats(min_value=0, max_value=4e9),
)


@given(_identities, st.text("0123456789abcdef", min_size=8, max_size=8))
def test_formatted_writer_ids_are_valid_and_carry_the_identity(identity: Identity, suffix: str) -> None:
    writer_id = format_writer_id(identity, suffix)
    assert is_writer_id(writer_id), writer_id
    assert "/" not in writer_id and writer_id not in (".", "..")
    host, boot, pid_ns, pid, start_ms, tail = writer_id.rsplit("-", 5)
    assert (boot, int(pid_ns), int(pid), int(start_ms), tail) == (
        identity.boot_id[:8],
        identity.pid_ns,
        identity.pid,
        int(identity.create_time * 1000),
        suffix,
    )
    assert 1 <= len(host) <= 64 and re.fullmatch(r"[A-Za-z0-9._]+", host)


def test_writer_id_of_this_process_is_valid_and_unique_per_call() -> None:
    identity = Identity.of_this_process()
    assert identity.pid == os.getpid()
    first, second = format_writer_id(identity), format_writer_id(identity)
    assert is_writer_id(first) and is_writer_id(second)
    assert first != second  # the random suffix tells two writers of one process apart


def test_writer_id_sanitizes_the_host() -> None:
    identity = Identity("node 7/gpu:0-a", "0123456789abcdef", 4026531836, 42, 1700000000.5)
    assert format_writer_id(identity, "deadbeef") == "node_7_gpu_0_a-01234567-4026531836-42-1700000000500-deadbeef"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "12345",  # a bare pid
        "meta.json",
        "..",
        "host-01234567-1-2-3-DEADBEEF",  # suffix must be lowercase hex
        "host-0123456-1-2-3-deadbeef",  # boot id too short
        "host-01234567-1-2-3-deadbee",  # suffix too short
        "host-01234567-x-2-3-deadbeef",
        "ho/st-01234567-1-2-3-deadbeef",
        "host-01234567-1-2-3-deadbeef/..",
        "h" * 65 + "-01234567-1-2-3-deadbeef",
    ],
)
def test_is_writer_id_rejects_other_names(name: str) -> None:
    assert not is_writer_id(name)


def test_is_writer_id_rejects_a_trailing_newline() -> None:
    assert not is_writer_id("host-01234567-1-2-3-deadbeef\n")


def test_parse_segment_name_rejects_a_trailing_newline() -> None:
    assert parse_segment_name("00000000.wal\n") is None


# -- modes and atomic writes -----------------------------------------------------------------


def test_modes_for_config() -> None:
    assert (PRIVATE.file, PRIVATE.dir) == (0o600, 0o700)
    assert (SHARED.file, SHARED.dir) == (0o660, 0o2770)


@pytest.mark.parametrize("mask", [0o000, 0o077])
@pytest.mark.parametrize("modes, expected", [(PRIVATE, 0o600), (SHARED, 0o660)])
def test_write_atomic_creates_exact_modes_and_leaves_no_temp_files(
    dir_fd: int, tmp_path: Path, umask, mask: int, modes: Modes, expected: int
) -> None:
    umask(mask)
    write_atomic(dir_fd, "meta.json", b'{"a":1}', modes)
    write_atomic(dir_fd, "heartbeat.json", b'{"n":1}', modes, durable=False)
    assert sorted(os.listdir(tmp_path)) == ["heartbeat.json", "meta.json"]
    assert (tmp_path / "meta.json").read_bytes() == b'{"a":1}'
    assert (tmp_path / "heartbeat.json").read_bytes() == b'{"n":1}'
    assert mode_of(tmp_path / "meta.json") == expected
    assert mode_of(tmp_path / "heartbeat.json") == expected


def test_write_atomic_replaces_the_file_with_a_new_inode(dir_fd: int, tmp_path: Path) -> None:
    write_atomic(dir_fd, "meta.json", b"old", PRIVATE)
    with open(tmp_path / "meta.json", "rb") as reader:  # a reader that opened the old file ...
        write_atomic(dir_fd, "meta.json", b"new", PRIVATE)
        assert reader.read() == b"old"  # ... keeps seeing it whole, never a mix
    assert (tmp_path / "meta.json").read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["meta.json"]


def test_write_atomic_replaces_a_planted_symlink_instead_of_writing_through_it(dir_fd: int, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, tmp_path / "meta.json")
    write_atomic(dir_fd, "meta.json", b"{}", PRIVATE)
    assert victim.read_bytes() == b"precious"
    assert stat.S_ISREG(os.lstat(tmp_path / "meta.json").st_mode)
    assert (tmp_path / "meta.json").read_bytes() == b"{}"


def test_write_atomic_failing_rename_removes_its_temp_file(dir_fd: int, tmp_path: Path) -> None:
    (tmp_path / "meta.json").mkdir()
    (tmp_path / "meta.json" / "occupied").write_bytes(b"")  # a non-empty directory cannot be replaced
    with pytest.raises(OSError):
        write_atomic(dir_fd, "meta.json", b"{}", PRIVATE)
    assert os.listdir(tmp_path) == ["meta.json"]


def test_make_subdir_has_exact_mode_whatever_the_umask(dir_fd: int, tmp_path: Path, umask) -> None:
    umask(0o077)
    os.close(make_subdir(dir_fd, "shared", SHARED))
    os.close(make_subdir(dir_fd, "private", PRIVATE))
    assert mode_of(tmp_path / "shared") == 0o2770
    assert mode_of(tmp_path / "private") == 0o700


# -- reading without following ---------------------------------------------------------------


def test_read_json_reads_a_regular_file(dir_fd: int, tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_bytes(orjson.dumps({"writer": "w", "n": [1, 2]}))
    assert read_json(dir_fd, "meta.json") == {"writer": "w", "n": [1, 2]}
    assert read_json(dir_fd, "missing.json") is None


def test_read_json_refuses_a_symlink(dir_fd: int, tmp_path: Path) -> None:
    (tmp_path / "target.json").write_bytes(b'{"planted": true}')
    os.symlink(tmp_path / "target.json", tmp_path / "meta.json")
    assert read_json(dir_fd, "target.json") == {"planted": True}  # control: the target itself is readable
    assert read_json(dir_fd, "meta.json") is None


def test_read_json_refuses_a_fifo_without_blocking(dir_fd: int, tmp_path: Path) -> None:
    fifo = tmp_path / "heartbeat.json"
    os.mkfifo(fifo)
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(read_json(dir_fd, "heartbeat.json")), daemon=True)
    thread.start()
    thread.join(5.0)
    if thread.is_alive():
        # Release the blocked open so the thread can end, then fail.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5.0)
        pytest.fail("read_json blocked on a fifo")
    assert result == [None]


def test_read_json_refuses_a_directory(dir_fd: int, tmp_path: Path) -> None:
    (tmp_path / "meta.json").mkdir()
    assert read_json(dir_fd, "meta.json") is None


def test_read_json_raises_layout_error_on_bad_json_and_oversize(dir_fd: int, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_bytes(b'{"torn": ')
    (tmp_path / "big.json").write_bytes(b'"' + b"x" * _files.MAX_SMALL_FILE + b'"')
    with pytest.raises(LayoutError, match="bad.json"):
        read_json(dir_fd, "bad.json")
    with pytest.raises(LayoutError, match="big.json"):
        read_json(dir_fd, "big.json")


def test_open_dir_refuses_a_symlinked_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    os.close(open_dir(str(tmp_path / "real")))
    with pytest.raises(OSError):
        open_dir(str(tmp_path / "link"))


# -- prepare_dir ---------------------------------------------------------------------------------


def test_prepare_dir_creates_the_directory_and_writers(tmp_path: Path, umask) -> None:
    umask(0o022)
    root = tmp_path / "a" / "b"
    prepare_dir(str(root), PRIVATE)
    assert mode_of(root) == 0o700
    assert mode_of(root / "writers") == 0o700
    prepare_dir(str(root), PRIVATE)  # idempotent
    assert os.listdir(root) == ["writers"]


def test_prepare_dir_shared_group_gives_the_group_the_root_too(tmp_path: Path, umask) -> None:
    umask(0o022)
    root = tmp_path / "shared"
    prepare_dir(str(root), SHARED)
    assert mode_of(root / "writers") == 0o2770
    assert mode_of(root) == 0o2770


def test_prepare_dir_refuses_a_world_writable_non_sticky_dir(tmp_path: Path) -> None:
    root = tmp_path / "open"
    root.mkdir()
    os.chmod(root, 0o777)
    with pytest.raises(ConfigError) as excinfo:
        prepare_dir(str(root), PRIVATE)
    assert str(root) in str(excinfo.value)
    assert "world-writable" in str(excinfo.value)
    assert not (root / "writers").exists()


def test_prepare_dir_accepts_a_world_writable_sticky_dir(tmp_path: Path) -> None:
    root = tmp_path / "tmp-like"
    root.mkdir()
    os.chmod(root, 0o1777)
    prepare_dir(str(root), PRIVATE)
    assert (root / "writers").is_dir()


def _as_nobody(call: Any) -> str:
    """Run `call()` in a forked child that is uid/gid 65534; its ConfigError text, or 'no error'."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root for good, report, leave without cleanup
        try:
            os.close(read_fd)
            os.setgid(65534)
            os.setuid(65534)
            try:
                call()
                message = "no error"
            except ConfigError as exc:
                message = "ConfigError: " + str(exc)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                message = f"{type(exc).__name__}: {exc}"
            os.write(write_fd, message.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    return message


def test_prepare_dir_refuses_an_unwritable_dir(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root may write anywhere: ask as nobody, in a dir nobody may reach
        base = Path(tempfile.mkdtemp(dir="/tmp"))
        try:
            os.chmod(base, 0o755)
            root = base / "readonly"
            root.mkdir(mode=0o500)
            os.chown(root, 65534, 65534)
            message = _as_nobody(lambda: prepare_dir(str(root), PRIVATE))
        finally:
            shutil.rmtree(base)
    else:
        root = tmp_path / "readonly"
        root.mkdir()
        os.chmod(root, 0o500)
        try:
            with pytest.raises(ConfigError) as excinfo:
                prepare_dir(str(root), PRIVATE)
            message = "ConfigError: " + str(excinfo.value)
        finally:
            os.chmod(root, 0o700)
    assert message.startswith("ConfigError: ") and str(root) in message and "\n" not in message, message


def test_prepare_dir_refuses_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"")
    with pytest.raises(ConfigError) as excinfo:
        prepare_dir(str(path), PRIVATE)
    assert str(path) in str(excinfo.value)


def test_prepare_dir_refuses_a_planted_writers_symlink(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "writers")
    with pytest.raises(ConfigError) as excinfo:
        prepare_dir(str(root), PRIVATE)
    assert "writers" in str(excinfo.value)


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    root = tmp_path / "open"
    root.mkdir()
    os.chmod(root, 0o777)
    with pytest.raises(ConfigError) as excinfo:
        prepare_dir(str(root), PRIVATE)
    assert "\n" not in str(excinfo.value)


# -- ensure_domain -----------------------------------------------------------------------------


def test_ensure_domain_is_stable_across_calls(tmp_path: Path) -> None:
    prepare_dir(str(tmp_path / "run"), PRIVATE)
    first = ensure_domain(str(tmp_path / "run"), PRIVATE)
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert ensure_domain(str(tmp_path / "run"), PRIVATE) == first
    assert sorted(os.listdir(tmp_path / "run")) == ["domain.json", "writers"]  # no temp file left
    assert mode_of(tmp_path / "run" / "domain.json") == 0o600


def test_ensure_domain_differs_between_directories(tmp_path: Path) -> None:
    for name in ("a", "b"):
        prepare_dir(str(tmp_path / name), PRIVATE)
    assert ensure_domain(str(tmp_path / "a"), PRIVATE) != ensure_domain(str(tmp_path / "b"), PRIVATE)


def test_ensure_domain_keeps_an_existing_domain(tmp_path: Path) -> None:
    (tmp_path / "domain.json").write_bytes(orjson.dumps({"domain": "abc123", "version": 1}))
    assert ensure_domain(str(tmp_path), PRIVATE) == "abc123"


def test_ensure_domain_refuses_a_damaged_file(tmp_path: Path) -> None:
    (tmp_path / "domain.json").write_bytes(b'{"domain": 5}')
    with pytest.raises(LayoutError, match="domain.json"):
        ensure_domain(str(tmp_path), PRIVATE)


def test_ensure_domain_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    (tmp_path / "planted.json").write_bytes(orjson.dumps({"domain": "attacker"}))
    os.symlink(tmp_path / "planted.json", tmp_path / "domain.json")
    with pytest.raises(LayoutError):
        ensure_domain(str(tmp_path), PRIVATE)
    assert (tmp_path / "planted.json").read_bytes() == orjson.dumps({"domain": "attacker"})
