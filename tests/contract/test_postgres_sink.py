"""The PostgreSQL sink against a real server (Debian's postgresql, started by the session fixture):
records PostgreSQL refuses, each failure mapped to the error the sender acts on, reconnecting
after a cut connection, passwords kept out of messages, quoted table names, read-back.

The generic contract (a batch stored, duplicates, stale epochs) is in test_sinks.py.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from helpers.postgres import fresh_table

from distwal._envelope import envelope_prefix
from distwal._exceptions import ConfigError, SinkPaused, SinkRejected, SinkUnavailable, StaleEpoch
from distwal.sinks import Batch, Chunk, sink_from_url
from distwal.sinks.postgres import RAW_KEY, PostgresSink, split_url

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]

META = {"host": "node7", "pid": 4242, "rank": 3, "run": "job-1", "local_rank": 1, "attempt": 0}


def batch_of(lines: list[bytes], epoch: int = 1, writer: str = "writer-a", first: int = 1,
             meta: dict[str, Any] | None = None, domain: str = "dom") -> Batch:
    meta = META if meta is None else meta
    prefix = envelope_prefix(writer, meta)
    ts = [1_700_000_000.25 + i for i in range(len(lines))]
    return Batch(epoch, domain, (Chunk(writer, meta, prefix, first, ts, lines),))


def stored(server: Any, table: str) -> dict[int, str]:
    if server.sql("SELECT to_regclass(%s) IS NULL", f'"{table}"') == [(True,)]:
        return {}
    return {seq: data for seq, data in server.sql(f'SELECT seq, data::text FROM "{table}" ORDER BY seq')}


@pytest.fixture
def pg(postgres_server):
    return postgres_server


@pytest.fixture
def table() -> str:
    return fresh_table()


@pytest.fixture
def sink(pg, table):
    sink = sink_from_url(pg.url(table=table))
    assert isinstance(sink, PostgresSink)
    yield sink
    sink.close()


# -- records PostgreSQL refuses ----------------------------------------------------------------


def test_a_nul_record_among_good_ones_is_stored_in_its_lossless_form_and_read_back_exactly(pg, table, sink):
    odd = {"text": "a\x00b", "nested": {"k": "\x00"}}
    lines = [orjson.dumps({"i": 0}), orjson.dumps(odd), orjson.dumps({"i": 2, "path": "C:\\dir\ttab"})]
    sink.write(batch_of(lines))
    rows = stored(pg, table)
    assert sorted(rows) == [1, 2, 3]
    wrapped = orjson.loads(rows[2])
    assert set(wrapped) == {RAW_KEY} and orjson.loads(wrapped[RAW_KEY]) == odd  # the documented form
    assert orjson.loads(rows[3]) == {"i": 2, "path": "C:\\dir\ttab"}  # backslashes and tabs survive COPY
    back = {e["seq"]: e["data"] for e in sink.read()}
    assert back == {1: {"i": 0}, 2: odd, 3: {"i": 2, "path": "C:\\dir\ttab"}}


@pytest.mark.parametrize("line", [b'{"loss": NaN}', b'{"loss": 1}\xff', b'{"loss":'])
def test_a_record_jsonb_refuses_is_SinkRejected_and_stores_nothing_of_its_batch(pg, table, sink, line):
    with pytest.raises(SinkRejected):
        sink.write(batch_of([orjson.dumps({"i": 0}), line]))
    assert stored(pg, table) == {}  # one transaction: nothing half-stored, and the fence rolled back
    sink.write(batch_of([orjson.dumps({"i": 0})]))  # the sink goes on (the sender bisected to the odd one)
    assert sorted(stored(pg, table)) == [1]


def test_nan_as_log_writes_it_today_and_as_the_value_rule_spells_it_is_stored(pg, table, sink):
    lines = [orjson.dumps({"loss": float("nan")}), b'{"loss":"NaN","gn":"Infinity","lo":"-Infinity"}']
    sink.write(batch_of(lines))
    rows = stored(pg, table)
    assert orjson.loads(rows[1]) == {"loss": None}
    assert orjson.loads(rows[2]) == {"loss": "NaN", "gn": "Infinity", "lo": "-Infinity"}


def test_odd_metadata_is_stored_as_null_instead_of_stalling_the_batch(pg, table, sink):
    meta = {"host": "h\x00st", "pid": 2**40, "rank": "3", "run": None, "local_rank": True, "attempt": -1}
    sink.write(batch_of([b"{}"], meta=meta))
    (row,) = pg.sql(f'SELECT host, pid, rank, run, local_rank, attempt FROM "{table}"')
    assert row == ("h\ufffdst", None, None, None, None, -1)


# -- fencing ----------------------------------------------------------------------------------


def test_two_sinks_on_one_table_fence_each_other(pg, table):
    a, b = PostgresSink(pg.url(table=table)), PostgresSink(pg.url(table=table))
    try:
        a.write(batch_of([b"{}"], epoch=3))
        b.write(batch_of([b"{}"], epoch=4, first=2))
        with pytest.raises(StaleEpoch):
            a.write(batch_of([b"{}"], epoch=3, first=3))
        assert sorted(stored(pg, table)) == [1, 2]
        assert pg.sql(f'SELECT epoch FROM "{table}_fence"') == [(4,)]
        assert [e for (e,) in pg.sql(f'SELECT epoch FROM "{table}" ORDER BY seq')] == [3, 4]
    finally:
        a.close()
        b.close()


def test_a_resent_batch_after_a_lost_commit_reply_stores_nothing_twice(pg, table, sink):
    first = batch_of([orjson.dumps({"i": i}) for i in range(5)])
    sink.write(first)
    pg.terminate_backends()  # the connection the reply would have come back on is gone
    overlapping = batch_of([orjson.dumps({"i": i}) for i in range(3, 8)], first=4)
    with pytest.raises(SinkUnavailable):
        sink.write(overlapping)
    sink.write(first)  # the sender resends what it never saw acknowledged
    sink.write(overlapping)
    assert sorted(stored(pg, table)) == list(range(1, 9))


def test_a_commit_whose_reply_is_lost_is_SinkUnavailable_and_its_retry_stores_nothing_twice(pg, table, sink):
    """The server commits, the reply never arrives: the commit is held (a synchronous standby
    that does not exist), the connection is cut while it waits (PostgreSQL keeps the commit),
    the sink reports the failure, and the sender's retry of the same batch is a no-op."""
    import threading

    batch = batch_of([orjson.dumps({"i": i}) for i in range(50)])
    sink.write(batch_of([b"{}"], first=100))  # connected, tables made
    outcome: list[BaseException | None] = []
    pg.admin("ALTER SYSTEM SET synchronous_standby_names = 'nobody'", "SELECT pg_reload_conf()")
    try:
        # pg_reload_conf() only signals: the postmaster rereads the file, then signals every backend,
        # and a backend applies it before its next command. Once a new connection sees the setting,
        # the sink's backend has been signalled, so the batch below is committed under it.
        deadline = time.monotonic() + 30
        while pg.sql("SHOW synchronous_standby_names") != [("nobody",)]:
            assert time.monotonic() < deadline, "the configuration was never reloaded"
            time.sleep(0.02)

        def send() -> None:
            try:
                sink.write(batch)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        with pg.connect(superuser=True) as admin:
            deadline = time.monotonic() + 30
            while not admin.execute("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'").fetchall():
                assert time.monotonic() < deadline, "the commit never waited for the standby"
                time.sleep(0.02)
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
    finally:
        pg.admin("ALTER SYSTEM RESET synchronous_standby_names", "SELECT pg_reload_conf()")
    sender.join(30)  # the terminated backend lets go of its client once the wait is called off
    assert len(outcome) == 1 and isinstance(outcome[0], SinkUnavailable), outcome
    assert sorted(stored(pg, table)) == [*range(1, 51), 100], "the commit whose reply was lost is there"
    sink.write(batch)  # the sender retries: the primary key makes it a no-op
    assert sorted(stored(pg, table)) == [*range(1, 51), 100]


# -- failures ---------------------------------------------------------------------------------


def test_a_cut_connection_is_SinkUnavailable_then_the_sink_reconnects(pg, table, sink):
    sink.write(batch_of([b"{}"]))
    assert pg.terminate_backends() >= 1
    with pytest.raises(SinkUnavailable):
        sink.write(batch_of([b"{}"], first=2))
    sink.write(batch_of([b"{}"], first=2))
    assert sorted(stored(pg, table)) == [1, 2]


def test_a_wrong_password_is_SinkPaused_and_the_message_holds_no_password(pg, table):
    url = pg.url(table=table).replace(pg.password, "wrong-pw-7c1e")
    sink = sink_from_url(url)
    try:
        with pytest.raises(SinkPaused) as info:
            sink.write(batch_of([b"{}"]))
    finally:
        sink.close()
    text = f"{info.value} {info.value!r}"
    assert "wrong-pw-7c1e" not in text and pg.password not in text
    assert f"127.0.0.1:{pg.port}/distwal" in text


def test_a_missing_database_is_SinkPaused(pg, table):
    sink = sink_from_url(pg.url(table=table, database="no_such_db"))
    try:
        with pytest.raises(SinkPaused, match="no_such_db|does not exist"):
            sink.write(batch_of([b"{}"]))
    finally:
        sink.close()


def test_a_role_without_privileges_on_the_table_is_SinkPaused(pg, table, sink):
    sink.write(batch_of([b"{}"]))  # the table exists, owned by the sink's role
    pg.admin("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'outsider') THEN "
             f"CREATE ROLE outsider LOGIN PASSWORD '{pg.password}'; END IF; END $$",
             f"GRANT CONNECT ON DATABASE {pg.database} TO outsider")
    outsider = sink_from_url(pg.url(table=table, user="outsider"))
    try:
        with pytest.raises(SinkPaused, match="42501|permission denied"):
            outsider.write(batch_of([b"{}"], first=2))
    finally:
        outsider.close()


def test_a_role_granted_only_select_and_insert_writes_into_an_existing_table(pg, table, sink):
    sink.write(batch_of([b"{}"]))
    pg.admin("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'writer_only') THEN "
             f"CREATE ROLE writer_only LOGIN PASSWORD '{pg.password}'; END IF; END $$")
    pg.sql(f'GRANT SELECT, INSERT ON "{table}" TO writer_only')
    pg.sql(f'GRANT SELECT, INSERT, UPDATE ON "{table}_fence" TO writer_only')
    limited = sink_from_url(pg.url(table=table, user="writer_only"))
    try:
        limited.write(batch_of([b"{}"], first=2))
        limited.write(batch_of([b"{}"], first=1))  # a duplicate takes the ON CONFLICT path: still allowed
    finally:
        limited.close()
    assert sorted(stored(pg, table)) == [1, 2]


def test_a_multi_host_url_fails_over_to_the_address_that_answers(pg, table):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    url = pg.url(table=table).replace(f"127.0.0.1:{pg.port}", f"127.0.0.1:{dead},127.0.0.1:{pg.port}")
    sink = sink_from_url(url + "&target_session_attrs=read-write")
    try:
        sink.write(batch_of([b"{}"]))
    finally:
        sink.close()
    assert sorted(stored(pg, table)) == [1]


def test_a_server_that_is_down_is_SinkUnavailable():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = sink_from_url(f"postgresql://nobody:pw@127.0.0.1:{port}/db?connect_timeout=2")
    try:
        with pytest.raises(SinkUnavailable):
            sink.write(batch_of([b"{}"]))
    finally:
        sink.close()


def test_the_password_can_come_from_PGPASSWORD(pg, table, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", pg.password)
    sink = sink_from_url(pg.url(table=table, password=False))
    try:
        sink.write(batch_of([b"{}"]))
    finally:
        sink.close()
    assert sorted(stored(pg, table)) == [1]


# -- the URL ----------------------------------------------------------------------------------


def test_the_table_name_is_a_quoted_identifier(pg):
    table = "Mixed_" + fresh_table()  # needs quoting: unquoted it would fold to lower case
    sink = sink_from_url(pg.url(table=table))
    try:
        sink.write(batch_of([b"{}"]))
    finally:
        sink.close()
    assert pg.sql(f'SELECT count(*) FROM "{table}"') == [(1,)]
    assert pg.sql("SELECT to_regclass(%s) IS NOT NULL", f'"{table}_fence"') == [(True,)]


@pytest.mark.parametrize("table", ["x; DROP TABLE y", "1abc", "a" * 60, "a.b", ""])
def test_a_table_name_that_is_not_a_plain_identifier_is_a_ConfigError(table):
    with pytest.raises(ConfigError, match="plain table name"):
        split_url(f"postgresql://h/db?table={table}")


@pytest.mark.parametrize(("url", "verified"), [
    ("postgresql://u@db.example.org/m", True),
    ("postgresql://u@127.0.0.1:5,db.example.org:5/m", True),
    ("postgresql://u@127.0.0.1:5432/m", False),
    ("postgresql://u@localhost/m", False),
    ("postgresql://u@[::1]:5432/m", False),
    ("postgresql:///m?host=/var/run/postgresql", False),
    ("postgresql://u@db.example.org/m?sslmode=disable", False),
])
def test_tls_is_verified_by_default_for_a_server_off_this_machine(url, verified, monkeypatch):
    monkeypatch.delenv("PGSSLMODE", raising=False)
    conninfo, _ = split_url(url)
    assert ("sslmode=verify-full" in conninfo) == verified, conninfo
    if not verified and "sslmode=" in url:
        assert "sslmode=disable" in conninfo  # what the URL says wins


def test_libpq_parameters_pass_through_and_table_is_ours():
    conninfo, table = split_url("postgresql://u@h:5/db?sslmode=verify-full&table=t1&application_name=x")
    assert table == "t1"
    assert "table=" not in conninfo and "sslmode=verify-full" in conninfo and "application_name=x" in conninfo
    assert split_url("postgres://h/db")[1] == "distwal_records"


def test_a_missing_psycopg_is_a_one_line_ConfigError_naming_the_extra(monkeypatch):
    import importlib.util

    from distwal._config import Config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    with pytest.raises(ConfigError) as info:
        Config.load(dir="/tmp/x", sink="postgresql://h/db", env={})
    assert "pip install 'distwal[postgres]'" in str(info.value) and "\n" not in str(info.value)


# -- read-back --------------------------------------------------------------------------------


def test_read_filters_by_run_rank_and_time_and_orders_by_ts(pg, table, sink):
    other = {**META, "rank": 5, "run": "job-2"}
    sink.write(batch_of([orjson.dumps({"i": i}) for i in range(4)]))
    sink.write(batch_of([orjson.dumps({"j": i}) for i in range(2)], writer="writer-b", meta=other))
    everything = list(sink.read())
    assert [(e["ts"], e["writer"], e["seq"]) for e in everything] == sorted(
        (e["ts"], e["writer"], e["seq"]) for e in everything)
    assert len(everything) == 6 and set(everything[0]) >= {"writer", "seq", "ts", "host", "pid", "rank", "run",
                                                          "local_rank", "attempt", "data"}
    assert [e["data"] for e in sink.read(rank=5)] == [{"j": 0}, {"j": 1}]
    assert [e["seq"] for e in sink.read(run="job-1", since=1_700_000_002.0)] == [3, 4]
    assert list(sink.read(run="nobody")) == []


def test_read_before_anything_was_written_yields_nothing(pg):
    sink = sink_from_url(pg.url(table=fresh_table()))
    try:
        assert list(sink.read()) == []
    finally:
        sink.close()
