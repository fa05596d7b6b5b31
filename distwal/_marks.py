"""The small files beside a writer's segments, and the tombstone left when it is removed.

    writers/<id>/meta.json        Meta: who wrote this folder; written once, before any record
    writers/<id>/heartbeat.json   Heartbeat: renewed by the writer, never fsynced
    writers/<id>/finish.json      Finish: the writer will write no more; how far it is durable
    history/<id>.json             Tombstone: a removed writer, for status and gc

Each on-disk key is named here and nowhere else. Readers get frozen values with one meaning
per attribute; the on-disk keys stay what older directories hold. One name is the trap:
`seq` in a heartbeat is the last seq *logged*, in a finish mark the last one *durable*,
so the attributes are logged_seq and durable_seq.

parse() trusts nothing: a file of another process, damaged or hostile, gives None when it
is not a JSON object, and a field of the wrong type reads as absent (the field's default: 0
for counters, None otherwise), never an exception (tests/reliability/test_hostile_files.py).
A field's type annotation is its check; a field whose on-disk key is not its name says so
with on_disk(), and the fields' order is the order of the keys on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any, Callable, TypeVar

import orjson

# The writer fields every envelope carries (ingest protocol v1), besides seq, ts and data.
WHO_KEYS = ("host", "pid", "rank", "run", "local_rank", "attempt")


def on_disk(key: str, default: Any = None) -> Any:
    """A field stored under another key than its name (to keep the keys older directories hold)."""
    return field(default=default, metadata={"key": key})


# What each annotated type accepts from a file; None means absent (the field's default).
_ACCEPT: dict[str, Callable[[Any], Any]] = {
    "int": lambda v: v if type(v) is int else None,  # a bool is not a count
    "float": lambda v: float(v) if type(v) in (int, float) else None,
    "str": lambda v: v if isinstance(v, str) else None,
    "bool": lambda v: v if isinstance(v, bool) else None,
    "dict": lambda v: v if isinstance(v, dict) else None,
}


_M = TypeVar("_M", bound="_Mark")


class _Mark:
    """parse() and to_bytes() for a frozen dataclass of on-disk fields (see the module docstring)."""

    @classmethod
    def parse(cls: type[_M], raw: Any) -> _M | None:
        if not isinstance(raw, dict):
            return None
        found = {}
        for name, key, accept in _schema(cls):
            value = accept(raw.get(key))
            if value is not None:
                found[name] = value
        return cls(**found)

    def to_dict(self) -> dict[str, Any]:
        return {key: _plain(getattr(self, name)) for name, key, _ in _schema(type(self))}

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())


_Schema = tuple[tuple[str, str, Callable[[Any], Any]], ...]
_schemas: dict[type, _Schema] = {}


def _schema(cls: type) -> _Schema:
    """(attribute, on-disk key, accept) of each field, from its annotation: "int | None" is an int."""
    schema = _schemas.get(cls)
    if schema is None:
        marks = {"Meta": Meta.parse, "Finish": Finish.parse}
        schema = _schemas[cls] = tuple(
            (f.name, f.metadata.get("key", f.name), marks.get(_base(f.type)) or _ACCEPT[_base(f.type)])
            for f in fields(cls)
        )
    return schema


def _base(annotation: Any) -> str:
    return str(annotation).split("|")[0].split("[")[0].strip()


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, _Mark) else value


@dataclass(frozen=True)
class Meta(_Mark):
    """meta.json: the process that wrote a folder, and how it writes."""

    version: int = 1
    writer: str | None = None
    host: str | None = None
    boot_id: str | None = None
    pid_ns: int | None = None
    pid: int | None = None
    create_time: float | None = None  # the process's start time (psutil), part of its identity
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    group_rank: int | None = None
    attempt: int | None = None  # restart count
    run: str | None = None
    domain: str | None = None
    durability: str | None = None
    segment_bytes: int | None = None  # tells readers when a later segment may exist
    first_seq: int = 1
    continues: str | None = None  # the writer id this one continues after an adoption
    started: float | None = None

    @cached_property
    def who(self) -> dict[str, Any]:
        """The fields every envelope of this writer carries (WHO_KEYS); what sinks are given."""
        return {key: getattr(self, key) for key in WHO_KEYS}


@dataclass(frozen=True)
class Heartbeat(_Mark):
    """heartbeat.json: the writer is alive, and how far its records are logged and durable.

    (durable_segment, durable_offset) is the durable watermark: a damaged span at or past it
    may simply not be written yet.
    """

    n: int = 0  # renewals so far
    ts: float | None = None  # unix time of this renewal
    state: str | None = None  # "live" or "finished"
    logged_seq: int = on_disk("seq", 0)
    durable_seq: int = 0
    durable_segment: int = on_disk("segment", 0)
    durable_offset: int = on_disk("offset", 0)
    dropped: int = 0  # records dropped under the `drop` policy
    error: str | None = None  # why the writer cannot write now, if it cannot


@dataclass(frozen=True)
class Finish(_Mark):
    """finish.json: the writer will write no more; everything up to durable_seq is on disk."""

    durable_seq: int = on_disk("seq", 0)
    segment: int = 0  # where the last durable record ends
    offset: int = 0
    ts: float | None = None
    dropped: int = 0
    lost: int = 0  # records logged but not durable at the finish
    end: dict[str, Any] | None = None  # how the process ended (see _ends), as written


@dataclass(frozen=True)
class Tombstone(_Mark):
    """history/<id>.json: a writer the leader removed once all its records were delivered."""

    writer: str | None = None
    meta: Meta = field(default_factory=Meta)
    finish: Finish | None = None
    state: str | None = None  # "finished" or "adopted"
    end: dict[str, Any] | None = None  # how it ended, as status shows it (older tombstones: none)
    acked_seq: int = 0
    dead_letters: int = 0
    quarantined_bytes: int = 0
    removed: float | None = None  # unix time the leader removed the folder (gc goes by it)


@dataclass(frozen=True)
class Lease(_Mark):
    """leader.json: who leads, at which epoch; replaced at every renewal (leader/election).

    The owner's fields (owner .. locked) are what the elector claims with; a contender on
    the same kernel proves a silent holder dead from boot_id, pid_ns, pid and create_time.
    rank and locked are written only by the owners that have them, released only once set.
    """

    owner: str | None = None  # the owner's name: a writer id, or kind-host-pid
    kind: str | None = None  # "rank", "sidecar" or "drain"
    host: str | None = None
    pid: int | None = None
    boot_id: str | None = None
    pid_ns: int | None = None
    create_time: float | None = None
    rank: int | None = None
    locked: bool | None = None  # the owner held the lock when it claimed (issue 11)
    epoch: int = 0
    n: int = 0  # renewals
    ts: float | None = None  # unix time of the last renewal (or of the release)
    lease_s: float | None = None  # how long the owner may go without renewing
    released: bool = False

    @classmethod
    def parse(cls, raw: Any) -> Lease | None:
        lease: Lease | None = super().parse(raw)
        if lease is None:
            return None
        positive = lease.lease_s if lease.lease_s is not None and lease.lease_s > 0 else None
        return replace(lease, lease_s=positive, released=bool(raw.get("released")))  # any true value counts

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if self.rank is None and self.kind != "rank":
            del body["rank"]
        if self.locked is None:
            del body["locked"]
        if not self.released:
            del body["released"]
        return body
