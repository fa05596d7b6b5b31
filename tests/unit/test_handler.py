"""distwal.LoggingHandler: stdlib logging records, logged through a distwal writer.

Records are read back from the writer's files (tests/unit/conftest.py disables the sender,
so nothing moves them away). The handler must never raise into the caller's logging call.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import distwal
from distwal._folder import iter_envelopes, list_writers


def records_in(root: Path) -> list[dict[str, Any]]:
    out = []
    for writer in list_writers(str(root)):
        for _, _, raw in iter_envelopes(writer):
            out.append(orjson.loads(raw)["data"])
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def logger(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    """A fresh logger (no propagation to the root logger) named after the test."""
    log = logging.getLogger(f"tests.handler.{request.node.name}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)


class FakeWriter:
    """Stands in for a writer: keeps what `log` was given, serialized as a writer would."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def log(self, record: dict[str, Any]) -> int:
        self.entries.append(orjson.loads(orjson.dumps(record)))  # as a real writer would serialize it
        return len(self.entries)


def test_records_carry_level_logger_message_with_args_and_exception(root, logger):
    writer = distwal.init(dir=root, durability="sync")
    logger.addHandler(distwal.LoggingHandler(writer=writer))
    logger.info("epoch %d of %s done", 3, "warmup")
    logger.debug("plain %s", {"k": 1})
    try:
        raise ValueError("bad batch 17")
    except ValueError:
        logger.exception("step %d failed", 42)
    writer.flush()
    got = records_in(root)
    assert [(r["type"], r["level"], r["logger"], r["message"]) for r in got] == [
        ("log", "INFO", logger.name, "epoch 3 of warmup done"),
        ("log", "DEBUG", logger.name, "plain {'k': 1}"),
        ("log", "ERROR", logger.name, "step 42 failed"),
    ]
    assert "exception" not in got[0] and "exception" not in got[1]
    exc = got[2]["exception"]
    assert exc.startswith("Traceback (most recent call last):") and exc.rstrip().endswith("ValueError: bad batch 17"), exc
    assert got[0]["lineno"] > 0 and got[0]["module"] == "test_handler" and isinstance(got[0]["created"], float)


def test_without_a_writer_argument_the_handler_uses_the_current_writer_from_the_environment(root, logger, monkeypatch):
    monkeypatch.setenv("DISTWAL_DIR", str(root))
    monkeypatch.setenv("DISTWAL_DURABILITY", "sync")
    logger.addHandler(distwal.LoggingHandler())
    logger.warning("disk %d%% full", 91)
    writer = distwal.current()
    assert writer is not None and writer.config.dir == str(root)
    writer.flush()
    assert [(r["level"], r["message"]) for r in records_in(root)] == [("WARNING", "disk 91% full")]


def test_a_formatter_shapes_the_message(logger):
    fake = FakeWriter()
    handler = distwal.LoggingHandler(writer=fake)
    handler.setFormatter(logging.Formatter("%(levelname)s|%(name)s|%(message)s"))
    logger.addHandler(handler)
    logger.error("x=%s", 5)
    assert fake.entries[0]["message"] == f"ERROR|{logger.name}|x=5"


@pytest.mark.parametrize("name", ["distwal", "distwal.sender", "distwal.cli.run"])
def test_records_of_the_distwal_logger_are_skipped(name):
    fake = FakeWriter()
    handler = distwal.LoggingHandler(writer=fake)
    ours = logging.getLogger(name)
    saved = (ours.level, ours.propagate)
    ours.addHandler(handler)
    ours.setLevel(logging.DEBUG)
    try:
        ours.warning("from distwal itself")
        logging.getLogger("distwal_user").addHandler(handler)  # only the distwal package is skipped
        logging.getLogger("distwal_user").warning("from a user's logger")
    finally:
        ours.removeHandler(handler)
        logging.getLogger("distwal_user").removeHandler(handler)
        ours.setLevel(saved[0])
    assert [e["logger"] for e in fake.entries] == ["distwal_user"], fake.entries


class ErrorCatcher(distwal.LoggingHandler):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.errors: list[tuple[logging.LogRecord, Any]] = []

    def handleError(self, record: logging.LogRecord) -> None:
        self.errors.append((record, sys.exc_info()[1]))


def test_emit_on_a_closed_writer_calls_handle_error_and_never_raises(root, logger):
    writer = distwal.init(dir=root)
    handler = ErrorCatcher(writer=writer)
    logger.addHandler(handler)
    logger.info("before")
    writer.finish(timeout=5)
    logger.info("after %s", "finish")  # must not raise ClosedError into the caller
    assert len(handler.errors) == 1, handler.errors
    record, exc = handler.errors[0]
    assert record.getMessage() == "after finish" and isinstance(exc, distwal.ClosedError), handler.errors
    assert [r["message"] for r in records_in(root)] == ["before"]


def test_emit_of_a_failing_message_calls_handle_error(logger):
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no str")

    fake = FakeWriter()
    handler = ErrorCatcher(writer=fake)
    # handed to the handler directly: pytest's own capture handler would fail the test first
    for msg, args in (("%s", (Broken(),)), ("%d", ("not a number",))):
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, args, None)
        handler.handle(record)             # getMessage raises inside emit
    assert fake.entries == []
    assert [type(exc).__name__ for _, exc in handler.errors] == ["RuntimeError", "TypeError"], handler.errors


def test_default_handle_error_reports_on_stderr_without_raising(root, logger, capsys, monkeypatch):
    """The stock handleError (logging.raiseExceptions=True) prints; it never propagates."""
    monkeypatch.setattr(logging, "raiseExceptions", True)
    writer = distwal.init(dir=root)
    logger.addHandler(distwal.LoggingHandler(writer=writer))
    writer.finish(timeout=5)
    logger.error("lost")
    err = capsys.readouterr().err
    assert "--- Logging error ---" in err and "ClosedError" in err, err
