"""`distwal run -- torchrun ...` on several nodes: the run id comes from torchrun's --rdzv-id."""

from __future__ import annotations

import pytest

from distwal.launch.run import torchrun_rdzv_id


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["/venv/bin/torchrun", "--nnodes", "1:2", "--rdzv-id", "job42", "train.py"], "job42"),
        (["torchrun", "--standalone", "--rdzv_id=abc", "--nproc-per-node", "2", "train.py"], "abc"),
        (["torchrun", "--nproc-per-node", "2", "train.py", "--rdzv-id", "the-script's"], None),
        (["torchrun", "--no-python", "--rdzv-id", "x", "bash"], "x"),
        (["torchrun", "--rdzv-id", "none", "train.py"], None),
        (["python", "-m", "torch.distributed.run", "--rdzv-id", "y", "train.py"], None),
        ([], None),
    ],
)
def test_torchrun_rdzv_id_reads_torchruns_own_option_only(command: list[str], expected: str | None) -> None:
    assert torchrun_rdzv_id(command) == expected
