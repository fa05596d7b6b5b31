"""The OTLP sink on its own: its wire bytes against opentelemetry-proto's classes, the record
shape of the contract, the OTLP/HTTP status codes against a real receiver on 127.0.0.1,
partial_success, the URL, DISTWAL_SERVICE_NAME, the token, and the missing-package error.
(The contract suite in test_sinks.py runs over this sink too.)
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Any

import orjson
import pytest
from helpers.otlp import OTLPReceiver, Reply, python_value  # first: skips without opentelemetry-proto
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from distwal._config import Config
from distwal._envelope import envelope_prefix
from distwal._exceptions import ConfigError, SinkPaused, SinkRejected, SinkTooLarge, SinkUnavailable
from distwal.sinks import Batch, Chunk
from distwal.sinks.otlp import OTLPSink, encode_request, endpoint_of

pytestmark = pytest.mark.timeout(60)

META = {"host": "node7", "pid": 4242, "rank": 3, "run": "job-1", "local_rank": 1, "attempt": 2}


def chunk_of(writer: str, first: int, records: list[Any], meta: dict[str, Any] | None = None,
             ts: float = 1_700_000_000.25) -> Chunk:
    meta = META if meta is None else meta
    prefix = envelope_prefix(writer, meta)
    return Chunk(writer, meta, prefix, first, [ts + i for i in range(len(records))],
                 [orjson.dumps(r) for r in records])


def decoded(batch: Batch, service: str = "distwal") -> ExportLogsServiceRequest:
    return ExportLogsServiceRequest.FromString(encode_request(batch, service))


# -- the bytes, against opentelemetry-proto's own classes ----------------------------------------


def reference_value(value: Any) -> AnyValue:
    """What the contract says a JSON value becomes, built with the proto classes."""
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if -(1 << 63) <= value < (1 << 63):
            return AnyValue(int_value=value)
        return AnyValue(string_value=str(value))
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        if value in ("NaN", "Infinity", "-Infinity"):
            return AnyValue(double_value=float(value.replace("Infinity", "inf")))
        return AnyValue(string_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[reference_value(v) for v in value]))
    return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=reference_value(v))
                                                      for k, v in value.items()]))


json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text()
                | st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", ""]))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
records = st.dictionaries(st.text(max_size=12), json_values, max_size=8)


# Records of a few shapes (the same keys again and again, as a training loop logs them) with
# values of changing types: the encoder's per-shape plans, their fallback and new plans.
shaped_records = st.dictionaries(st.sampled_from(["loss", "step", "tags"]), json_values | st.fixed_dictionaries(
    {"a": json_scalars, "b": json_scalars}), max_size=3)


@given(st.lists(records, min_size=1, max_size=5) | st.lists(shaped_records, min_size=1, max_size=80),
       st.integers(min_value=1, max_value=1 << 40) | st.sampled_from([16383, 16384, (1 << 28) - 1]))
def test_log_records_decode_to_what_the_proto_classes_build(batch_records, first):
    batch = Batch(7, "dom", (chunk_of("writer-a", first, batch_records),))
    (resource_logs,) = decoded(batch).resource_logs
    (scope_logs,) = resource_logs.scope_logs
    assert len(scope_logs.log_records) == len(batch_records)
    for i, (got, record) in enumerate(zip(scope_logs.log_records, batch_records)):
        attributes = [KeyValue(key=k, value=reference_value(v)) for k, v in (
            ("distwal.writer", "writer-a"), ("distwal.epoch", 7), ("distwal.run", "job-1"), ("distwal.rank", 3),
            ("distwal.local_rank", 1), ("distwal.attempt", 2), ("distwal.seq", first + i))]
        want = LogRecord(time_unix_nano=int((1_700_000_000.25 + i) * 1e9), body=reference_value(record),
                         attributes=attributes)
        if "NaN" in orjson.dumps(record).decode():  # NaN != NaN: compare the bytes of both instead
            assert got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
        else:
            assert got == want


def test_a_shape_whose_types_change_for_good_is_encoded_right_before_and_after_its_new_plan():
    records = [{"x": 1.5, "n": {"a": 1.0}}] + [{"x": f"s{i}", "n": {"a": i}} for i in range(100)] + [{"x": 2.5, "n": {}}]
    batch = Batch(1, "d", (chunk_of("w", 1, records),))
    got = [python_value(lr.body) for lr in decoded(batch).resource_logs[0].scope_logs[0].log_records]
    assert got == records


def test_the_three_special_strings_become_doubles_and_nothing_else_does():
    batch = Batch(1, "d", (chunk_of("w", 1, [{"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": "nan",
                                              "e": "inf", "f": 1e308, "g": -0.0}]),))
    body = python_value(decoded(batch).resource_logs[0].scope_logs[0].log_records[0].body)
    assert math.isnan(body["a"]) and body["b"] == math.inf and body["c"] == -math.inf
    assert body["d"] == "nan" and body["e"] == "inf"  # only log()'s three spellings are numbers
    assert body["f"] == 1e308 and math.copysign(1, body["g"]) == -1


def test_one_resource_per_host_and_pid_with_the_contracts_attributes():
    other = dict(META, host="node8", pid=17, rank=None)  # no rank: no distwal.rank attribute
    batch = Batch(2, "d", (chunk_of("w1", 1, [{"i": 1}]), chunk_of("w2", 1, [{"i": 2}], other),
                           chunk_of("w1", 2, [{"i": 3}])))
    request = decoded(batch, service="trainer")
    resources = [{kv.key: python_value(kv.value) for kv in r.resource.attributes} for r in request.resource_logs]
    assert resources == [{"service.name": "trainer", "host.name": "node7", "process.pid": 4242},
                         {"service.name": "trainer", "host.name": "node8", "process.pid": 17}]
    first, second = request.resource_logs
    assert [s.scope.name for s in first.scope_logs] == ["distwal"]
    seqs = [[python_value(kv.value) for kv in lr.attributes if kv.key == "distwal.seq"][0]
            for lr in first.scope_logs[0].log_records]
    assert seqs == [1, 2]  # both chunks of w1 under one resource
    (w2,) = second.scope_logs[0].log_records
    assert "distwal.rank" not in {kv.key for kv in w2.attributes}


def test_timestamps_keep_microseconds():
    ts = 1_732_200_000.123456
    batch = Batch(1, "d", (chunk_of("w", 1, [{}], ts=ts),))
    nanos = decoded(batch).resource_logs[0].scope_logs[0].log_records[0].time_unix_nano
    assert abs(nanos - 1_732_200_000_123_456_000) < 1000


@pytest.mark.parametrize(("line", "ts"), [(b"{not json", 1.0), (b"{}", float("nan")), (b"{}", float("inf")),
                                          (b"{}", -5.0)])
def test_a_record_that_cannot_be_encoded_is_SinkRejected_so_the_sender_keeps_it_as_a_dead_letter(line, ts):
    bad = Chunk("w", META, b"", 1, [ts], [line])
    with OTLPReceiver() as receiver:
        sink = OTLPSink(receiver.sink_url)
        try:
            with pytest.raises(SinkRejected, match="cannot be encoded"):
                sink.write(Batch(1, "d", (bad,)))
        finally:
            sink.close()
        assert receiver.requests() == []


# -- the URL, the service name, the missing package -------------------------------------------------


@pytest.mark.parametrize(("url", "endpoint"), [
    ("otlp+http://collector:4318/v1/logs", "http://collector:4318/v1/logs"),
    ("otlp+https://otel.example.com/v1/logs", "https://otel.example.com/v1/logs"),
    ("otlp+http://collector:4318", "http://collector:4318/v1/logs"),
    ("otlp+http://collector:4318/", "http://collector:4318/v1/logs"),
    ("OTLP+HTTP://collector:4318/custom/logs", "http://collector:4318/custom/logs"),
])
def test_endpoint_of_sink_urls(url, endpoint):
    assert endpoint_of(url) == endpoint


@pytest.mark.parametrize("url", ["otlp+grpc://collector:4317", "otlp+http://", "otlp://collector:4318"])
def test_a_bad_otlp_url_is_one_clear_ConfigError(url):
    with pytest.raises(ConfigError, match="otlp\\+http://host:4318/v1/logs"):
        endpoint_of(url)


def test_config_accepts_otlp_urls(tmp_path):
    config = Config.load(dir=str(tmp_path / "wal"), sink="otlp+https://otel.example.com/v1/logs")
    assert config.sink == "otlp+https://otel.example.com/v1/logs"


def test_service_name_comes_from_DISTWAL_SERVICE_NAME(monkeypatch):
    batch = Batch(1, "d", (chunk_of("w", 1, [{"i": 1}]),))
    with OTLPReceiver() as receiver:
        for env, want in ((None, "distwal"), ("bert-pretrain", "bert-pretrain"), ("  ", "distwal")):
            if env is None:
                monkeypatch.delenv("DISTWAL_SERVICE_NAME", raising=False)
            else:
                monkeypatch.setenv("DISTWAL_SERVICE_NAME", env)
            sink = OTLPSink(receiver.sink_url)
            try:
                sink.write(batch)
            finally:
                sink.close()
            assert receiver.received()[-1].resource["service.name"] == want


MISSING = """
import sys
sys.modules["opentelemetry"] = None  # as if opentelemetry-proto were not installed
from distwal._config import Config
from distwal._exceptions import ConfigError
for attempt in ("config", "import"):
    try:
        if attempt == "config":
            Config.load(dir=sys.argv[1], sink="otlp+http://127.0.0.1:4318/v1/logs")
        else:
            import distwal.sinks.otlp
    except ConfigError as exc:
        print(attempt, exc)
"""


def test_without_opentelemetry_proto_the_error_is_one_line_naming_the_pip_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTWAL_")}
    done = subprocess.run([sys.executable, "-c", MISSING, str(tmp_path / "wal")], env=env, capture_output=True,
                          text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["config", "import"], (done.stdout, done.stderr)
    for line in lines:
        assert "opentelemetry-proto" in line and "pip install 'distwal[otlp]'" in line, line


# -- OTLP/HTTP responses, against a real receiver ----------------------------------------------------


@pytest.fixture
def receiver():
    with OTLPReceiver(probes=True) as server:  # these tests call check() themselves
        yield server


def write_one(receiver: OTLPReceiver, **options: Any) -> OTLPSink:
    sink = OTLPSink(receiver.sink_url, **options)
    try:
        sink.write(Batch(1, "d", (chunk_of("writer-a", 1, [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]),)))
    finally:
        sink.close()
    return sink


def test_a_batch_arrives_as_gzip_protobuf_with_every_record_once(receiver):
    write_one(receiver)
    (req,) = receiver.requests()
    assert req.headers["Content-Type"] == "application/x-protobuf" and req.headers["Content-Encoding"] == "gzip"
    assert "Authorization" not in req.headers
    assert [(r.writer, r.seq, r.data) for r in receiver.received()] == [
        ("writer-a", 1, {"step": 1, "loss": 0.5}), ("writer-a", 2, {"step": 2, "loss": 0.25})]


@pytest.mark.parametrize(("status", "error"), [
    (400, SinkRejected), (422, SinkRejected), (413, SinkTooLarge), (401, SinkPaused), (403, SinkPaused),
    (404, SinkPaused), (405, SinkPaused), (415, SinkPaused), (408, SinkUnavailable), (429, SinkUnavailable),
    (500, SinkUnavailable), (502, SinkUnavailable), (503, SinkUnavailable), (504, SinkUnavailable),
])
def test_otlp_status_maps_to_its_sink_error(receiver, status, error):
    receiver.plan = lambda req: Reply(status)
    with pytest.raises(error) as info:
        write_one(receiver)
    assert type(info.value) is error and str(status) in str(info.value)
    assert receiver.received() == []


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retryable_statuses_carry_retry_after(receiver, status):
    receiver.plan = lambda req: Reply(status, {"Retry-After": "7"})
    with pytest.raises(SinkUnavailable) as info:
        write_one(receiver)
    assert info.value.retry_after == 7


def test_a_google_rpc_status_body_is_quoted_in_the_error(receiver):
    message = "log record body too deep"
    status_bytes = b"\x08\x03" + b"\x12" + bytes([len(message)]) + message.encode()  # Status{code: 3, message}
    receiver.plan = lambda req: Reply(400, {"Content-Type": "application/x-protobuf"}, status_bytes)
    with pytest.raises(SinkRejected, match=message):
        write_one(receiver)


def test_partial_success_is_counted_and_logged_never_silent(receiver, caplog):
    receiver.plan = lambda req: Reply(200, rejected=1)
    sink = write_one(receiver)
    assert sink.rejected_records == 1
    assert any("rejected 1" in r.getMessage() and "injected rejection" in r.getMessage() for r in caplog.records)
    receiver.plan = None
    sink = write_one(receiver)
    assert sink.rejected_records == 0  # a full success counts nothing


TOKEN = "tok-8e1f-otlp-secret"


def test_the_token_is_sent_as_bearer_and_never_in_errors(receiver, monkeypatch):
    monkeypatch.setenv("DISTWAL_TOKEN", TOKEN)
    write_one(receiver)
    assert receiver.requests()[0].headers["Authorization"] == f"Bearer {TOKEN}"
    receiver.plan = lambda req: Reply(401, {"Content-Type": "text/plain"},
                                      f"bad credentials: Bearer {TOKEN}".encode())
    with pytest.raises(SinkPaused) as info:
        write_one(receiver)
    assert TOKEN not in str(info.value) and "***" in str(info.value)


def test_a_refused_connection_is_SinkUnavailable():
    from helpers.otlp import free_port

    sink = OTLPSink(f"otlp+http://127.0.0.1:{free_port()}/v1/logs")
    try:
        with pytest.raises(SinkUnavailable):
            sink.write(Batch(1, "d", (chunk_of("w", 1, [{}]),)))
    finally:
        sink.close()


# -- large batches: several requests, each encoded while the one before is on the wire ---------------


@given(st.lists(st.integers(min_value=0, max_value=7), min_size=1, max_size=6), st.integers(min_value=1, max_value=9))
def test_split_keeps_every_record_once_in_order_within_the_size(chunk_sizes, size):
    from distwal.sinks.otlp import _split

    chunks = tuple(chunk_of(f"w{i}", 1, [{"i": j} for j in range(n)]) for i, n in enumerate(chunk_sizes))
    batch = Batch(3, "d", chunks)
    parts = _split(batch, size)
    flat = [(c.writer, c.first_seq + k, line) for p in parts for c in p.chunks for k, line in enumerate(c.lines)]
    want = [(c.writer, c.first_seq + k, line) for c in chunks for k, line in enumerate(c.lines)]
    assert flat == want
    assert all(0 < len(p) <= size for p in parts) or len(batch) == 0
    assert all(p.epoch == 3 and p.domain == "d" for p in parts)


def test_a_large_batch_goes_as_several_requests_every_record_once(receiver):
    batch = Batch(1, "d", (chunk_of("w1", 1, [{"i": i} for i in range(7)]), chunk_of("w2", 1, [{"i": 9}] * 4)))
    sink = OTLPSink(receiver.sink_url, request_records=3)
    try:
        sink.write(batch)
    finally:
        sink.close()
    assert [len(r.records) for r in receiver.requests()] == [3, 3, 3, 2]
    assert [(r.writer, r.seq) for r in receiver.received()] == [("w1", s) for s in range(1, 8)] + [
        ("w2", s) for s in range(1, 5)]


@pytest.mark.parametrize(("status", "error"), [(503, SinkUnavailable), (400, SinkRejected), (401, SinkPaused)])
def test_a_failed_request_fails_the_whole_batch_and_nothing_stays_in_flight(receiver, status, error):
    receiver.plan = lambda req: Reply(status) if req.index == 1 else None
    batch = Batch(1, "d", (chunk_of("w1", 1, [{"i": i} for i in range(10)]),))
    sink = OTLPSink(receiver.sink_url, request_records=3)
    try:
        with pytest.raises(error):
            sink.write(batch)
        assert len(receiver.requests()) == 2  # one request at a time: nothing is sent after the failed one
        receiver.plan = None
        sink.write(batch)  # sent again whole: the first request's records arrive twice (at-least-once)
    finally:
        sink.close()
    assert sorted({r.seq for r in receiver.received()}) == list(range(1, 11))
    assert [r.seq for r in receiver.received()].count(1) == 2


def test_a_stale_epoch_is_stored_and_says_so_in_distwal_epoch(receiver):
    # OTLP cannot fence (documented): a deposed leader's late batch is accepted like any other,
    # and its records name the epoch they were sent under, for whoever queries them.
    sink = OTLPSink(receiver.sink_url)
    try:
        sink.write(Batch(5, "d", (chunk_of("writer-a", 1, [{"i": 1}]),)))
        sink.write(Batch(4, "d", (chunk_of("writer-a", 1, [{"i": 1}]),)))  # no StaleEpoch: nothing to raise it
    finally:
        sink.close()
    assert [(r.writer, r.seq, r.attributes["distwal.epoch"]) for r in receiver.received()] == [
        ("writer-a", 1, 5), ("writer-a", 1, 4)]


# -- check(): the preflight of `distwal run` and `distwal drain` --------------------------------------


def test_check_passes_against_a_collector_and_stores_nothing(receiver):
    from distwal._preflight import check_sink

    ok, line = check_sink(receiver.sink_url)
    assert ok, line
    (probe,) = receiver.requests()
    assert probe.records == [] and receiver.received() == []


@pytest.mark.parametrize(("status", "error"), [(401, SinkPaused), (404, SinkPaused), (503, SinkUnavailable),
                                               (429, SinkUnavailable)])
def test_check_maps_answers_to_the_error_a_batch_would_get(receiver, status, error):
    receiver.plan = lambda req: Reply(status)
    sink = OTLPSink(receiver.sink_url)
    try:
        with pytest.raises(error):
            sink.check()
    finally:
        sink.close()


def test_check_of_a_refused_port_is_SinkUnavailable():
    from helpers.otlp import free_port

    sink = OTLPSink(f"otlp+http://127.0.0.1:{free_port()}/v1/logs")
    try:
        with pytest.raises(SinkUnavailable):
            sink.check()
    finally:
        sink.close()
