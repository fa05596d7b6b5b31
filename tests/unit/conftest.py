"""Unit tests run hermetic: no launcher or distwal variable from the caller's shell, no sender.

The caller's environment is scrubbed of DISTWAL_*, TORCHELASTIC_*, SLURM_* and the torchrun
rank variables, and DISTWAL_DISABLE_SENDER=1 is set: init() would otherwise elect a leader
and start a sender process (unit tests start no processes), and a leader would adopt (move
away) the writer folders the tests read back. A test that wants a sender must delete it.
tests/conftest.py restores os.environ afterwards.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

_SCRUB_PREFIXES = ("DISTWAL_", "TORCHELASTIC_", "SLURM_")
_SCRUB_NAMES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def _hermetic_environ(_finish_writers_and_restore_environ: None) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(_SCRUB_PREFIXES) or name in _SCRUB_NAMES:
            del os.environ[name]
    os.environ["DISTWAL_DISABLE_SENDER"] = "1"
    yield
