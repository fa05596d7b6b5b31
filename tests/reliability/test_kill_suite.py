"""The randomized kill suite in its bounded CI mode: a few rounds, seeds printed.

The long mode runs the same rounds by the hundred: `python tests/reliability/killsuite.py
--rounds 1000` (figures in docs/RELIABILITY.md). DISTWAL_TEST_SEED replays one round.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.procs import pick_seed
from killsuite import run_round  # tests/reliability is on sys.path (no __init__.py); it adds tests/

pytestmark = [pytest.mark.process, pytest.mark.reliability, pytest.mark.timeout(300)]

ROUNDS = int(os.environ.get("DISTWAL_KILL_ROUNDS", "3"))


@pytest.mark.parametrize("round_number", range(ROUNDS))
def test_kill_round_loses_no_acknowledged_record(tmp_path: Path, round_number: int) -> None:
    seed = pick_seed() + round_number
    stats = run_round(seed, tmp_path)
    print(stats)
    assert stats.lost == 0
    assert stats.acked > 0, f"the round acknowledged nothing: it proved nothing (seed={seed})"
    assert stats.kills, f"the round killed nothing (seed={seed})"
