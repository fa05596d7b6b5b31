"""Shared fixtures of the real-process tests: the seed and a fresh WAL directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: makes `helpers` importable

from helpers.procs import pick_seed  # noqa: E402


@pytest.fixture
def seed() -> int:
    """A random seed, printed; DISTWAL_TEST_SEED=<n> replays one."""
    return pick_seed()


@pytest.fixture
def wal_dir(tmp_path: Path) -> Path:
    """An absolute, not yet existing distwal directory for the child processes."""
    return tmp_path / "wal"
