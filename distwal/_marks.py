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
is not a JSON object, and a field of the wrong type reads as absent (0 for counters, None
otherwise), never an exception (tests/reliability/test_hostile_files.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

# The writer fields every envelope carries (ingest protocol v1), besides seq, ts and data.
WHO_KEYS = ("host", "pid", "rank", "run", "local_rank", "attempt")


def int_field(value: Any) -> int:
    """An integer field of a file another process wrote; 0 when it is not one."""
    return value if type(value) is int else 0


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dict_or_none(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Meta:
    """meta.json: the process that wrote a folder, and how it writes."""

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
    version: int = 1

    @classmethod
    def parse(cls, raw: Any) -> Meta | None:
        if not isinstance(raw, dict):
            return None
        return cls(
            writer=_str_or_none(raw.get("writer")),
            host=_str_or_none(raw.get("host")),
            boot_id=_str_or_none(raw.get("boot_id")),
            pid_ns=_int_or_none(raw.get("pid_ns")),
            pid=_int_or_none(raw.get("pid")),
            create_time=_float_or_none(raw.get("create_time")),
            rank=_int_or_none(raw.get("rank")),
            local_rank=_int_or_none(raw.get("local_rank")),
            world_size=_int_or_none(raw.get("world_size")),
            group_rank=_int_or_none(raw.get("group_rank")),
            attempt=_int_or_none(raw.get("attempt")),
            run=_str_or_none(raw.get("run")),
            domain=_str_or_none(raw.get("domain")),
            durability=_str_or_none(raw.get("durability")),
            segment_bytes=_int_or_none(raw.get("segment_bytes")),
            first_seq=_int_or_none(raw.get("first_seq")) or 1,
            continues=_str_or_none(raw.get("continues")),
            started=_float_or_none(raw.get("started")),
            version=_int_or_none(raw.get("version")) or 1,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "writer": self.writer,
            "host": self.host,
            "boot_id": self.boot_id,
            "pid_ns": self.pid_ns,
            "pid": self.pid,
            "create_time": self.create_time,
            "rank": self.rank,
            "local_rank": self.local_rank,
            "world_size": self.world_size,
            "group_rank": self.group_rank,
            "attempt": self.attempt,
            "run": self.run,
            "domain": self.domain,
            "durability": self.durability,
            "segment_bytes": self.segment_bytes,
            "first_seq": self.first_seq,
            "continues": self.continues,
            "started": self.started,
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @cached_property
    def who(self) -> dict[str, Any]:
        """The fields every envelope of this writer carries (WHO_KEYS); what sinks are given."""
        return {"host": self.host, "pid": self.pid, "rank": self.rank, "run": self.run,
                "local_rank": self.local_rank, "attempt": self.attempt}


@dataclass(frozen=True)
class Heartbeat:
    """heartbeat.json: the writer is alive, and how far its records are logged and durable.

    (durable_segment, durable_offset) is the durable watermark: a damaged span at or past it
    may simply not be written yet.
    """

    n: int = 0  # renewals so far
    ts: float | None = None  # unix time of this renewal
    state: str | None = None  # "live" or "finished"
    logged_seq: int = 0  # on disk: "seq"
    durable_seq: int = 0
    durable_segment: int = 0  # on disk: "segment"
    durable_offset: int = 0  # on disk: "offset"
    dropped: int = 0  # records dropped under the `drop` policy
    error: str | None = None  # why the writer cannot write now, if it cannot

    @classmethod
    def parse(cls, raw: Any) -> Heartbeat | None:
        if not isinstance(raw, dict):
            return None
        return cls(
            n=int_field(raw.get("n")),
            ts=_float_or_none(raw.get("ts")),
            state=_str_or_none(raw.get("state")),
            logged_seq=int_field(raw.get("seq")),
            durable_seq=int_field(raw.get("durable_seq")),
            durable_segment=int_field(raw.get("segment")),
            durable_offset=int_field(raw.get("offset")),
            dropped=int_field(raw.get("dropped")),
            error=_str_or_none(raw.get("error")),
        )

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "n": self.n,
            "ts": self.ts,
            "state": self.state,
            "seq": self.logged_seq,
            "durable_seq": self.durable_seq,
            "segment": self.durable_segment,
            "offset": self.durable_offset,
            "dropped": self.dropped,
            "error": self.error,
        })


@dataclass(frozen=True)
class Finish:
    """finish.json: the writer will write no more; everything up to durable_seq is on disk."""

    durable_seq: int = 0  # on disk: "seq"
    segment: int = 0  # where the last durable record ends
    offset: int = 0
    ts: float | None = None
    dropped: int = 0
    lost: int = 0  # records logged but not durable at the finish
    end: dict[str, Any] | None = None  # how the process ended (see _ends), as written

    @classmethod
    def parse(cls, raw: Any) -> Finish | None:
        if not isinstance(raw, dict):
            return None
        return cls(
            durable_seq=int_field(raw.get("seq")),
            segment=int_field(raw.get("segment")),
            offset=int_field(raw.get("offset")),
            ts=_float_or_none(raw.get("ts")),
            dropped=int_field(raw.get("dropped")),
            lost=int_field(raw.get("lost")),
            end=_dict_or_none(raw.get("end")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.durable_seq,
            "segment": self.segment,
            "offset": self.offset,
            "ts": self.ts,
            "dropped": self.dropped,
            "lost": self.lost,
            "end": self.end,
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())


@dataclass(frozen=True)
class Tombstone:
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

    @classmethod
    def parse(cls, raw: Any) -> Tombstone | None:
        if not isinstance(raw, dict):
            return None
        return cls(
            writer=_str_or_none(raw.get("writer")),
            meta=Meta.parse(raw.get("meta")) or Meta(),
            finish=Finish.parse(raw.get("finish")),
            state=_str_or_none(raw.get("state")),
            end=_dict_or_none(raw.get("end")),
            acked_seq=int_field(raw.get("acked_seq")),
            dead_letters=int_field(raw.get("dead_letters")),
            quarantined_bytes=int_field(raw.get("quarantined_bytes")),
            removed=_float_or_none(raw.get("removed")),
        )

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "writer": self.writer,
            "meta": self.meta.to_dict(),
            "finish": None if self.finish is None else self.finish.to_dict(),
            "state": self.state,
            "end": self.end,
            "acked_seq": self.acked_seq,
            "dead_letters": self.dead_letters,
            "quarantined_bytes": self.quarantined_bytes,
            "removed": self.removed,
        })


@dataclass(frozen=True)
class Lease:
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
        if not isinstance(raw, dict):
            return None
        locked = raw.get("locked")
        lease_s = _float_or_none(raw.get("lease_s"))
        return cls(
            owner=_str_or_none(raw.get("owner")),
            kind=_str_or_none(raw.get("kind")),
            host=_str_or_none(raw.get("host")),
            pid=_int_or_none(raw.get("pid")),
            boot_id=_str_or_none(raw.get("boot_id")),
            pid_ns=_int_or_none(raw.get("pid_ns")),
            create_time=_float_or_none(raw.get("create_time")),
            rank=_int_or_none(raw.get("rank")),
            locked=locked if isinstance(locked, bool) else None,
            epoch=int_field(raw.get("epoch")),
            n=int_field(raw.get("n")),
            ts=_float_or_none(raw.get("ts")),
            lease_s=lease_s if lease_s is not None and lease_s > 0 else None,
            released=bool(raw.get("released")),  # any true value, as every reader took it
        )

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = {
            "owner": self.owner, "kind": self.kind, "host": self.host, "pid": self.pid, "boot_id": self.boot_id,
            "pid_ns": self.pid_ns, "create_time": self.create_time,
        }
        if self.rank is not None or self.kind == "rank":
            body["rank"] = self.rank
        if self.locked is not None:
            body["locked"] = self.locked
        body.update(epoch=self.epoch, n=self.n, ts=self.ts, lease_s=self.lease_s)
        if self.released:
            body["released"] = True
        return orjson.dumps(body)
