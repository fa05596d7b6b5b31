"""A real two-node torchrun job on one shared directory, losing the node that does not host the rendezvous.

Two simulated hosts (own pid namespace and hostname, helpers.hosts) each run
`distwal run --dir D -- torchrun --nnodes 1:2 --nproc-per-node 2 --rdzv-backend c10d ...`:
nodeA hosts the c10d store (`is_host=true` in --rdzv-conf), nodeB joins it; every rank
logs one record per step between gloo all_reduce calls, so the four ranks move in
lockstep. Once both nodes' ranks have logged, nodeB is SIGKILLed whole (its agent, its
ranks, its `distwal run`). nodeA's ranks fail in their next collective, its agent
restarts them (attempt 1), the rendezvous closes with nodeA alone (1 of 1:2 nodes) and
the new world of two ranks runs its steps to the end. Afterwards every record any rank
of either node acknowledged (attempt 0 on both nodes, attempt 1 on nodeA) is in the
sink exactly once, and `distwal status` shows the ranks of both nodes with how each ended.

Both nodes share the machine's network namespace: the store and gloo listen on 127.0.0.1
(`--local-addr`, GLOO_SOCKET_IFNAME=lo); the simulated hostnames resolve nowhere.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from helpers.cluster import run_cli, wait_until
from helpers.hosts import sim_host
from helpers.jobs import assert_acked_in_sink_once, parse_acks, sink_rows, write_script
from helpers.procs import child_env

pytestmark = [pytest.mark.process, pytest.mark.reliability, pytest.mark.timeout(300)]

TORCHRUN = Path(sys.executable).parent / "torchrun"
STEPS_AFTER_RESTART = 30

RANK = """
import torch
import torch.distributed as dist
import distwal

rank, attempt = int(os.environ["RANK"]), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
world = int(os.environ["WORLD_SIZE"])
w = distwal.init(durability="sync")
# torchrun's agent store outlives a restart; give each attempt's process group its own keys
# (gloo otherwise may read the previous attempt's peer addresses: connectFullMesh refused).
store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
dist.init_process_group("gloo", store=dist.PrefixStore(f"attempt-{attempt}", store), rank=rank, world_size=world)
emit("ready", w.id, rank, attempt, world, socket.gethostname())
t = torch.zeros(1)
step = 0
while attempt == 0 or step < int(sys.argv[1]):
    t.fill_(1.0)
    dist.all_reduce(t)  # lockstep: nobody logs step n+1 before everyone reached step n
    logged(w, {"step": step, "rank": rank, "attempt": attempt, "world": int(t.item())})
    step += 1
    time.sleep(0.01)
dist.destroy_process_group()
emit("done", rank, attempt)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed in this venv")
def test_two_node_torchrun_loses_a_node_and_every_acked_record_of_both_arrives_once(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    wal.mkdir(mode=0o700)
    script = write_script(tmp_path, "rank.py", "import socket\n" + RANK)
    port = _free_port()
    # No DISTWAL_RUN_ID: each node's `distwal run` takes torchrun's --rdzv-id as the run id.
    env = child_env(wal, sender=True, DISTWAL_LEASE_S="2", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")

    def node_command(is_host: bool) -> list[str]:
        conf = f"is_host={str(is_host).lower()},last_call_timeout=5,join_timeout=120"
        return [sys.executable, "-m", "distwal", "run", "--dir", str(wal), "--drain-timeout", "60", "--",
                str(TORCHRUN), "--nnodes", "1:2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "twonode", "--rdzv-conf", conf,
                "--local-addr", "127.0.0.1", "--max-restarts", "2", "--monitor-interval", "0.5",
                str(script), str(STEPS_AFTER_RESTART)]

    with ExitStack() as stack:
        a = stack.enter_context(sim_host("nodeA"))
        b = stack.enter_context(sim_host("nodeB"))
        # nodeB first: its agent waits for the store, so both agents are in the first rendezvous.
        job_b = stack.enter_context(b.start(node_command(False), env, tmp_path, label="distwal run on nodeB"))
        job_a = stack.enter_context(a.start(node_command(True), env, tmp_path, label="distwal run on nodeA"))

        def describe() -> str:
            return f"nodeA:\n{job_a.describe()}\nnodeB:\n{job_b.describe()}"

        def both_logging() -> bool:
            acks = parse_acks(job_a.lines_with("ack") + job_b.lines_with("ack"))
            return len(acks) == 4 and all(len(seqs) >= 10 for seqs in acks.values())

        wait_until(both_logging, 180, "four ranks on two nodes logging in lockstep", describe)
        ready = [line.parts[1:] for line in job_a.lines_with("ready") + job_b.lines_with("ready")]
        assert {(r[2], r[3]) for r in ready} == {("0", "4")}, f"attempt 0 should have a world of 4: {ready}"
        acks_b = parse_acks(job_b.lines_with("ack"))
        b.kill()
        started = time.monotonic()
        code = job_a.wait(timeout=240)
        print(f"nodeA's job ended {time.monotonic() - started:.1f}s after nodeB died, exit code {code}")
        assert code == 0, f"nodeA's torchrun should finish after its elastic restart\n{describe()}"
        acks = {**parse_acks(job_a.lines_with("ack")), **acks_b}
        ready = [line.parts[1:] for line in job_a.lines_with("ready") + job_b.lines_with("ready")]

    restarted = [r for r in ready if r[2] != "0"]
    assert {(r[1], r[3]) for r in restarted} == {("0", "2"), ("1", "2")}, (
        f"nodeA's restart should run ranks 0 and 1 in a world of 2: {restarted}"
    )
    writers = {r[0]: (int(r[1]), int(r[2]), r[4]) for r in ready}
    assert {host for *_, host in writers.values()} == {"nodeA", "nodeB"}
    rows = sink_rows(wal)
    finished = {w for w, (_, attempt, _) in writers.items() if attempt > 0}
    assert_acked_in_sink_once(rows, acks, finished=finished, context="(two-node torchrun)")
    assert all(len(acks[w]) == STEPS_AFTER_RESTART for w in finished)
    assert {row.run for row in rows} == {"twonode"}, "both nodes' records under torchrun's --rdzv-id"

    report = json.loads(run_cli(["status", str(wal), "--json"], child_env(wal)).stdout)
    rows_by_writer = {row["writer"]: row for row in report["writers"] + report["history"]}
    for writer, (rank, attempt, host) in writers.items():
        row = rows_by_writer.get(writer)
        assert row is not None, f"status does not show {writer} (rank {rank} attempt {attempt} on {host})"
        assert row["host"] == host, row
        assert _ending(row) == ("finished" if attempt > 0 else "lost" if host == "nodeB" else _ending(row)), row
        assert _ending(row) in ("finished", "lost", "exception", "exit", "signal"), row
    assert report["locks_note"] is None, "one kernel's locks are shared: no node-local note"
    print(f"status: {len(rows_by_writer)} writers; ends "
          f"{sorted((w[2], w[0], w[1], _ending(rows_by_writer[k])) for k, w in writers.items())}")


def _ending(row: dict[str, Any]) -> str:
    """How a writer ended, in the contract's words ("end"), or from the older "state" of a history row."""
    if "end" in row:
        return str((row["end"] or {}).get("reason"))
    return {"finished": "finished", "adopted": "lost"}.get(str(row.get("state")), f"state {row.get('state')}")
