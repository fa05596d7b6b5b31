"""The envelope: one record as sinks receive it and `distwal cat` prints it (ingest protocol v1).

    {"writer":…,"host":…,"pid":…,"rank":…,"run":…,"local_rank":…,"attempt":…,"seq":…,"ts":…,"data":…}

A record on disk holds only what varies (seq, ts, data); the writer's fields live once in
its meta.json (the design brief: bytes not written are the cheapest). So an envelope is a
constant prefix per writer, built once, and the varying tail per record, built here for a
run of records at a time.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import orjson

from ._marks import WHO_KEYS

ENVELOPE_KEYS = ("writer", *WHO_KEYS, "seq", "ts", "data")


def envelope_prefix(writer: str, who: Mapping[str, Any]) -> bytes:
    """The constant head of a writer's envelopes, `{"writer":…,"attempt":…,` (who: Meta.who)."""
    head = {"writer": writer, **{key: who.get(key) for key in WHO_KEYS}}
    return orjson.dumps(head)[:-1] + b","


def envelopes(prefix: bytes, first_seq: int, ts: Sequence[float], lines: Sequence[bytes], end: bytes = b"") -> list[bytes]:
    """The envelopes of records first_seq, first_seq + 1, … logged at ts[i] as lines[i], each
    followed by `end`. The timestamps are formatted by one orjson call for the whole run (a
    %r per float costs more than the rest of the line, and writes `nan` where JSON has none)."""
    stamps = orjson.dumps(list(ts))[1:-1].split(b",") if len(ts) else []
    template = b'%s"seq":%d,"ts":%s,"data":%s}' + end
    return [template % (prefix, first_seq + i, stamp, line) for i, (stamp, line) in enumerate(zip(stamps, lines))]
