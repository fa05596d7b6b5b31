"""A writer's folder on its own (distwal.writer.folder): claiming writers/<id>/, its marks,
claiming anew after a wrongful adoption or a removed directory, forgetting it after fork."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from distwal import _files
from distwal._config import Config
from distwal._layout import Identity, Modes
from distwal._marks import Finish, Heartbeat, Meta
from distwal.writer.folder import Folder

MODES = Modes.for_config(False)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Folder]:
    monkeypatch.setenv("RANK", "2")
    config = Config.load(dir=tmp_path / "run", run_id="r1")
    _files.prepare_dir(config.dir, MODES)
    made = Folder(config, _files.ensure_domain(config.dir, MODES), MODES)
    made.claim(Identity.of_this_process())
    yield made
    made.close()


def read(folder: Folder, name: str) -> dict[str, Any]:
    return orjson.loads((Path(folder.config.dir) / "writers" / folder.id / name).read_bytes())


def test_claim_makes_the_folder_with_its_meta_and_no_marks_yet(folder: Folder) -> None:
    assert folder.claimed
    meta = Meta.parse(read(folder, "meta.json"))
    assert meta == folder.meta
    assert (meta.writer, meta.pid, meta.rank, meta.run, meta.first_seq, meta.continues) == (
        folder.id, os.getpid(), 2, "r1", 1, None)
    assert sorted(os.listdir(Path(folder.config.dir) / "writers" / folder.id)) == ["meta.json"]


def test_heartbeat_and_finish_marks_say_logged_and_durable_apart(folder: Folder) -> None:
    folder.write_heartbeat("live", 9, 7, (0, 4096), 1, None)
    folder.write_heartbeat("live", 10, 8, (1, 64), 1, "No space left on device (segment)")
    beat = Heartbeat.parse(read(folder, "heartbeat.json"))
    assert beat is not None
    assert (beat.n, beat.state, beat.logged_seq, beat.durable_seq) == (2, "live", 10, 8)
    assert (beat.durable_segment, beat.durable_offset, beat.error) == (1, 64, "No space left on device (segment)")
    assert not folder.finished
    folder.write_finish(8, (1, 64), 1, 2, {"reason": "finished"})
    mark = Finish.parse(read(folder, "finish.json"))
    assert mark is not None and (mark.durable_seq, mark.segment, mark.offset, mark.lost) == (8, 1, 64, 2)
    assert folder.finished


def test_a_moved_folder_is_seen_adopted_and_reclaimed_under_a_new_id(folder: Folder) -> None:
    assert not folder.adopted()
    old = folder.id
    writers = Path(folder.config.dir) / "writers"
    os.rename(writers / old, Path(folder.config.dir) / "aside")
    assert folder.adopted()
    folder.reclaim(first_seq=41)
    assert folder.id != old and not folder.adopted()
    meta = Meta.parse(read(folder, "meta.json"))
    assert meta is not None and (meta.continues, meta.first_seq) == (old, 41)
    assert sorted(os.listdir(writers)) == [folder.id]


def test_a_removed_directory_is_recreated_with_a_new_domain(folder: Folder) -> None:
    old_domain = folder.domain
    shutil.rmtree(folder.config.dir)
    assert folder.adopted()
    folder.reclaim(first_seq=3)
    domain = orjson.loads((Path(folder.config.dir) / "domain.json").read_bytes())["domain"]
    assert folder.domain == domain != old_domain
    assert Meta.parse(read(folder, "meta.json")).domain == domain


def test_forget_drops_the_descriptors_and_leaves_the_files(folder: Folder) -> None:
    folder.write_finish(0, (0, 0), 0, 0, {"reason": "finished"})
    dir_fd = folder.dir_fd
    folder.forget()
    assert not folder.claimed and folder.segments is None and not folder.finished
    with pytest.raises(OSError):
        os.fstat(dir_fd)
    assert (Path(folder.config.dir) / "writers" / folder.id / "finish.json").is_file()
