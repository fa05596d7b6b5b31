"""The sink contract over the MLflow sink, against a real `mlflow server` (SQLite store, 127.0.0.1).

What MLflow holds is read back through its REST API. The MLflow sink stores metric points,
not envelopes, so the contract reads as: every record's numeric fields are points of its
writer's run at (step, value), once; a resent batch adds none; a stale epoch is stored all
the same (MLflow cannot fence, documented). Error mapping and the bearer token are checked
against a small HTTP server that answers as MLflow would.
"""

from __future__ import annotations

import http.server
import json
import math
import socket
import sys
import threading
import time
import uuid
from typing import Any, Iterator

import orjson
import pytest
from helpers.mlflow_server import MlflowServer, tags, timeout_for

from distwal._envelope import envelope_prefix
from distwal._exceptions import ConfigError, SinkPaused, SinkRejected, SinkTooLarge, SinkUnavailable
from distwal.sinks import Batch, Chunk, sink_from_url
from distwal.sinks.mlflow import MLflowSink, pack, parse_url, record_entries

META = {"host": "node7", "pid": 4242, "rank": 3, "run": "job-1", "local_rank": 1, "attempt": 2}


def chunk(writer: str, first: int, records: list[dict[str, Any]], meta: dict[str, Any] | None = None,
          ts0: float = 1_700_000_000.0) -> Chunk:
    meta = meta or META
    prefix = envelope_prefix(writer, meta)
    stamps = [ts0 + first + i for i in range(len(records))]  # a resent seq has its first timestamp
    return Chunk(writer, meta, prefix, first, stamps, [orjson.dumps(r) for r in records])


def batch(*chunks: Chunk, epoch: int = 1) -> Batch:
    return Batch(epoch, "d0main", tuple(chunks))


def numbered(writer: str, first: int, count: int, meta: dict[str, Any] | None = None) -> Chunk:
    """Records like the main contract suite's: `n` = seq (a metric), plus text (not one)."""
    return chunk(writer, first, [{"writer": writer, "n": s, "text": "é\n\"x\""} for s in range(first, first + count)],
                 meta)


def deliver(sink: MLflowSink, part: Batch, sent: list[int] | None = None) -> None:
    """Write `part` as the sender does: halves when the sink says SinkTooLarge."""
    try:
        sink.write(part)
        if sent is not None:
            sent.append(len(part))
    except SinkTooLarge:
        assert len(part) > 1
        for half in part.halves():
            deliver(sink, half, sent)


def fresh() -> str:
    return f"exp-{uuid.uuid4().hex[:10]}"


def sink_for(server: MlflowServer, experiment: str, **kwargs: Any) -> MLflowSink:
    sink = sink_from_url(f"mlflow+{server.url}?experiment={experiment}") if not kwargs else MLflowSink(
        f"mlflow+{server.url}?experiment={experiment}", **kwargs)
    assert isinstance(sink, MLflowSink)
    return sink


def the_run(server: MlflowServer, experiment: str, writer: str) -> dict[str, Any]:
    runs = server.writer_runs(experiment).get(writer, [])
    assert len(runs) == 1, f"{len(runs)} active runs for {writer}: {[r['info']['run_id'] for r in runs]}"
    return runs[0]


def points(server: MlflowServer, experiment: str, writer: str, key: str) -> list[tuple[int, float]]:
    return [(step, value) for step, value, _ in server.history(the_run(server, experiment, writer)["info"]["run_id"],
                                                               key)]


# -- the contract, against the real server -------------------------------------------------------


@pytest.mark.process
@pytest.mark.timeout(timeout_for(90))
def test_a_batch_becomes_points_of_one_child_run_per_writer_under_one_parent(mlflow_server):
    exp = fresh()
    sink = sink_for(mlflow_server, exp)
    try:
        deliver(sink, batch(numbered("writer-a", 1, 3), numbered("writer-b", 7, 2, {**META, "rank": 4})))
    finally:
        sink.close()
    assert points(mlflow_server, exp, "writer-a", "n") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert points(mlflow_server, exp, "writer-b", "n") == [(7, 7.0), (8, 8.0)]
    runs = mlflow_server.runs(exp)
    parents = [r for r in runs if "distwal.run" in tags(r)]
    assert len(runs) == 3 and len(parents) == 1, [tags(r) for r in runs]
    parent = parents[0]
    assert parent["info"]["run_name"] == "job-1" and tags(parent)["distwal.run"] == "job-1"
    child = the_run(mlflow_server, exp, "writer-a")
    assert tags(child)["mlflow.parentRunId"] == parent["info"]["run_id"]
    assert {k: tags(child)[k] for k in ("distwal.writer", "distwal.rank", "distwal.host", "distwal.attempt")} == {
        "distwal.writer": "writer-a", "distwal.rank": "3", "distwal.host": "node7", "distwal.attempt": "2"}
    assert tags(the_run(mlflow_server, exp, "writer-b"))["distwal.rank"] == "4"


@pytest.mark.process
@pytest.mark.timeout(timeout_for(90))
def test_the_metric_mapping_step_ts_nesting_non_finite_and_ignored_fields(mlflow_server):
    exp = fresh()
    records = [
        {"step": 10, "loss": 0.5, "train": {"acc": 1, "deep": {"x": 2.5}}, "note": "text", "ok": True, "xs": [1]},
        {"step": 11, "loss": "NaN", "up": "Infinity", "down": "-Infinity", "ts": 1_800_000_000.25},
        {"loss": 7, "step": "12"},  # a non-integer step: the seq is the step
    ]
    sink = sink_for(mlflow_server, exp)
    try:
        sink.write(batch(chunk("writer-m", 5, records, ts0=1_700_000_000.5)))
    finally:
        sink.close()
    run_id = the_run(mlflow_server, exp, "writer-m")["info"]["run_id"]
    metrics = {m["key"] for m in mlflow_server.run(run_id)["data"].get("metrics", [])}
    assert metrics == {"loss", "train/acc", "train/deep/x", "up", "down"}, metrics
    loss = mlflow_server.history(run_id, "loss")
    assert [(s, t) for s, _, t in loss] == [(7, 1_700_000_007_500), (10, 1_700_000_005_500), (11, 1_800_000_000_250)]
    assert loss[0][1] == 7.0 and loss[1][1] == 0.5 and math.isnan(loss[2][1])
    # MLflow's SQL store keeps infinities as the largest doubles (its sanitize_metric_value).
    assert mlflow_server.history(run_id, "up")[0][1] in (math.inf, sys.float_info.max)
    assert mlflow_server.history(run_id, "down")[0][1] in (-math.inf, -sys.float_info.max)
    assert mlflow_server.history(run_id, "train/deep/x") == [(10, 2.5, 1_700_000_005_500)]


@pytest.mark.process
@pytest.mark.timeout(timeout_for(90))
def test_a_duplicate_batch_stores_no_point_twice(mlflow_server):
    """MLflow's SQL store keys a point on (run, key, timestamp, step, value) and log-batch skips
    the ones it holds: this is what the sink relies on for a resent batch."""
    exp = fresh()
    sink = sink_for(mlflow_server, exp)
    try:
        once = batch(numbered("writer-a", 1, 4))
        sink.write(once)
        sink.write(once)
        sink.write(batch(numbered("writer-a", 3, 4)))  # overlaps 3..4, adds 5..6
    finally:
        sink.close()
    assert points(mlflow_server, exp, "writer-a", "n") == [(s, float(s)) for s in range(1, 7)]


@pytest.mark.process
@pytest.mark.timeout(timeout_for(90))
def test_a_new_sink_after_a_leader_change_finds_the_same_runs(mlflow_server):
    exp = fresh()
    first = sink_for(mlflow_server, exp)
    try:
        first.write(batch(numbered("writer-a", 1, 2)))
    finally:
        first.close()
    second = sink_for(mlflow_server, exp)  # the next leader: nothing cached
    try:
        second.write(batch(numbered("writer-a", 1, 4)))
    finally:
        second.close()
    assert len(mlflow_server.runs(exp)) == 2  # one parent, one child
    assert points(mlflow_server, exp, "writer-a", "n") == [(s, float(s)) for s in range(1, 5)]


@pytest.mark.process
@pytest.mark.timeout(timeout_for(90))
def test_a_stale_epoch_is_stored_all_the_same_mlflow_cannot_fence(mlflow_server):
    exp = fresh()
    sink = sink_for(mlflow_server, exp)
    try:
        sink.write(batch(numbered("writer-a", 1, 1), epoch=5))
        sink.write(batch(numbered("writer-a", 2, 1), epoch=4))  # documented: no StaleEpoch
    finally:
        sink.close()
    assert points(mlflow_server, exp, "writer-a", "n") == [(1, 1.0), (2, 2.0)]


@pytest.mark.process
@pytest.mark.timeout(timeout_for(90))
def test_a_metric_key_mlflow_refuses_is_SinkRejected_and_its_half_alone_is_refused(mlflow_server):
    exp = fresh()
    sink = sink_for(mlflow_server, exp)
    records = [{"step": i, "loss": float(i)} for i in range(6)]
    records[4]["bad*key"] = 1.0
    whole = batch(chunk("writer-a", 1, records))
    try:
        with pytest.raises(SinkRejected, match="bad\\*key"):
            sink.write(whole)
        good, bad = whole.halves()[0], whole.halves()[1]  # what the sender does: bisect
        sink.write(good)
        with pytest.raises(SinkRejected):
            sink.write(bad)
    finally:
        sink.close()
    assert points(mlflow_server, exp, "writer-a", "loss") == [(i, float(i)) for i in range(3)]


@pytest.mark.process
@pytest.mark.timeout(timeout_for(90))
def test_params_and_tags_go_to_the_writers_run_and_a_changed_param_is_refused(mlflow_server):
    exp = fresh()
    sink = sink_for(mlflow_server, exp)
    try:
        sink.write(batch(chunk("writer-p", 1, [{"mlflow.params": {"lr": "0.1", "layers": 4}},
                                               {"mlflow.tags": {"stage": "warmup"}},
                                               {"mlflow.metrics": {"step": 3.0}, "step": 1}])))
        sink.write(batch(chunk("writer-p", 1, [{"mlflow.params": {"lr": "0.1", "layers": 4}}])))  # resent: fine
        with pytest.raises(SinkRejected):
            sink.write(batch(chunk("writer-p", 4, [{"mlflow.params": {"lr": "0.2"}}])))
    finally:
        sink.close()
    run = the_run(mlflow_server, exp, "writer-p")
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params == {"lr": "0.1", "layers": "4"}
    assert tags(run)["stage"] == "warmup"
    assert mlflow_server.history(run["info"]["run_id"], "step") == [(1, 3.0, 1_700_000_003_000)]


@pytest.mark.process
@pytest.mark.timeout(timeout_for(90))
@pytest.mark.parametrize(("end", "status"), [
    (None, "FINISHED"), ({"reason": "finished"}, "FINISHED"), ({"reason": "exception"}, "FAILED"),
    ({"reason": "exit", "code": 3}, "FAILED"), ({"reason": "signal"}, "KILLED"),
    ({"reason": "lost", "ts": 1_700_000_100.5}, "KILLED"),
])
def test_writer_done_ends_the_run_with_the_writers_end(mlflow_server, end, status):
    exp = fresh()
    sink = sink_for(mlflow_server, exp)
    try:
        sink.write(batch(numbered("writer-e", 1, 1)))
        sink.writer_done("writer-e", META, end)
    finally:
        sink.close()
    info = the_run(mlflow_server, exp, "writer-e")["info"]
    assert info["status"] == status
    if end and "ts" in end:
        assert int(info["end_time"]) == 1_700_000_100_500


@pytest.mark.process
@pytest.mark.timeout(timeout_for(120))
def test_a_batch_of_more_than_2000_points_asks_to_be_split_and_its_halves_store_each_point_once(
        mlflow_server):
    """A write() must not outlast the leader's lease: past 2,000 points the sink raises SinkTooLarge
    before sending anything, and the sender sends halves (done here as it does)."""
    exp = fresh()
    sink = sink_for(mlflow_server, exp)
    big = batch(numbered("writer-a", 1, 3500), numbered("writer-b", 1, 10))  # 3,510 points: 5 requests
    sent: list[int] = []
    try:
        with pytest.raises(SinkTooLarge):
            sink.write(big)
        deliver(sink, big, sent)
    finally:
        sink.close()
    assert len(sent) > 1 and sum(sent) == 3510, sent
    assert points(mlflow_server, exp, "writer-a", "n") == [(s, float(s)) for s in range(1, 3501)]
    assert points(mlflow_server, exp, "writer-b", "n") == [(s, float(s)) for s in range(1, 11)]


@pytest.mark.process
@pytest.mark.timeout(timeout_for(90))
def test_one_record_blocks_of_one_writer_go_in_one_request(mlflow_server):
    """In sync mode every record is its own WAL block, so a batch holds a chunk per record:
    they share one log-batch request (per writer), not one request each."""
    exp = fresh()
    sink = sink_for(mlflow_server, exp)
    requests: list[int] = []
    real = sink._api.call

    def counting(method: str, endpoint: str, *args: Any, **kwargs: Any) -> Any:
        if endpoint == "runs/log-batch":
            requests.append(len(args[0]["metrics"]))
        return real(method, endpoint, *args, **kwargs)

    sink._api.call = counting  # type: ignore[method-assign]
    try:
        sink.write(batch(*[numbered("writer-s", seq, 1) for seq in range(1, 301)], numbered("writer-t", 1, 5)))
    finally:
        sink.close()
    assert sorted(requests) == [5, 300], requests
    assert points(mlflow_server, exp, "writer-s", "n") == [(s, float(s)) for s in range(1, 301)]


# -- two leaders ---------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.timeout(timeout_for(120))
def test_two_leaders_racing_leave_one_run_per_writer_and_every_point_once(mlflow_server):
    """Two sinks (separate connections, as two leader processes have) write the same writers'
    batches at the same moment, over and over: each writer ends with one active run holding
    each point once. Losers back off with SinkUnavailable, as the sender would retry."""
    exp = fresh()
    writers = [f"writer-{i}" for i in range(6)]
    sinks = [sink_for(mlflow_server, exp), sink_for(mlflow_server, exp)]
    start = threading.Barrier(2)
    retries = [0, 0]
    errors: list[BaseException] = []

    def leader(k: int) -> None:
        try:
            for writer in writers:
                start.wait(30)
                deadline = time.monotonic() + 60
                while True:
                    try:
                        sinks[k].write(batch(numbered(writer, 1, 5)))
                        break
                    except SinkUnavailable as exc:
                        retries[k] += 1
                        assert time.monotonic() < deadline, exc
                        time.sleep(exc.retry_after or 0.2)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=leader, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    for sink in sinks:
        sink.close()
    assert not errors, errors
    print(f"retries after a race: {retries}")
    found = mlflow_server.writer_runs(exp)
    assert sorted(found) == writers
    for writer in writers:
        assert points(mlflow_server, exp, writer, "n") == [(s, float(s)) for s in range(1, 6)], writer
    parents = [r for r in mlflow_server.runs(exp) if "distwal.run" in tags(r)]
    assert len(parents) == 1, [r["info"]["run_id"] for r in parents]
    parent_id = parents[0]["info"]["run_id"]
    assert all(tags(runs[0])["mlflow.parentRunId"] == parent_id for runs in found.values())


@pytest.mark.process
@pytest.mark.timeout(timeout_for(90))
def test_a_run_left_unsettled_by_a_dead_leader_is_waited_for_then_replaced(mlflow_server):
    exp = fresh()
    sink = sink_for(mlflow_server, exp, settle_timeout=2.0)
    try:
        sink.write(batch(numbered("writer-x", 1, 1)))  # the experiment and the parent exist now
        experiment_id = mlflow_server.experiment_id(exp)
        # Another leader created a run for writer-y and died before it settled it.
        orphan = mlflow_server.api("runs/create", {
            "experiment_id": experiment_id, "start_time": int(time.time() * 1000),
            "tags": [{"key": "distwal.writer", "value": "writer-y"}]})["run"]["info"]["run_id"]
        with pytest.raises(SinkUnavailable, match="another leader is creating"):
            sink.write(batch(numbered("writer-y", 1, 2)))
        deadline = time.monotonic() + 30
        while True:
            try:
                sink.write(batch(numbered("writer-y", 1, 2)))
                break
            except SinkUnavailable:
                assert time.monotonic() < deadline, "the orphan run was never replaced"
                time.sleep(0.2)
    finally:
        sink.close()
    run = the_run(mlflow_server, exp, "writer-y")
    assert run["info"]["run_id"] != orphan and tags(run)["distwal.settled"] == "1"
    assert mlflow_server.run(orphan)["info"]["lifecycle_stage"] == "deleted"
    assert points(mlflow_server, exp, "writer-y", "n") == [(1, 1.0), (2, 2.0)]


@pytest.mark.process
@pytest.mark.timeout(timeout_for(90))
def test_a_run_deleted_in_mlflow_is_made_again(mlflow_server):
    exp = fresh()
    sink = sink_for(mlflow_server, exp)
    try:
        sink.write(batch(numbered("writer-d", 1, 1)))
        mlflow_server.api("runs/delete", {"run_id": the_run(mlflow_server, exp, "writer-d")["info"]["run_id"]})
        with pytest.raises(SinkUnavailable, match="active"):
            sink.write(batch(numbered("writer-d", 2, 1)))  # not a dead letter: the run is found again
        sink.write(batch(numbered("writer-d", 2, 1)))
    finally:
        sink.close()
    assert points(mlflow_server, exp, "writer-d", "n") == [(2, 2.0)]


# -- packing within MLflow's limits (no server) ---------------------------------------------------


def test_requests_stay_within_mlflows_per_request_limits():
    entries = [("metrics", {"key": f"m{i}", "value": 1.0, "timestamp": 1, "step": i}) for i in range(2500)]
    entries += [("params", {"key": f"p{i}", "value": "v"}) for i in range(250)]
    entries += [("tags", {"key": f"t{i}", "value": "x" * 5000}) for i in range(250)]
    bodies = list(pack("run", entries))
    for body in bodies:
        n = {k: len(body.get(k, [])) for k in ("metrics", "params", "tags")}
        assert n["metrics"] <= 1000 and n["params"] <= 100 and n["tags"] <= 100 and sum(n.values()) <= 1000, n
        assert len(orjson.dumps(body)) < 1_000_000
    assert sum(len(b.get("metrics", [])) for b in bodies) == 2500
    assert sum(len(b.get("params", [])) for b in bodies) == 250
    assert sum(len(b.get("tags", [])) for b in bodies) == 250


def test_record_entries_skip_bools_strings_and_lists_and_keep_the_three_non_finite_spellings():
    got = list(record_entries({"a": True, "b": "x", "c": [1], "d": None, "e": "NaN", "f": 2**2000, "g": 1}, 9, 1.0))
    assert got == [("metrics", {"key": "e", "value": "NaN", "timestamp": 1000, "step": 9}),
                   ("metrics", {"key": "g", "value": 1.0, "timestamp": 1000, "step": 9})]


@pytest.mark.parametrize(("url", "message"), [
    ("mlflow+http://", "name the MLflow server"),
    ("mlflow+http://h:5000?exp=x", "unknown option 'exp'"),
    ("mlflow+http://h:5000?experiment=", "non-empty experiment"),
    ("mlflow+http://u:secret@h:5000", "DISTWAL_TOKEN"),
    ("mlflow+http://h:99999", "port"),
])
def test_a_malformed_url_is_one_clear_ConfigError(url, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_url(url)
    assert "secret" not in str(info.value)


def test_the_url_gives_base_prefix_and_experiment():
    assert parse_url("mlflow+https://ml.example:8443/tracking/?experiment=exp42") == (
        "https://ml.example:8443/tracking", "exp42")
    assert parse_url("mlflow+http://mlflow:5000") == ("http://mlflow:5000", "distwal")


# -- errors and the token, against a server that answers as MLflow would ---------------------------


class _Answers(http.server.BaseHTTPRequestHandler):
    plan: Any = None
    seen: list[dict[str, Any]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        status, payload = type(self).plan(self.path)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_mlflow() -> Iterator[type[_Answers]]:
    handler = type("Answers", (_Answers,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    handler.url = f"mlflow+http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


TOKEN = "tok-7c1e-mlflow-secret"


@pytest.mark.parametrize(("status", "code", "error"), [
    (401, "UNAUTHENTICATED", SinkPaused), (403, "PERMISSION_DENIED", SinkPaused),
    (500, "INTERNAL_ERROR", SinkUnavailable), (503, "TEMPORARILY_UNAVAILABLE", SinkUnavailable),
    (429, "REQUEST_LIMIT_EXCEEDED", SinkUnavailable), (404, "", SinkPaused),
])
def test_mlflow_answers_map_to_sink_errors_and_never_show_the_token(fake_mlflow, status, code, error):
    fake_mlflow.plan = staticmethod(lambda path: (status, {"error_code": code, "message": f"no: Bearer {TOKEN}"}))
    sink = MLflowSink(fake_mlflow.url, token=TOKEN)
    try:
        with pytest.raises(error) as info:
            sink.write(batch(numbered("writer-a", 1, 1)))
    finally:
        sink.close()
    assert type(info.value) is error and str(status) in str(info.value)
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value.args)
    assert fake_mlflow.seen[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"


def test_the_token_comes_from_DISTWAL_TOKEN(fake_mlflow, monkeypatch):
    monkeypatch.setenv("DISTWAL_TOKEN", TOKEN)
    fake_mlflow.plan = staticmethod(lambda path: (401, {"error_code": "UNAUTHENTICATED", "message": "who?"}))
    sink = sink_from_url(fake_mlflow.url)
    try:
        with pytest.raises(SinkPaused):
            sink.write(batch(numbered("writer-a", 1, 1)))
    finally:
        sink.close()
    assert fake_mlflow.seen[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"


def test_an_invalid_parameter_outside_log_batch_pauses_instead_of_refusing_records(fake_mlflow):
    """A 400 while finding the experiment is a configuration problem, not a bad record: bisecting
    it would make every record a dead letter."""
    fake_mlflow.plan = staticmethod(lambda path: (400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}))
    sink = MLflowSink(fake_mlflow.url)
    try:
        with pytest.raises(SinkPaused):
            sink.write(batch(numbered("writer-a", 1, 1)))
    finally:
        sink.close()


@pytest.mark.process
@pytest.mark.timeout(timeout_for(60))
def test_check_passes_against_the_server_and_stores_nothing(mlflow_server):
    exp = fresh()
    sink = sink_for(mlflow_server, exp)
    try:
        sink.check()
    finally:
        sink.close()
    assert mlflow_server.experiment_id(exp) is None


def test_check_of_a_server_refusing_the_token_is_SinkPaused(fake_mlflow):
    fake_mlflow.plan = staticmethod(lambda path: (401, {"error_code": "UNAUTHENTICATED", "message": "who?"}))
    sink = MLflowSink(fake_mlflow.url, token=TOKEN)
    try:
        with pytest.raises(SinkPaused):
            sink.check()
    finally:
        sink.close()


def test_connection_refused_is_SinkUnavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = MLflowSink(f"mlflow+http://127.0.0.1:{port}")
    try:
        with pytest.raises(SinkUnavailable):
            sink.write(batch(numbered("writer-a", 1, 1)))
        with pytest.raises(SinkUnavailable):
            sink.check()
    finally:
        sink.close()
