"""How a writer ended (distwal._ends): the notes a process keeps, the end its finish mark
gets, and what a reader infers (lost, first_failure). Real processes: tests/process/test_ends.py."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest

import distwal
from distwal import _ends, _files
from distwal._ends import EndNotes, first_failure, recorded_end, writer_end
from distwal._marks import Finish
from distwal._record import writer_tag
from distwal._segment import last_ts_on_disk


def test_main_thread_exception_is_the_end_with_type_and_first_line():
    notes = EndNotes()
    notes.note_exception(RuntimeError, RuntimeError("boom at 40\nsecond line"), None)
    end = notes.end_at_exit()
    assert (end["reason"], end["detail"], end["code"], end["signal"]) == ("exception", "RuntimeError: boom at 40", 1, None)
    assert abs(end["ts"] - time.time()) < 5


def test_exception_type_outside_builtins_is_named_with_its_module():
    assert _ends.describe_exception(orjson.JSONDecodeError, None) == "orjson.JSONDecodeError"
    assert _ends.describe_exception(ValueError, ValueError("")) == "ValueError"
    assert len(_ends.describe_exception(ValueError, ValueError("x" * 1000))) == 200


def test_keyboard_interrupt_is_the_signal_sigint():
    notes = EndNotes()
    notes.note_exception(KeyboardInterrupt, KeyboardInterrupt(), None)
    assert notes.end_at_exit()["reason"] == "signal" and notes.end_at_exit()["signal"] == "SIGINT"


def test_the_first_note_wins_a_signal_is_not_hidden_by_the_exception_its_handler_raises():
    notes = EndNotes()
    notes.note_signal(signal.SIGTERM)
    notes.note_exception(SystemError, SystemError("raised by a handler"), None)
    end = notes.end_at_exit()
    assert (end["reason"], end["signal"], end["detail"]) == ("signal", "SIGTERM", "SIGTERM")


@pytest.mark.parametrize("code, reason, detail", [(0, "finished", "exit code 0"), (3, "exit", "exit code 3")])
def test_exit_code_decides_between_finished_and_exit(code, reason, detail):
    notes = EndNotes()
    notes.exit_code, notes.exit_ts = code, 123.0
    assert notes.end_at_exit() == {"reason": reason, "detail": detail, "code": code, "signal": None, "ts": 123.0}


def test_sys_exit_codes_as_python_computes_them():
    assert [_ends.exit_code_of(c) for c in (None, 0, 3, "message")] == [0, 0, 3, 1]


def test_thread_exception_is_the_end_only_when_the_process_otherwise_finished():
    notes = EndNotes()
    worker = threading.Thread(name="loader")
    notes.note_exception(ZeroDivisionError, ZeroDivisionError("division by zero"), worker)
    end = notes.end_at_exit()
    assert (end["reason"], end["detail"], end["code"]) == (
        "exception", "ZeroDivisionError: division by zero (in thread loader)", 0)
    notes.exit_code = 4  # then the process exits with a code of its own: that is its end
    assert notes.end_at_exit()["reason"] == "exit" and notes.end_at_exit()["code"] == 4


def test_in_a_worker_finalizer_the_exception_being_raised_is_the_end():
    """multiprocessing workers run their finalizers while run()'s exception propagates."""
    notes = EndNotes()
    ends = []
    with pytest.raises(ValueError):
        try:
            raise ValueError("in proc")
        finally:
            ends.append(notes.end_at_exit())
    with pytest.raises(SystemExit):
        try:
            raise SystemExit(5)
        finally:
            ends.append(EndNotes().end_at_exit())
    assert [(e["reason"], e["detail"], e["code"]) for e in ends] == [
        ("exception", "ValueError: in proc", 1), ("exit", "exit code 5", 5)]


def test_after_fork_the_child_forgets_the_parents_notes():
    notes = EndNotes()
    notes.note_signal(signal.SIGTERM)
    notes.note_exception(ValueError, ValueError("x"), threading.Thread(name="t"))
    notes.exit_code = 2
    notes.after_fork_in_child()
    assert notes.end_at_exit()["reason"] == "finished"


# -- what a reader infers ------------------------------------------------------------------------------


def _end_of_mark(raw: dict) -> dict:
    """The end status shows for a finish mark holding `raw`, read the way every reader reads it."""
    return writer_end(Finish.parse(raw), gone=True, last_sign=lambda: pytest.fail("a finish mark says it all"))


def test_recorded_end_of_marks_old_new_and_damaged():
    assert _end_of_mark({"seq": 3, "ts": 10.0})["reason"] == "finished"  # written before ends existed
    assert _end_of_mark({"ts": 10.0, "end": {"reason": "nonsense"}}) == {
        "reason": "finished", "detail": "finish mark", "code": None, "signal": None, "ts": 10.0}
    end = _end_of_mark({"ts": 10.0, "end": {"reason": "exit", "detail": "exit code 3", "code": 3, "signal": 7,
                                            "ts": True}})
    assert end == {"reason": "exit", "detail": "exit code 3", "code": 3, "signal": None, "ts": 10.0}
    assert recorded_end({"reason": "signal", "detail": "SIGTERM", "signal": "SIGTERM", "ts": 5.0})["ts"] == 5.0


def test_writer_end_is_null_while_running_and_lost_with_the_last_sign_once_gone():
    assert writer_end(None, gone=False, last_sign=lambda: pytest.fail("not asked while running")) is None
    lost = writer_end(None, gone=True, last_sign=lambda: 42.5)
    assert (lost["reason"], lost["ts"], lost["code"], lost["signal"]) == ("lost", 42.5, None, None)
    finished = _end_of_mark({"end": _ends.make_end("signal", "SIGTERM", signal="SIGTERM", ts=7.0)})
    assert finished["reason"] == "signal" and finished["ts"] == 7.0


def _row(writer: str, rank: int | None, reason: str | None, ts: float | None) -> dict:
    end = None if reason is None else {"reason": reason, "detail": reason, "code": None, "signal": None, "ts": ts}
    return {"writer": writer, "rank": rank, "host": "h", "end": end}


def test_first_failure_is_the_earliest_end_that_is_not_finished():
    rows = [
        _row("a", 0, "signal", 30.0),  # torn down after the failure
        _row("b", 1, "exception", 20.0),  # the one that failed
        _row("c", 2, "finished", 10.0),  # finished earlier: not a failure
        _row("d", 3, None, None),  # still running
        _row("e", 4, "lost", None),  # time unknown: sorts last
    ]
    assert first_failure(rows) == {"writer": "b", "rank": 1, "host": "h", "reason": "exception",
                                   "detail": "exception", "ts": 20.0}
    assert first_failure([rows[2], rows[3]]) is None
    assert first_failure([rows[4]])["writer"] == "e"


def test_last_record_time_on_disk_is_the_last_logged(tmp_path: Path):
    w = distwal.init(dir=str(tmp_path / "run"), durability="sync")
    before = time.time()
    for i in range(5):
        w.log({"i": i})
    after = time.time()
    fd = _files.open_dir(str(tmp_path / "run" / "writers" / w.id))
    try:
        last = last_ts_on_disk(fd, writer=writer_tag(w.id))
    finally:
        os.close(fd)
    assert last is not None and before <= last <= after
    w.finish()


def test_finish_marks_finished_and_status_shows_it(tmp_path: Path):
    w = distwal.init(dir=str(tmp_path / "run"))
    w.log({"i": 1})
    w.finish()
    [row] = distwal.status(tmp_path / "run")["writers"]
    assert row["state"] == "finished" and row["end"]["reason"] == "finished" and row["end"]["detail"] == "finish()"
    assert distwal.status(tmp_path / "run")["first_failure"] is None


def test_finish_in_a_finally_block_records_the_exception_being_raised(tmp_path: Path):
    w = distwal.init(dir=str(tmp_path / "run"))
    w.log({"i": 1})
    with pytest.raises(RuntimeError):
        try:
            raise RuntimeError("boom at 40")
        finally:
            w.finish()
    [row] = distwal.status(tmp_path / "run")["writers"]
    assert (row["end"]["reason"], row["end"]["detail"]) == ("exception", "RuntimeError: boom at 40")
    assert distwal.status(tmp_path / "run")["first_failure"]["writer"] == w.id
