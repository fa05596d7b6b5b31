"""Shared fixture of the real-process tests: a fresh WAL directory (the seed is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def wal_dir(tmp_path: Path) -> Path:
    """An absolute, not yet existing distwal directory for the child processes."""
    return tmp_path / "wal"
