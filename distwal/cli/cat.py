"""`distwal cat [DIR] [--writer ID] [--merge]`: the envelopes on disk as JSON lines.

Writers in id order, each in seq order; --merge interleaves them by time. Damaged spans
are reported on stderr and do not stop the output.
"""

from __future__ import annotations

import argparse
import heapq
import sys
from typing import Iterator

from .._exceptions import DistwalError
from .._folder import WriterFiles, iter_envelopes, list_writers
from .._segment import Damage
from ._common import resolve_dir


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distwal cat", description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", help="the distwal directory (default: $DISTWAL_DIR or ./.distwal)")
    parser.add_argument("--writer", action="append", help="only this writer id (repeatable)")
    parser.add_argument("--merge", action="store_true", help="interleave all writers by time")
    opts = parser.parse_args(args)

    root = resolve_dir(opts.dir)
    writers = list_writers(root)
    if opts.writer:
        wanted = set(opts.writer)
        writers = [w for w in writers if w.id in wanted]
        missing = wanted - {w.id for w in writers}
        if missing:
            print(f"distwal cat: no writer {sorted(missing)[0]!r} in this directory", file=sys.stderr)
            return 1
    damage: list[tuple[str, Damage]] = []
    streams = [_tagged(w, damage) for w in writers]
    if opts.merge:
        lines: Iterator[bytes] = (env for _, env in heapq.merge(*streams, key=lambda item: item[0]))
    else:
        lines = (env for stream in streams for _, env in stream)
    out = sys.stdout.buffer
    written = 0
    for envelope in lines:
        out.write(envelope + b"\n")
        written += 1
    out.flush()
    if not written and not opts.writer:
        _say_where_records_went(root)
    for writer_id, span in damage:
        kind = "unreadable tail" if span.at_tail else "corrupt span"
        print(
            f"distwal cat: {writer_id}: {kind} of {span.end - span.start} bytes in segment "
            f"{span.segment:08x} at offset {span.start}",
            file=sys.stderr,
        )
    return 0


def _tagged(writer: WriterFiles, damage: list[tuple[str, Damage]]) -> Iterator[tuple[float, bytes]]:
    """(ts, envelope) of one writer; its damaged spans are added to `damage` at the end."""
    spans: list[Damage] = []
    for _seq, ts, envelope in iter_envelopes(writer, spans):
        yield ts, envelope
    damage.extend((writer.id, span) for span in spans)


def _say_where_records_went(root: str) -> None:
    """Nothing on disk: say where delivered records are, and how to read them (issue 9)."""
    from .._config import _redact
    from .._readback import sink_of

    try:
        sink = _redact(sink_of(root)[1])
    except DistwalError:
        return
    print(f"distwal cat: no undelivered records on disk in {root}; delivered ones are in {sink}: "
          f"distwal read {root}", file=sys.stderr)
