"""jsonl:///path/to/file.jsonl: envelopes appended to a local file.

Not deduplicated and not fenced: after a leader change an envelope may appear twice;
(writer, seq) tells the copies apart. Each batch is fsynced before it is acknowledged.
"""

from __future__ import annotations

import os

from .._exceptions import ConfigError, SinkUnavailable
from .._layout import write_all
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

    def close(self) -> None:
        os.close(self._fd)
