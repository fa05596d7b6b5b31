"""Unit tests run hermetic: no launcher or distwal variable from the caller's shell, no sender.

The caller's environment is scrubbed of DISTWAL_*, TORCHELASTIC_*, SLURM_* and the torchrun
rank variables, and DISTWAL_DISABLE_SENDER=1 is set: init() would otherwise elect a leader
and start a sender process (unit tests start no processes), and a leader would adopt (move
away) the writer folders the tests read back. A test that wants a sender must delete it.
tests/conftest.py restores os.environ afterwards.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from helpers.procs import hermetic_environ


@pytest.fixture(autouse=True)
def _hermetic_environ(_finish_writers_and_restore_environ: None) -> Iterator[None]:
    hermetic_environ()
    yield
