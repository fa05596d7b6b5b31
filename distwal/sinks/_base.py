"""The sink interface: where shipped records end up. Sinks never see cursors or locks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

from .._envelope import envelopes


@dataclass(frozen=True)
class Chunk:
    """Contiguous records of one writer: seq first_seq + i was logged at ts[i] as lines[i]."""

    writer: str
    meta: Mapping[str, Any]  # host, pid, rank, run, local_rank, attempt (Meta.who)
    prefix: bytes  # the envelope's constant head, `{"writer":...,"attempt":...,`
    first_seq: int
    ts: Sequence[float]
    lines: Sequence[bytes]

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.lines) - 1

    def split(self, at: int) -> tuple[Chunk, Chunk]:
        head = Chunk(self.writer, self.meta, self.prefix, self.first_seq, self.ts[:at], self.lines[:at])
        tail = Chunk(self.writer, self.meta, self.prefix, self.first_seq + at, self.ts[at:], self.lines[at:])
        return head, tail

    def envelopes(self) -> Iterator[bytes]:
        return iter(self._lines(b""))

    def _lines(self, end: bytes) -> list[bytes]:
        """Every envelope, each followed by `end`."""
        return envelopes(self.prefix, self.first_seq, self.ts, self.lines, end)


@dataclass(frozen=True)
class Batch:
    """Envelopes a leader sends in one request, with the epoch and domain that fence it."""

    epoch: int
    domain: str
    chunks: tuple[Chunk, ...]

    def __len__(self) -> int:
        return sum(len(c) for c in self.chunks)

    def ndjson(self) -> bytes:
        """The request body of ingest protocol v1: one envelope per line."""
        return b"".join(line for chunk in self.chunks for line in chunk._lines(b"\n"))

    def halves(self) -> tuple[Batch, Batch]:
        """Split in two by record count (for 413 and for bisecting a refused batch)."""
        target = len(self) // 2
        head: list[Chunk] = []
        tail: list[Chunk] = []
        taken = 0
        for chunk in self.chunks:
            if taken >= target:
                tail.append(chunk)
            elif taken + len(chunk) <= target:
                head.append(chunk)
            else:
                first, second = chunk.split(target - taken)
                head.append(first)
                tail.append(second)
            taken += len(chunk)
        return Batch(self.epoch, self.domain, tuple(head)), Batch(self.epoch, self.domain, tuple(tail))


class Sink:
    """Where shipped records end up. Subclasses implement write(); close() is optional.

    write() stores every envelope of the batch or raises a SinkError subclass. After a
    leader change an envelope can arrive twice; (writer, seq) identifies it.
    """

    scheme: ClassVar[str] = ""
    # Records the sink acknowledged yet reported it dropped (OTLP partial_success): they
    # cannot be resent, so the sender counts them in sender.json and status shows them.
    rejected_records: int = 0

    def write(self, batch: Batch) -> None:
        raise NotImplementedError("The 'write' method must be implemented.")

    def check(self) -> None:
        """Raise SinkError when the sink cannot take records now: unreachable, refusing our
        credentials, not writable. Called once before a job starts (`distwal run`, `distwal
        drain`), never on the sending path; it stores nothing. The default checks nothing."""

    def writer_done(self, writer: str, meta: Mapping[str, Any], end: Mapping[str, Any] | None) -> None:
        """Every record of `writer` is acknowledged and it will send no more (finished or adopted).

        `end` is how the writer ended, as status shows it: {"reason", "detail", "code",
        "signal", "ts"} (docs/STATUS.md, "How each writer ended"). Sinks that keep per-writer state (an MLflow run) close it here; raising
        SinkError postpones the writer's retirement to a later cycle.
        """

    def read(
        self, run: str | None = None, rank: int | None = None, since: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """The stored records as envelopes (writer, seq, ts, host, pid, rank, run, local_rank,
        attempt, data), ordered by ts, then writer and seq; `since` is a unix time."""
        raise NotImplementedError(f"records sent to {self.scheme or type(self).__name__} sinks cannot be read back")

    def close(self) -> None:
        pass


class MockSink(Sink):
    """A sink whose write() calls handler(batch): for tests, instead of monkeypatching."""

    scheme = "mock"

    def __init__(self, handler: Callable[[Batch], None]) -> None:
        self.handler = handler

    def write(self, batch: Batch) -> None:
        self.handler(batch)
