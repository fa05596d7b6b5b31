"""launchers/slurm.sbatch, run for real with stand-ins for what only a cluster has.

`srun` runs its command once (one node), `scontrol` names this host, and `torchrun` runs a
small job that logs records and exits 3. The script must start `distwal serve` as the sink
(not SQLite on the shared directory), deliver every record to it, still print the status
table after the failure (no `set -e` exit), exit with the job's code, stop serve, and never
write the token to disk.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.procs import child_env

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
TOKEN = "slurm-test-token-5f0e2b"

FAKES = {
    "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n',
    "scontrol": "#!/bin/bash\nhostname\n",
    "torchrun": '#!/bin/bash\nRANK=0 LOCAL_RANK=0 WORLD_SIZE=1 exec python3 "$FAKE_TRAIN"\n',
}

TRAIN = """
import sys, distwal
distwal.init()
for step in range(250):
    distwal.log({"step": step, "loss": 1.0 / (step + 1)})
print("training failed on purpose", flush=True)
sys.exit(3)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_slurm_sbatch_ships_to_serve_and_keeps_status_and_exit_code_on_failure(tmp_path):
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name, text in FAKES.items():
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    (tmp_path / "train.py").write_text(TRAIN)
    wal, port = tmp_path / "runs" / "4242", _free_port()
    env = child_env(sender=True, PATH=f"{fakes}:{Path(sys.executable).parent}:{os.environ['PATH']}",
                    HOME=str(tmp_path), SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node1", SLURM_NNODES="1",
                    DISTWAL_DIR=str(wal), DISTWAL_SERVE_PORT=str(port), DISTWAL_TOKEN=TOKEN,
                    FAKE_TRAIN=str(tmp_path / "train.py"))
    result = subprocess.run(["bash", str(REPO / "launchers" / "slurm.sbatch"), "train.py"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=100, stdin=subprocess.DEVNULL, check=False)
    print(result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 3, result
    assert "training failed on purpose" in result.stdout
    assert "leader:" in result.stdout and "sink: http://" in result.stdout, "no status table after the failure"
    assert "sink http://" in result.stderr and "ready" in result.stderr, "the sink was not checked up front"
    assert not (wal / "collected.db").exists(), "the SQLite sink was opened on the shared directory"
    db = sqlite3.connect(f"file:{wal / 'records.db'}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT seq) FROM records").fetchone() == (250, 250)
    finally:
        db.close()
    with socket.socket() as s:  # serve was stopped with the job
        assert s.connect_ex(("127.0.0.1", port)) != 0
    for parent, _, files in os.walk(tmp_path):
        for name in files:
            assert TOKEN.encode() not in Path(parent, name).read_bytes(), f"the token is in {parent}/{name}"
