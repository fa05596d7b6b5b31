"""`distwal status [--json] DIR` and distwal.status(DIR), against real jobs.

During a job: the writers are "live", the leader is alive with its kind, and the counts are
plausible and consistent (acked <= durable <= records, pending = durable - acked, totals
are the sums). After it: the writers are history (tombstones "finished" / "adopted") and
everything is acknowledged. A SIGKILLed writer with no leader running shows "dead" (and a
living one next to it "live") until `distwal drain` adopts it. The JSON carries every key
docs/STATUS.md documents; the table names every writer's rank and state; a path that is
not a distwal directory is exit code 2 with one line. Replay with DISTWAL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.cluster import acks_of, cluster_env, run_cli, start_writer, wait_until, writer_id_of
from helpers.jobs import job_env, run_job, run_python, sink_rows, write_script

import distwal
from distwal import LayoutError

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]

PY = sys.executable
STATUS_DOC = Path(__file__).resolve().parents[2] / "docs" / "STATUS.md"


# -- the documented schema ------------------------------------------------------------------------


def _strip_comments(text: str) -> str:
    """Remove // comments outside JSON strings ("sqlite:////abs" keeps its slashes)."""
    out, in_string, i = [], False, 0
    while i < len(text):
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif text.startswith("//", i):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def documented_schema() -> dict[str, Any]:
    """The example object of docs/STATUS.md's ```json block, comments removed."""
    match = re.search(r"```json\n(.*?)```", STATUS_DOC.read_text(), re.DOTALL)
    assert match, f"no ```json block in {STATUS_DOC}"
    return json.loads(_strip_comments(match.group(1)))


def missing_keys(doc: Any, actual: Any, path: str = "$") -> list[str]:
    """Documented keys absent from `actual` (objects recursively; lists by their first item;
    a documented object may be null in `actual`, as the doc allows for leader and sender)."""
    if isinstance(doc, dict):
        if actual is None:
            return []
        assert isinstance(actual, dict), f"{path}: documented as an object, got {actual!r}"
        found = []
        for key, value in doc.items():
            if key not in actual:
                found.append(f"{path}.{key}")
            else:
                found += missing_keys(value, actual[key], f"{path}.{key}")
        return found
    if isinstance(doc, list) and doc:
        assert isinstance(actual, list), f"{path}: documented as a list, got {actual!r}"
        return [m for item in actual for m in missing_keys(doc[0], item, f"{path}[]")]
    return []


def assert_documented_keys(report: dict[str, Any], context: str = "") -> None:
    doc = documented_schema()
    missing = missing_keys(doc, report)
    assert not missing, f"keys documented in docs/STATUS.md missing from the status: {sorted(set(missing))} {context}"


def test_documented_schema_parses_and_covers_every_section():
    """The checker itself: the doc's example parses, and a report without a key fails it."""
    doc = documented_schema()
    assert {"dir", "leader", "sender", "writers", "history", "totals"} <= set(doc)
    assert {"state", "acked_seq", "pending_records"} <= set(doc["writers"][0])
    broken = json.loads(json.dumps(doc))
    del broken["writers"][0]["pending_bytes"]
    del broken["totals"]["acked_records"]
    assert missing_keys(doc, broken) == ["$.writers[].pending_bytes", "$.totals.acked_records"]


# -- consistency of one report ------------------------------------------------------------------------


def assert_consistent(report: dict[str, Any], context: str = "") -> None:
    """Counts that must agree in any report, whenever it was taken."""
    writers, history, totals = report["writers"], report["history"], report["totals"]
    for w in writers:
        what = f"writer {w['writer']} {w}"
        assert 0 <= w["acked_seq"] <= w["records"] and 0 <= w["durable_seq"] <= w["records"], (
            f"acked <= records and durable <= records: {what} {context}"
        )
        # pending = durable - acked; durable_seq comes from the heartbeat (written every second)
        # and can lag the cursor book (see test_durable_seq_is_never_below_acked_seq), hence max(0, ...).
        assert w["pending_records"] == max(0, w["durable_seq"] - w["acked_seq"]), f"pending = durable - acked: {what} {context}"
        assert (w["pending_records"] > 0) <= (w["pending_bytes"] > 0), f"pending records without bytes: {what} {context}"
        assert w["state"] in ("live", "finished", "dead", "stale", "adopted"), f"{what} {context}"
    for h in history:
        assert h["state"] in ("finished", "adopted"), f"history {h} {context}"
        assert 0 <= h["acked_seq"] <= h["records"], f"history {h} {context}"
    assert totals["writers"] == len(writers), context
    assert totals["records"] == sum(w["records"] for w in writers) + sum(h["records"] for h in history), context
    assert totals["pending_records"] == sum(w["pending_records"] for w in writers), context
    assert totals["pending_bytes"] == sum(w["pending_bytes"] for w in writers), context
    assert totals["acked_records"] == sum(w["acked_seq"] for w in writers) + sum(h["acked_seq"] for h in history), context


def status_json(wal_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    result = run_cli(["status", "--json", str(wal_dir)], env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def table_rows(text: str, writer_ids: list[str]) -> dict[str, str]:
    """{writer id: its table line}; the table shows the id's random suffix."""
    rows = {}
    for writer in writer_ids:
        suffix = writer.rsplit("-", 1)[-1]
        lines = [line for line in text.splitlines() if re.search(rf"\b{suffix}\b", line)]
        assert len(lines) == 1, f"expected one table line for {writer} ({suffix}), got {lines}\n{text}"
        rows[writer] = lines[0]
    return rows


def assert_table_shows(text: str, expected: dict[str, tuple[int, str]], context: str = "") -> None:
    """Each writer's line shows its rank (as "R" or "R (local)") and its state."""
    for writer, line in table_rows(text, list(expected)).items():
        rank, state = expected[writer]
        assert re.match(rf"^\s*{rank}(\s|$)", line), f"{writer}: rank {rank} not first in {line!r} {context}"
        assert re.search(rf"\s{re.escape(state)}(\s|,)", line), f"{writer}: state {state!r} not in {line!r} {context}"


# -- a live job under `distwal run`, then after it -------------------------------------------------------

RANKS_JOB = """
import subprocess
import distwal

opts = json.loads(sys.argv[1])
role = sys.argv[2]
if role == "cmd":
    ranks = [subprocess.Popen([sys.executable, __file__, sys.argv[1], str(r)],
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "3"})
             for r in range(3)]
    codes = {}
    while len(codes) < 3:                        # reap each rank as soon as it ends
        pid, status = os.wait()
        codes[pid] = os.waitstatus_to_exitcode(status)
    emit("cmd_done", sorted(codes.values()))
    sys.exit(0)
w = distwal.init(durability="sync")
emit("ready", role, w.id, os.getpid(), w.config.run_id)
i = 0
while not os.path.exists(opts["stop"]):
    logged(w, {"r": role, "i": i})
    i += 1
    time.sleep(opts["pace"])
emit("finished", role, w.finish(timeout=30))
"""


def test_status_of_a_live_job_then_of_its_history(tmp_path, wal_dir, seed):
    rng = random.Random(seed)
    victim = rng.randrange(3)
    want = rng.randrange(5, 60)
    pace = rng.uniform(0.003, 0.01)
    context = f"(seed={seed}, rank {victim} SIGKILLed, status at >= {want} records per rank)"
    print(context)
    stop = tmp_path / "stop"
    script = write_script(tmp_path, "ranks_job.py", RANKS_JOB)
    env = job_env(DISTWAL_LEASE_S="2")
    opts = json.dumps({"stop": str(stop), "pace": pace})
    with run_job(tmp_path, wal_dir, [PY, str(script), opts, "cmd"], env=env) as job:
        job.wait_for(lambda: len(job.lines_with("ready")) == 3, timeout=30)
        ready = {line.parts[2]: line.parts[1:] for line in job.lines_with("ready")}  # id: rank, id, pid, run
        ids = sorted(ready)

        def every_rank_shows(n: int):
            report = distwal.status(wal_dir)
            rows = {w["writer"]: w for w in report["writers"]}
            return report if set(rows) == set(ids) and all(rows[i]["records"] >= n for i in ids) else None

        wait_until(lambda: every_rank_shows(want), 30, f"status to show >= {want} records per rank",
                   lambda: json.dumps(distwal.status(wal_dir), indent=1))
        report = distwal.status(wal_dir)
        cli = status_json(wal_dir, env)
        table = run_cli(["status", str(wal_dir)], env=env)
        acked_after = {w: max(a) for w, a in job.acks().items()}

        for name, rep in (("distwal.status", report), ("status --json", cli)):
            where = f"[{name}, live] {context}"
            assert_documented_keys(rep, where)
            assert_consistent(rep, where)
            assert rep["dir"] == str(wal_dir) and rep["history"] == [], where
            assert rep["sink"] == f"sqlite:///{wal_dir}/collected.db", where
            leader = rep["leader"]
            assert leader["alive"] is True and leader["kind"] == "sidecar" and leader["pid"] == job.pid, where
            assert leader["epoch"] >= 1 and rep["sender"]["epoch"] == leader["epoch"], where
            rows = {w["writer"]: w for w in rep["writers"]}
            assert sorted(rows) == ids, f"writers {sorted(rows)} vs ranks {ids} {where}"
            for wid, (rank, _, pid, run) in ready.items():
                row = rows[wid]
                assert row["state"] == "live", f"{row} {where}"
                assert (row["rank"], row["local_rank"], row["pid"], row["run"], row["attempt"]) == (
                    int(rank), int(rank), int(pid), run, None), f"{row} {where}"
                assert row["records"] <= acked_after[wid] + 1, (
                    f"status claims {row['records']} records, the rank had logged {acked_after[wid]} after {where}"
                )
                assert row["heartbeat_age"] is not None and row["heartbeat_age"] < 5, f"{row} {where}"
        assert table.returncode == 0, table.stderr
        assert_table_shows(table.stdout, {w: (int(r[0]), "live") for w, r in ready.items()}, context)
        assert "leader: epoch" in table.stdout and "sidecar" in table.stdout, table.stdout

        # a rank dies: the sidecar adopts it while the job runs
        victim_id = next(w for w, r in ready.items() if int(r[0]) == victim)
        os.kill(int(ready[victim_id][2]), signal.SIGKILL)

        def victim_adopted():
            report = distwal.status(wal_dir)
            states = {w["writer"]: w["state"] for w in report["writers"] + report["history"]}
            return states.get(victim_id) == "adopted"

        wait_until(victim_adopted, 30, f"rank {victim} to be adopted", lambda: json.dumps(distwal.status(wal_dir)))
        stop.touch()
        assert job.wait(timeout=60) == 0, job.describe()
        acks = job.acks()
    assert job.lines_with("cmd_done")[0].text == f"cmd_done {sorted([0, 0, -9])}", job.describe()

    after = distwal.status(wal_dir)
    cli_after = status_json(wal_dir, job_env())
    table_after = run_cli(["status", str(wal_dir)], env=job_env())
    delivered = {w: max(r.seq for r in sink_rows(wal_dir) if r.writer == w) for w in ids}
    for name, rep in (("distwal.status", after), ("status --json", cli_after)):
        where = f"[{name}, after] {context}"
        assert_documented_keys(rep, where)
        assert_consistent(rep, where)
        assert rep["leader"]["alive"] is False and rep["leader"]["kind"] == "sidecar", where
        # the adopted folder may stay on disk (state "adopted") for twice the lease before its tombstone
        rows = {w["writer"]: w for w in rep["writers"]}
        assert set(rows) <= {victim_id}, f"only the adopted writer may still be on disk: {sorted(rows)} {where}"
        done = {h["writer"]: h for h in rep["history"]}
        assert set(done) | set(rows) == set(ids) and not set(done) & set(rows), f"{sorted(done)} {sorted(rows)} {where}"
        for wid in ids:
            entry = done.get(wid) or rows[wid]
            expected_state = "adopted" if wid == victim_id else "finished"
            assert entry["state"] == expected_state, f"{entry} {where}"
            # a folder still on disk counts the seq its last heartbeat saw logged: the SIGKILLed
            # rank may have had one record logged and not yet durable (never acknowledged, never sent)
            slack = 1 if wid in rows else 0
            assert entry["acked_seq"] == delivered[wid] <= entry["records"] <= delivered[wid] + slack, (
                f"{entry}: the sink holds 1..{delivered[wid]} {where}"
            )
            assert max(acks[wid]) <= entry["acked_seq"], f"{entry}: last ack {max(acks[wid])} {where}"
            if wid in done:
                assert entry["removed"] is not None and entry["rank"] == int(ready[wid][0]), f"{entry} {where}"
        totals = rep["totals"]
        assert totals["pending_records"] == 0 and totals["acked_records"] == sum(delivered.values()), (
            f"totals {totals}, delivered {delivered} {where}"
        )
        assert 0 <= totals["records"] - totals["acked_records"] <= len(rows), f"totals {totals} {where}"
    assert table_after.returncode == 0, table_after.stderr
    # the end column: the SIGKILLed rank is lost, the others finished (its state is
    # "adopted" while its folder is on disk, "done" once delivered and removed)
    assert_table_shows(
        table_after.stdout,
        {w: (int(r[0]), "lost" if w == victim_id else "finished") for w, r in ready.items()},
        context,
    )


# -- a SIGKILLed writer with no leader: "dead" until a drain adopts it ----------------------------------------


def test_sigkilled_writer_shows_dead_until_drain_adopts_it(tmp_path, wal_dir, seed):
    rng = random.Random(seed)
    want = rng.randrange(1, 100)
    context = f"(seed={seed}, kill after {want} acks)"
    print(context)
    stop = tmp_path / "stop"
    env = cluster_env(wal_dir, f"sqlite:///{wal_dir}/collected.db", sender=False, RANK="0")
    with start_writer(tmp_path, env, "killed", pace=0.002) as killed, \
            start_writer(tmp_path, {**env, "RANK": "1"}, "alive", stop=str(stop), wait_stop=True, count=want) as alive:
        killed_id, alive_id = writer_id_of(killed), writer_id_of(alive)
        killed.wait_for(lambda: len(acks_of(killed)) >= want)
        alive.wait_for("logged")
        killed.kill()
        assert killed.wait() == -signal.SIGKILL
        last = max(acks_of(killed))

        def alive_beat_shows_all() -> bool:  # a live writer's heartbeat catches up within a second
            rows = {w["writer"]: w for w in distwal.status(wal_dir)["writers"]}
            return rows[alive_id]["records"] == want

        wait_until(alive_beat_shows_all, 10, f"the live writer's {want} records in status")
        report = distwal.status(wal_dir)
        cli = status_json(wal_dir, env)
        table = run_cli(["status", str(wal_dir)], env=env)
        for name, rep in (("distwal.status", report), ("status --json", cli)):
            where = f"[{name}] {context}"
            assert_documented_keys(rep, where)
            assert_consistent(rep, where)
            assert rep["leader"] is None and rep["sender"] is None and rep["sink"] is None, f"no leader ever ran {where}"
            rows = {w["writer"]: w for w in rep["writers"]}
            assert set(rows) == {killed_id, alive_id}, where
            assert rows[killed_id]["state"] == "dead", f"{rows[killed_id]} {where}"
            assert rows[alive_id]["state"] == "live", f"{rows[alive_id]} {where}"
            assert rows[killed_id]["acked_seq"] == 0 and rows[killed_id]["rank"] == 0, where
            # what it left is on disk; how many records that is, status reads from the dead writer's
            # last heartbeat (see test_status_counts_what_a_dead_writer_left_on_disk)
            assert rows[killed_id]["pending_bytes"] > 0 and rows[killed_id]["records"] <= last + 1, where
            assert rows[killed_id]["pending_records"] == rows[killed_id]["durable_seq"], where
            assert rows[alive_id]["rank"] == 1 and rows[alive_id]["records"] == want, where
        assert table.returncode == 0, table.stderr
        assert_table_shows(table.stdout, {killed_id: (0, "dead"), alive_id: (1, "live")}, context)

        drained = run_cli(["drain", str(wal_dir), "--timeout", "30"], env=job_env())
        assert drained.returncode == 0, context
        after = distwal.status(wal_dir)
        assert_consistent(after, context)
        entries = {w["writer"]: w for w in after["writers"] + after["history"]}
        assert entries[killed_id]["state"] == "adopted", f"{entries[killed_id]} {context}"
        assert entries[killed_id]["acked_seq"] >= last, f"{entries[killed_id]}, last ack {last} {context}"
        assert entries[alive_id]["state"] == "live" and entries[alive_id]["acked_seq"] == want, (
            f"a live writer is delivered, never adopted: {entries[alive_id]} {context}"
        )
        assert after["leader"]["kind"] == "drain", f"{after['leader']} {context}"
        stop.touch()
        assert alive.wait() == 0, alive.describe()


# -- not a distwal directory ------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["missing", "file", "plain_dir"])
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_status_of_a_non_directory_is_exit_2_with_one_line(tmp_path, what, as_json):
    path = tmp_path / what
    if what == "file":
        path.write_text("not a directory\n")
    elif what == "plain_dir":
        path.mkdir()
    result = run_cli(["status", *(["--json"] if as_json else []), str(path)], env=job_env())
    assert result.returncode == 2, result
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip("\n").splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in lines[0], result.stderr
    with pytest.raises(LayoutError, match=re.escape(str(path))):
        distwal.status(path)


# -- status trusts the heartbeat's durable_seq (known bugs) ------------------------------------------------
#
# A writer publishes its durable watermark with its heartbeat, written every heartbeat_interval
# (1 s by default). status() takes durable_seq from that heartbeat alone. Between heartbeats,
# records are durable (and acknowledged by the leader, which reads the segments) that the
# heartbeat does not count; for a dead writer, whose heartbeat never comes again, that is for
# good. A heartbeat interval of an hour makes the window the writer's whole life, so these
# tests are deterministic; with the default interval the same happens during the last second
# before each heartbeat (seen in test_status_of_a_live_job_then_of_its_history: a live row with
# durable_seq 0, acked_seq 61, pending_records 0, pending_bytes 106).

SLOW_BEAT_WRITER = """
import distwal

w = distwal.init(durability="sync", heartbeat_interval=3600.0)
emit("ready", w.id, os.getpid())
for i in range(int(sys.argv[1])):
    logged(w, {"i": i})
emit("logged")
while True:
    time.sleep(0.05)
"""


def test_status_counts_what_a_dead_writer_left_on_disk(tmp_path, wal_dir, seed):
    n = random.Random(seed).randrange(1, 200)
    context = f"(seed={seed}, {n} records)"
    script = write_script(tmp_path, "slow_beat.py", SLOW_BEAT_WRITER)
    with run_python(tmp_path, script, [str(n)], env=job_env(wal_dir, DISTWAL_DISABLE_SENDER="1")) as writer:
        writer.wait_for("logged", timeout=30)
        assert len(writer.acks()) == 1 and max(next(iter(writer.acks().values()))) == n, writer.describe()
        writer.kill()
        assert writer.wait() == -signal.SIGKILL
    [row] = distwal.status(wal_dir)["writers"]
    assert row["state"] == "dead" and row["pending_bytes"] > 0, f"{row} {context}"
    assert (row["durable_seq"], row["records"], row["pending_records"]) == (n, n, n), (
        f"a dead writer left {n} durable records; status says {row} {context}"
    )


def test_status_durable_seq_is_never_below_acked_seq(tmp_path, wal_dir, seed):
    n = random.Random(seed).randrange(1, 200)
    context = f"(seed={seed}, {n} records)"
    script = write_script(tmp_path, "slow_beat.py", SLOW_BEAT_WRITER)
    with run_job(tmp_path, wal_dir, [PY, str(script), str(n)], env=job_env(DISTWAL_LEASE_S="2")) as job:
        job.wait_for("logged", timeout=30)

        def all_acked():
            rows = distwal.status(wal_dir)["writers"]
            return rows if len(rows) == 1 and rows[0]["acked_seq"] == n else None

        [row] = wait_until(all_acked, 30, f"the sidecar to deliver {n} records", lambda: str(distwal.status(wal_dir)))
        assert row["state"] == "live", row
        assert row["acked_seq"] <= row["durable_seq"], f"acknowledged records are durable: {row} {context}"
        assert row["pending_records"] == row["durable_seq"] - row["acked_seq"] == 0, f"{row} {context}"


def test_status_shows_no_alive_leader_after_drain_exits(tmp_path, wal_dir):
    env = cluster_env(wal_dir, f"sqlite:///{wal_dir}/collected.db", sender=False)
    with start_writer(tmp_path, env, "w", count=3) as writer:
        assert writer.wait() == 0, writer.describe()
    drained = run_cli(["drain", str(wal_dir), "--timeout", "30"], env=job_env(DISTWAL_LEASE_S="600"))
    assert drained.returncode == 0
    leader = distwal.status(wal_dir)["leader"]
    assert leader["kind"] == "drain", leader
    assert leader["alive"] is False, f"the drain process exited, yet status says its lease is alive: {leader}"
