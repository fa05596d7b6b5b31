"""The cursor book (distwal._cursor): how far the sink acknowledged each writer.

Damage never stops a leader: an unreadable book starts over (at-least-once, the sink
deduplicates), and a bad entry loses only that writer's cursor.
"""

from __future__ import annotations

import json
import os

import pytest

from distwal._cursor import CURSORS, Position, read_cursors, write_cursors
from distwal._layout import Modes

MODES = Modes.for_config(False)


@pytest.fixture
def root(tmp_path) -> str:
    return str(tmp_path)


def test_a_book_round_trips_every_field_including_dead_letters(root):
    book = {
        "w-a": Position(seq=120, segment=3, offset=4096),
        "w-b": Position(seq=7, segment=0, offset=512, dead=2, dead_max=6, dead_min=5),
    }
    write_cursors(root, book, epoch=4, modes=MODES)
    assert read_cursors(root) == book
    with open(os.path.join(root, CURSORS)) as f:
        saved = json.load(f)
    assert saved["epoch"] == 4
    assert saved["writers"]["w-b"] == {"seq": 7, "segment": 0, "offset": 512, "dead": 2, "dead_max": 6, "dead_min": 5}


def test_no_book_is_an_empty_book(root):
    assert read_cursors(root) == {}


@pytest.mark.parametrize("damage", [b"", b"{not json", b"[1, 2]", b'{"epoch": 3}', b'{"writers": [1]}', b"\xff\xfe"])
def test_a_damaged_book_starts_over_instead_of_failing(root, damage):
    with open(os.path.join(root, CURSORS), "wb") as f:
        f.write(damage)
    assert read_cursors(root) == {}


def test_a_bad_entry_loses_only_its_own_cursor(root):
    body = {"epoch": 2, "writers": {
        "good": {"seq": 5, "segment": 1, "offset": 64},
        "not-a-number": {"seq": "many", "segment": 1, "offset": 64},
        "not-a-dict": 17,
        "unknown-fields": {"seq": 3, "later_field": 9},
    }}
    with open(os.path.join(root, CURSORS), "w") as f:
        json.dump(body, f)
    assert read_cursors(root) == {"good": Position(5, 1, 64), "unknown-fields": Position(seq=3)}


def test_a_book_written_by_an_older_epoch_is_where_the_next_leader_resumes(root):
    write_cursors(root, {"w": Position(seq=50, segment=2, offset=100)}, epoch=1, modes=MODES)
    resumed = read_cursors(root)  # the leader of epoch 2 starts from epoch 1's acknowledgements
    assert resumed == {"w": Position(seq=50, segment=2, offset=100)}
    write_cursors(root, {**resumed, "w": Position(seq=60, segment=2, offset=900)}, epoch=2, modes=MODES)
    with open(os.path.join(root, CURSORS)) as f:
        assert json.load(f)["epoch"] == 2
    assert read_cursors(root)["w"].seq == 60


def test_a_new_book_replaces_the_old_one_whole(root):
    write_cursors(root, {"gone": Position(seq=1), "kept": Position(seq=2)}, epoch=1, modes=MODES)
    write_cursors(root, {"kept": Position(seq=3)}, epoch=1, modes=MODES)
    assert read_cursors(root) == {"kept": Position(seq=3)}
    assert [name for name in os.listdir(root) if name != CURSORS] == []  # no temp file left behind
