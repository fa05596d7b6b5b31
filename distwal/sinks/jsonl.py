"""jsonl:///path/to/file.jsonl: envelopes appended to a local file.

Not deduplicated and not fenced: after a leader change an envelope may appear twice;
(writer, seq) tells the copies apart. Each batch is fsynced before it is acknowledged.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import orjson

from .._exceptions import ConfigError, SinkUnavailable
from .._files import write_all
from ._base import Batch, Sink


class JSONLSink(Sink):
    scheme = "jsonl"

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        try:
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise ConfigError(f"cannot open jsonl sink {self.path}: {exc.strerror}; fix the path") from None

    def write(self, batch: Batch) -> None:
        try:
            write_all(self._fd, batch.ndjson())
            os.fdatasync(self._fd)
        except OSError as exc:
            raise SinkUnavailable(f"jsonl {self.path}: {exc.strerror}") from exc

    def check(self) -> None:
        """Opening the file for appending (in __init__) proved it writable; still a regular file?"""
        try:
            os.fstat(self._fd)
        except OSError as exc:
            raise SinkUnavailable(f"jsonl {self.path}: {exc.strerror}") from None

    def read(
        self, run: str | None = None, rank: int | None = None, since: float | None = None
    ) -> Iterator[dict[str, Any]]:
        return read_envelopes(self.path, run, rank, since)

    def close(self) -> None:
        os.close(self._fd)


ENVELOPE_FIELDS = ("writer", "seq", "ts", "host", "pid", "rank", "run", "local_rank", "attempt", "data")


def read_envelopes(
    path: str, run: str | None = None, rank: int | None = None, since: float | None = None
) -> Iterator[dict[str, Any]]:
    """The envelopes in the JSONL file at `path`, each (writer, seq) once (the file may hold a
    copy after a leader change), ordered by ts, writer, seq. The file is read whole: the order
    needs every line. A missing file holds no records; a torn last line is skipped."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    with f:
        for line in f:
            try:
                envelope = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line torn by a crash mid-append: it was never acknowledged
            if not isinstance(envelope, dict):
                continue
            if run is not None and envelope.get("run") != run:
                continue
            if rank is not None and envelope.get("rank") != rank:
                continue
            ts = envelope.get("ts")
            if since is not None and not (isinstance(ts, (int, float)) and ts >= since):
                continue
            seen.setdefault((str(envelope.get("writer")), int(envelope.get("seq") or 0)),
                            {key: envelope.get(key) for key in ENVELOPE_FIELDS})
    yield from sorted(seen.values(), key=lambda e: (e["ts"] or 0.0, e["writer"], e["seq"]))
