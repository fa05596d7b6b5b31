"""Fixtures for every test: no writer outlives its test, os.environ is restored; hypothesis profiles.

distwal keeps a process-global current writer (distwal._api._current) and init() exports
DISTWAL_DIR/SINK/RUN_ID into os.environ, so after each test every writer is finished and
os.environ is put back as it was. (tests/unit/conftest.py also scrubs the environment
and disables the sender before each unit test.)

Hypothesis: the default profile "distwal" is derandomized (the same examples on every run,
so CI never flakes) and has no deadline (fsync timings vary). For a deeper search run
    HYPOTHESIS_PROFILE=thorough .venv/bin/python -m pytest tests/unit
which draws fresh random examples and prints the reproduction blob of any failure.
"""

from __future__ import annotations

import os
import signal
from typing import Iterator

import pytest
from helpers.procs import pick_seed
from helpers.timings import Timings, timings_for
from hypothesis import HealthCheck, settings

settings.register_profile(
    "distwal",
    max_examples=40,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "distwal"))

# A test suite started in the background by a shell without job control (`make test &`,
# nohup, some CI runners) inherits SIGINT ignored, and so would every process the tests
# start: the tests that interrupt a job or `status --watch` with SIGINT would then wait
# for ever. A handled signal is reset to the default in a child at exec, an ignored one is not.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _finish_all_writers() -> None:
    from distwal import _api, _hooks

    current = _api._current
    if current is not None:
        current.finish(timeout=5.0)
    for writer in list(_hooks.hooks.writers):  # writers built directly, not through init()
        writer.finish(timeout=5.0)
    _api._current = None


@pytest.fixture(autouse=True)
def _finish_writers_and_restore_environ() -> Iterator[None]:
    """After the test: finish every in-process writer, then restore os.environ exactly."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        try:
            _finish_all_writers()
        finally:
            os.environ.clear()
            os.environ.update(saved)


@pytest.fixture
def seed() -> int:
    """A random seed, printed; DISTWAL_TEST_SEED=<n> (set when pytest starts) replays one."""
    return pick_seed()


@pytest.fixture
def timings(request: pytest.FixtureRequest) -> Timings:
    """Where a test records a duration it measures anyway (helpers/timings.py; benchmarks/ship.py reads them)."""
    return timings_for(request.node.nodeid)


@pytest.fixture
def umask() -> Iterator[object]:
    """Call umask(mask) inside a test; the original umask is restored afterwards."""
    original = os.umask(0o022)
    os.umask(original)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    try:
        yield set_mask
    finally:
        os.umask(original)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """A real PostgreSQL server (Debian's initdb/pg_ctl) shared by the session: helpers/postgres.py."""
    from helpers.postgres import running_server

    yield from running_server()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real `mlflow server` (PyPI mlflow in .venv-mlflow, SQLite store, 127.0.0.1), one per session."""
    from helpers.mlflow_server import MlflowServer, MlflowUnavailable, ensure_mlflow_venv

    try:
        ensure_mlflow_venv()
    except MlflowUnavailable as exc:
        pytest.skip(str(exc))
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server
