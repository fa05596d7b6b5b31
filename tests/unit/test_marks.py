"""The small files beside a writer's segments (distwal._marks): round trips, old keys, hostile values."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from distwal._layout import Identity, Modes
from distwal._marks import Finish, Heartbeat, Lease, Meta, Tombstone
from distwal.leader.election import LeaseKeeper, release_lease
from distwal.leader.elector import owner_of

# What a writer of this version writes (writer/writer.py), key for key.
META_ON_DISK = {
    "version": 1, "writer": "h-0123abcd-1-42-1000-deadbeef", "host": "h", "boot_id": "0123abcd", "pid_ns": 1,
    "pid": 42, "create_time": 1.5, "rank": 3, "local_rank": 1, "world_size": 8, "group_rank": 0, "attempt": 2,
    "run": "r", "domain": "d", "durability": "interval", "segment_bytes": 1 << 26, "first_seq": 1,
    "continues": None, "started": 1700000000.25,
}
HEARTBEAT_ON_DISK = {"n": 3, "ts": 1700000001.5, "state": "live", "seq": 120, "durable_seq": 100, "segment": 2,
                     "offset": 4096, "dropped": 5, "error": None}
FINISH_ON_DISK = {"seq": 120, "segment": 2, "offset": 8192, "ts": 1700000002.0, "dropped": 5, "lost": 0,
                  "end": {"reason": "finished", "detail": "finish()", "code": None, "signal": None, "ts": 1.0}}
TOMBSTONE_ON_DISK = {"writer": "w", "meta": META_ON_DISK, "finish": FINISH_ON_DISK, "state": "finished",
                     "end": FINISH_ON_DISK["end"], "acked_seq": 120, "dead_letters": 1, "quarantined_bytes": 7,
                     "removed": 1700000003.0}


@pytest.mark.parametrize("kind,raw", [
    (Meta, META_ON_DISK), (Heartbeat, HEARTBEAT_ON_DISK), (Finish, FINISH_ON_DISK), (Tombstone, TOMBSTONE_ON_DISK),
])
def test_marks_written_today_read_back_and_write_the_same_bytes(kind: Any, raw: dict[str, Any]) -> None:
    mark = kind.parse(orjson.loads(orjson.dumps(raw)))
    assert mark is not None
    assert mark.to_bytes() == orjson.dumps(raw), "the on-disk keys, their order and their values stay"
    assert kind.parse(orjson.loads(mark.to_bytes())) == mark


def test_seq_means_logged_in_a_heartbeat_and_durable_in_a_finish_mark() -> None:
    beat = Heartbeat.parse(HEARTBEAT_ON_DISK)
    finish = Finish.parse(FINISH_ON_DISK)
    assert beat is not None and (beat.logged_seq, beat.durable_seq) == (120, 100)
    assert (beat.durable_segment, beat.durable_offset) == (2, 4096)
    assert finish is not None and finish.durable_seq == 120


def test_an_old_heartbeat_without_durable_seq_claims_nothing_durable() -> None:
    beat = Heartbeat.parse({"seq": 50, "ts": 1.0})
    assert beat is not None and (beat.logged_seq, beat.durable_seq) == (50, 0)


@pytest.mark.parametrize("raw", [None, [], "x", 3, 1.5, True, [{"seq": 1}]])
def test_a_mark_that_is_not_a_json_object_is_none(raw: Any) -> None:
    assert Meta.parse(raw) is None
    assert Heartbeat.parse(raw) is None
    assert Finish.parse(raw) is None
    assert Tombstone.parse(raw) is None
    assert Lease.parse(raw) is None


# The wrong types tests/reliability/test_hostile_files.py WRONG_TYPED pins (each crashed a reader once).
@pytest.mark.parametrize("raw,expected", [
    ({"durable_seq": "many"}, Heartbeat(durable_seq=0)),
    ({"seq": [1], "dropped": {}}, Heartbeat(logged_seq=0, dropped=0)),
    ({"seq": True, "segment": 1.5, "offset": "9", "ts": "now", "error": 3, "state": ["live"]}, Heartbeat()),
])
def test_heartbeat_fields_of_the_wrong_type_read_as_absent(raw: dict[str, Any], expected: Heartbeat) -> None:
    assert Heartbeat.parse(raw) == expected


@pytest.mark.parametrize("raw", [{"seq": "x"}, {"seq": [7]}, {"seq": None, "end": "finished", "ts": False}])
def test_finish_fields_of_the_wrong_type_read_as_absent(raw: dict[str, Any]) -> None:
    assert Finish.parse(raw) == Finish()


def test_meta_fields_of_the_wrong_type_read_as_absent_and_leave_the_envelope_well_typed() -> None:
    meta = Meta.parse({"rank": {"a": 1}, "host": ["x"], "pid": "42", "create_time": True, "run": 7,
                       "segment_bytes": "big", "first_seq": -0.5, "boot_id": 1, "pid_ns": "1"})
    assert meta == Meta()
    assert meta.who == {"host": None, "pid": None, "rank": None, "run": None, "local_rank": None, "attempt": None}


def test_meta_keeps_an_out_of_range_pid_for_the_liveness_probe_to_refuse() -> None:
    meta = Meta.parse({"pid": 2**64 - 1, "create_time": 12})
    assert meta is not None and meta.pid == 2**64 - 1 and meta.create_time == 12.0


@pytest.mark.parametrize("raw", [{"meta": "not-a-dict"}, {"acked_seq": "x"}, {"finish": [], "removed": "yesterday"}])
def test_tombstone_fields_of_the_wrong_type_read_as_absent(raw: dict[str, Any]) -> None:
    tomb = Tombstone.parse({"writer": "w", **raw})
    assert tomb is not None
    assert (tomb.meta, tomb.finish, tomb.acked_seq, tomb.removed) == (Meta(), None, 0, None)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_LEASE_KEYS = ("owner", "kind", "rank", "locked", "epoch", "n", "lease_s", "released")
_keys = st.sampled_from(sorted({*META_ON_DISK, *HEARTBEAT_ON_DISK, *FINISH_ON_DISK, *TOMBSTONE_ON_DISK, *_LEASE_KEYS}))


@given(st.dictionaries(_keys, _json, max_size=8))
def test_any_object_parses_and_writes_back_as_json(raw: dict[str, Any]) -> None:
    for kind in (Meta, Heartbeat, Finish, Tombstone, Lease):
        mark = kind.parse(raw)
        assert mark is not None
        assert kind.parse(orjson.loads(mark.to_bytes())) == mark, kind.__name__


# -- the lease ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,name,extra", [("rank", "w-1", {"rank": 3}), ("sidecar", None, {}), ("drain", None, {})])
@pytest.mark.parametrize("locked", [True, False, None])
def test_the_lease_a_leader_writes_and_releases_reads_back_to_the_same_bytes(
    tmp_path: Path, kind: str, name: str | None, extra: dict[str, Any], locked: bool | None
) -> None:
    owner = owner_of(Identity.of_this_process(), kind, name, **extra)
    if locked is not None:
        owner["locked"] = locked  # as the elector notes it once it claimed
    modes = Modes.for_config(shared_group=False)
    assert LeaseKeeper(str(tmp_path), 4, owner, 5.0, modes).renew_if_due()
    raw = (tmp_path / "leader.json").read_bytes()
    lease = Lease.parse(orjson.loads(raw))
    assert lease is not None and lease.to_bytes() == raw
    assert (lease.epoch, lease.n, lease.kind, lease.pid, lease.lease_s, lease.released) == (
        4, 1, kind, os.getpid(), 5.0, False)
    release_lease(str(tmp_path), 4, modes)
    raw = (tmp_path / "leader.json").read_bytes()
    released = Lease.parse(orjson.loads(raw))
    assert released is not None and released.released and released.to_bytes() == raw


@pytest.mark.parametrize("raw,expected", [
    ({"epoch": "x", "ts": 1.0}, Lease(ts=1.0)),
    ({"epoch": 1, "lease_s": "long"}, Lease(epoch=1)),
    ({"lease_s": -3, "n": 2.5, "pid": True, "locked": "yes"}, Lease()),
    ({"released": 1}, Lease(released=True)),
])
def test_lease_fields_of_the_wrong_type_read_as_absent(raw: dict[str, Any], expected: Lease) -> None:
    assert Lease.parse(raw) == expected
