"""`distwal run` checks the sink before CMD starts, and ends with one line on the delivery.

- A sink that is down is reported in one line before CMD prints anything; CMD still runs and
  its exit code is returned; the closing line names what is left and the exact command
  that finishes it, and that command, once the sink is up, delivers every record.
- A good sink: "sink ... ready" first, "delivered N records of M writers to SINK in S s" last.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys

import pytest
from helpers.cluster import FaultServer, run_cli
from helpers.jobs import job_env, sink_rows

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

JOB = """
import sys, distwal
distwal.init()
for i in range({n}):
    distwal.log({{"i": i}})
print("job ran", flush=True)
sys.exit({code})
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_reports_a_down_sink_before_the_job_and_the_command_that_finishes_it(tmp_path):
    wal = tmp_path / "wal"
    port = _free_port()  # nothing listens yet
    url = f"http://127.0.0.1:{port}/ingest"
    job = [sys.executable, "-c", JOB.format(n=50, code=3)]
    result = run_cli(["run", "--dir", str(wal), "--sink", url, "--drain-timeout", "2", "--", *job], job_env(),
                     timeout=90)
    assert result.returncode == 3, result
    assert result.stdout.strip() == "job ran", result  # the job ran although the sink is down
    lines = [line for line in result.stderr.splitlines() if line.startswith("distwal: ")]
    assert lines[0].startswith(f"distwal: sink {url} is not ready: ") and "the job starts anyway" in lines[0], lines
    last = lines[-1]
    assert last.startswith("distwal: not everything was delivered within 2s: 50 records left"), last
    finish = last.split("Finish with: ", 1)[1]
    assert shlex.split(finish) == ["distwal", "drain", str(wal)], finish

    with FaultServer(tmp_path / "sink.db", port=port) as server:
        drained = run_cli(shlex.split(finish)[1:], job_env(), timeout=60)
        assert drained.returncode == 0, drained
        assert sorted(d["i"] for d in next(iter(server.records().values())).values()) == list(range(50))


def test_run_says_the_sink_is_ready_then_what_it_delivered_where(tmp_path):
    wal = tmp_path / "wal"
    job = [sys.executable, "-c", JOB.format(n=120, code=0)]
    result = run_cli(["run", "--dir", str(wal), "--", *job], job_env(), timeout=90)
    assert result.returncode == 0, result
    lines = [line for line in result.stderr.splitlines() if line.startswith("distwal: ")]
    sink = f"sqlite:///{wal / 'collected.db'}"
    assert lines[0] == f"distwal: sink {sink} ready", lines
    assert lines[-1].startswith(f"distwal: delivered 120 records of 1 writer to {sink} in "), lines
    assert lines[-1].endswith(" s"), lines
    assert len(sink_rows(wal)) == 120


def test_a_job_without_distwal_run_hears_from_its_first_leader_that_the_sink_is_down(tmp_path):
    # No sidecar: rank 0 of a plain `python train.py` leads, and its sender checks the sink at
    # once, so the warning comes at the job's first second, not after training.
    port = _free_port()
    url = f"http://127.0.0.1:{port}/ingest"
    job = JOB.format(n=5, code=0).replace('print("job ran", flush=True)', "distwal.flush(delivered=True, timeout=3)")
    env = job_env(DISTWAL_DIR=str(tmp_path / "wal"), DISTWAL_SINK=url, DISTWAL_EXIT_TIMEOUT="1")
    result = subprocess.run([sys.executable, "-c", job], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result
    warnings = [line for line in result.stderr.splitlines() if line.startswith(f"distwal: sink {url} is not ready")]
    assert len(warnings) == 1, result.stderr
