"""What the launcher (torchrun, SLURM, multiprocessing) tells a process about itself.

The only module that reads rank variables: torchrun reuses ranks under new pids after
a restart, so these are metadata, never identity.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class RankInfo:
    rank: int | None
    local_rank: int | None
    world_size: int | None
    group_rank: int | None
    attempt: int | None


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def rank_from_env(env: Mapping[str, str] | None = None) -> RankInfo:
    """Rank metadata from torchrun's or SLURM's variables; None where neither says."""
    env = os.environ if env is None else env
    return RankInfo(
        rank=_int(env, "RANK", "SLURM_PROCID"),
        local_rank=_int(env, "LOCAL_RANK", "SLURM_LOCALID"),
        world_size=_int(env, "WORLD_SIZE", "SLURM_NTASKS"),
        group_rank=_int(env, "GROUP_RANK", "SLURM_NODEID"),
        attempt=_int(env, "TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"),
    )


def run_id_from_env(env: Mapping[str, str] | None = None) -> str:
    """DISTWAL_RUN_ID, else TORCHELASTIC_RUN_ID (unless "none"), else SLURM_JOB_ID, else new."""
    env = os.environ if env is None else env
    for name in ("DISTWAL_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        value = env.get(name, "").strip()
        if value and not (name == "TORCHELASTIC_RUN_ID" and value == "none"):
            return value
    return uuid.uuid4().hex[:16]


def is_multi_node(env: Mapping[str, str] | None = None) -> bool:
    """True when the launcher says the job spans more than one node."""
    env = os.environ if env is None else env
    return any((_int(env, name) or 0) > 1 for name in ("GROUP_WORLD_SIZE", "SLURM_NNODES"))
