"""A sink URL's secrets (a password, token=/password= parameters) stay out of the directory's
sink.json and out of messages, for every scheme; the same sink with another password is the same sink."""

from __future__ import annotations

import os

import orjson
import pytest

from distwal._config import _redact, public_url
from distwal._files import prepare_dir
from distwal._layout import Modes
from distwal.leader.election import SINK, record_sink, recorded_sink

CASES = [
    ("http://alice:pw1@h:8/ingest?x=1&token=tk#f", "http://h:8/ingest?x=1#f", "http://***@h:8/ingest?x=1&token=***#f"),
    ("https://tok-only@h/ingest", "https://h/ingest", "https://***@h/ingest"),
    ("postgresql://bob:pw1@db/m?table=t&password=pw2&sslmode=verify-full",
     "postgresql://bob@db/m?table=t&sslmode=verify-full",
     "postgresql://bob:***@db/m?table=t&password=***&sslmode=verify-full"),
    ("postgres://db/m?sslpassword=pw3&sslkey=/k.pem", "postgres://db/m?sslkey=/k.pem",
     "postgres://db/m?sslpassword=***&sslkey=/k.pem"),
    ("otlp+https://h/v1/logs?api_key=k1&access_token=k2", "otlp+https://h/v1/logs", "otlp+https://h/v1/logs?api_key=***&access_token=***"),
    ("sqlite:///tmp/a.db", "sqlite:///tmp/a.db", "sqlite:///tmp/a.db"),
    ("jsonl:///tmp/a.jsonl", "jsonl:///tmp/a.jsonl", "jsonl:///tmp/a.jsonl"),
]


@pytest.mark.parametrize(("url", "public", "masked"), CASES)
def test_secrets_are_removed_for_the_directory_and_masked_for_messages(url, public, masked):
    assert public_url(url) == public
    assert _redact(url) == masked
    for secret in ("pw1", "pw2", "pw3", "tk", "tok-only", "k1", "k2"):
        assert secret not in public_url(url).replace("sslkey", "") and f"={secret}" not in _redact(url)


def test_sink_json_holds_the_url_without_its_password_and_another_password_still_matches(tmp_path):
    root = str(tmp_path / "wal")
    prepare_dir(root, Modes.for_config(False))
    first = "postgresql://bob:first-pw@db/m?table=t"
    assert record_sink(root, first, Modes.for_config(False)) == first  # ours, with its password, to connect
    on_disk = (tmp_path / "wal" / SINK).read_bytes()
    assert b"first-pw" not in on_disk and orjson.loads(on_disk)["sink"] == "postgresql://bob@db/m?table=t"
    rotated = "postgresql://bob:rotated-pw@db/m?table=t"
    assert record_sink(root, rotated, Modes.for_config(False)) == rotated  # the same sink: may lead
    other = "postgresql://bob:first-pw@db/other?table=t"
    assert record_sink(root, other, Modes.for_config(False)) == "postgresql://bob@db/m?table=t"  # refused
    assert recorded_sink(root) == "postgresql://bob@db/m?table=t"


def test_a_sink_json_written_with_a_password_by_an_older_version_still_matches(tmp_path):
    root = str(tmp_path / "wal")
    prepare_dir(root, Modes.for_config(False))
    with open(os.path.join(root, SINK), "wb") as f:
        f.write(orjson.dumps({"sink": "http://alice:old@h/ingest", "ts": 0}))
    assert record_sink(root, "http://alice:new@h/ingest", Modes.for_config(False)) == "http://alice:new@h/ingest"
