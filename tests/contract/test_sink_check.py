"""Sink.check(): the preflight `distwal run` and `distwal drain` do before sending.

Against real sinks: SQLite and JSONL files, an IngestServer on 127.0.0.1 (with and without a
token, answering errors), a refused port. check() stores nothing, and a sink with nothing to
check (MockSink, and any third-party sink) passes.
"""

from __future__ import annotations

import socket
from typing import Iterator

import pytest
from helpers.cluster import Fault, FaultServer

from distwal._exceptions import SinkPaused, SinkUnavailable
from distwal._preflight import check_sink
from distwal.sinks import MockSink
from distwal.sinks.http import HTTPSink
from distwal.sinks.jsonl import JSONLSink
from distwal.sinks.sqlite import SQLiteSink

pytestmark = pytest.mark.timeout(60)

TOKEN = "preflight-token-7c1d"


@pytest.fixture
def server(tmp_path) -> Iterator[FaultServer]:
    with FaultServer(tmp_path / "server.db", token=TOKEN, probes=True) as running:
        yield running


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/ingest"  # closed again: connections are refused


def test_http_check_passes_with_the_right_token_and_stores_nothing(server):
    sink = HTTPSink(server.url, token=TOKEN)
    try:
        sink.check()
    finally:
        sink.close()
    assert len(server.requests()) == 1 and server.requests()[0].envelopes == []
    assert server.count() == 0 and server.requests_table() == []  # no record, no fence, no logged batch


def test_http_check_with_a_wrong_token_is_SinkPaused_without_the_token_in_it(server):
    sink = HTTPSink(server.url, token="wrong-" + TOKEN)
    try:
        with pytest.raises(SinkPaused, match="401") as info:
            sink.check()
    finally:
        sink.close()
    assert TOKEN not in str(info.value)


def test_http_check_of_a_refused_port_is_SinkUnavailable():
    sink = HTTPSink(refused_url())
    try:
        with pytest.raises(SinkUnavailable, match="ConnectError"):
            sink.check()
    finally:
        sink.close()


@pytest.mark.parametrize(("status", "error"), [(503, SinkUnavailable), (500, SinkUnavailable), (404, SinkPaused),
                                                (403, SinkPaused), (409, None), (422, None), (200, None)])
def test_http_check_maps_answers_to_ready_or_the_error_a_batch_would_get(server, status, error):
    server.plan = lambda req: Fault.reply(status)
    sink = HTTPSink(server.url, token=TOKEN)
    try:
        if error is None:
            sink.check()  # it answered and did not refuse us
        else:
            with pytest.raises(error):
                sink.check()
    finally:
        sink.close()


def test_sqlite_and_jsonl_checks_pass_on_writable_files(tmp_path):
    for sink in (SQLiteSink(str(tmp_path / "a.db")), JSONLSink(str(tmp_path / "a.jsonl"))):
        try:
            sink.check()
        finally:
            sink.close()


def test_the_default_check_passes_for_a_sink_that_defines_none():
    MockSink(lambda batch: None).check()


def test_check_sink_says_ready_or_what_is_wrong_in_one_line(tmp_path, server, monkeypatch):
    monkeypatch.delenv("DISTWAL_TOKEN", raising=False)
    ok, line = check_sink(f"sqlite:///{tmp_path / 'a.db'}")
    assert ok and line == f"sink sqlite:///{tmp_path / 'a.db'} ready"
    ok, line = check_sink(f"sqlite:///{tmp_path / 'missing' / 'a.db'}")
    assert not ok and "does not exist" in line and "\n" not in line, line
    ok, line = check_sink(refused_url())
    assert not ok and "not ready" in line and "ConnectError" in line, line
    ok, line = check_sink(server.url)  # DISTWAL_TOKEN unset in this process: the server wants one
    assert not ok and "401" in line, line
