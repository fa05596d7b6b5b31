"""SIGTERM (what torchrun sends the surviving ranks) loses nothing the process had logged.

The contract: SIGTERM makes everything durable, then the previous handler or the default
action proceeds. Children log in a loop and report every returned seq on stdout; the
parent sends SIGTERM at a seeded random moment and reads the directory back.
"""

from __future__ import annotations

import random
import signal
import time

import pytest
from helpers.procs import assert_contiguous_from_1, child_env, only_writer, spawn

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]

LONG_INTERVAL = 30.0  # seconds: nothing becomes durable on its own during the test

LOGGER = """
import distwal

handler_kind, interval, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
if handler_kind == "user":
    def on_term(signum, frame):
        emit("user-handler", signum)
        os._exit(43)   # no atexit, no finish: only what SIGTERM made durable survives
    signal.signal(signal.SIGTERM, on_term)

w = distwal.init(**({} if interval == "default" else {"interval": float(interval)}))

def loop(t):
    i = 0
    while True:
        seq = w.log({"t": t, "i": i})
        emit("ack", seq, t, i)
        i += 1
        if i % 32 == 0:
            time.sleep(0.0002)  # a training loop does something between records

emit("ready", w.id)
if threads == 0:
    loop(0)
else:
    for t in range(threads):
        threading.Thread(target=loop, args=(t,), daemon=True).start()
    threading.Event().wait()  # the main thread idles; the SIGTERM handler runs here
"""


def _sigterm_round(tmp_path, wal_dir, rng, seed, handler_kind, interval, threads):
    want_acks = int(rng.choice([0, 1, 10, 100, 1000, 3000]) * rng.random()) + 1
    context = f"(seed={seed}, handler={handler_kind}, interval={interval}, threads={threads}, acks>={want_acks})"
    print(f"round: {context}")
    with spawn(tmp_path, LOGGER, handler_kind, str(interval), str(threads), env=child_env(wal_dir)) as child:
        child.wait_for("ready")
        child.wait_for(lambda: len(child.lines_with("ack")) >= want_acks)
        killed_at = child.kill(signal.SIGTERM)
        code = child.wait()
        context += f" [died {time.time() - killed_at:.3f} s after SIGTERM; the handler's grace is 1 s]"
        if handler_kind == "user":
            assert code == 43, f"the user's SIGTERM handler did not run (exit {code}) {context}\n{child.describe()}"
            assert [line.parts for line in child.lines_with("user-handler")] == [["user-handler", "15"]], context
        else:
            assert code == -signal.SIGTERM, (
                f"SIGTERM did not end the child by the default action (exit {code}) {context}\n{child.describe()}"
            )
        # With threads, a logger may return after the handler took its snapshot; what the
        # parent had read before sending the signal was surely logged before it arrived.
        acks = [line for line in child.lines_with("ack") if threads == 0 or line.at < killed_at]
    assert len(acks) >= want_acks, context
    writer = only_writer(wal_dir, context)
    assert_contiguous_from_1(writer, context)
    on_disk = writer.by_seq
    missing = [line.text for line in acks if int(line.parts[1]) not in on_disk]
    assert not missing, (
        f"{len(missing)} of {len(acks)} acknowledged records lost by SIGTERM, first {missing[:3]}, "
        f"on disk up to seq {max(on_disk, default=0)} {context}"
    )
    for line in acks:
        _, seq, t, i = line.parts
        assert on_disk[int(seq)] == {"t": int(t), "i": int(i)}, f"seq {seq} holds {on_disk[int(seq)]} {context}"


@pytest.mark.parametrize("threads", [0, 2], ids=["main-thread", "2-threads"])
@pytest.mark.parametrize("handler_kind", ["default", "user"])
def test_sigterm_keeps_every_acknowledged_record_default_interval(tmp_path, seed, handler_kind, threads):
    rng = random.Random(seed)
    for round_ in range(3):
        _sigterm_round(tmp_path, tmp_path / f"wal{round_}", rng, seed, handler_kind, "default", threads)


@pytest.mark.parametrize("handler_kind", ["default", "user"])
def test_sigterm_keeps_every_acknowledged_record_long_interval(tmp_path, seed, handler_kind):
    """With a 30 s interval only the SIGTERM path can make the records durable in time."""
    rng = random.Random(seed)
    for round_ in range(2):
        _sigterm_round(tmp_path, tmp_path / f"wal{round_}", rng, seed, handler_kind, LONG_INTERVAL, 0)


SIGTERM_INSIDE_LOG = """
import distwal

point = sys.argv[1]
w = distwal.init()
small = {"kind": "small", "pad": "y" * 1000}
big = {"kind": "big", "pad": "x" * ((1 << 20) - 64)}   # with anything buffered: the block is full

def at_named_point(frame, event, arg):
    # Named points inside log(), both with Writer._lock held:
    #   "after-now":  _now() (time.time) returned; CPython runs pending handlers right after a call
    #   "make-room":  log() calls _make_room to seal a full block
    hit = (
        (point == "after-now" and event == "c_return" and frame.f_code.co_name == "log"
         and getattr(arg, "__name__", "") == "time")
        or (point == "make-room" and event == "call" and frame.f_code.co_name == "_make_room")
    )
    if hit:
        sys.setprofile(None)
        emit("sigterm-inside", point)
        os.kill(os.getpid(), signal.SIGTERM)   # handled at the next bytecode boundary, lock held

while True:  # make sure the acknowledged records are still in memory when the signal lands
    seqs = [w.log(small) for _ in range(3)]
    if w.durable_seq < seqs[-1]:
        break
emit("acks", *seqs)
sys.setprofile(at_named_point)
w.log(big)
emit("survived")
"""


@pytest.mark.parametrize("point", ["after-now", "make-room"])
def test_sigterm_while_log_holds_the_buffer_lock_keeps_acknowledged_records(tmp_path, wal_dir, point):
    with spawn(tmp_path, SIGTERM_INSIDE_LOG, point, env=child_env(wal_dir)) as child:
        child.wait_for("sigterm-inside")
        code = child.wait()
        assert code == -signal.SIGTERM, child.describe()
        acks = [int(seq) for seq in child.lines_with("acks")[0].parts[1:]]
    writer = only_writer(wal_dir)
    assert_contiguous_from_1(writer)
    assert set(acks) <= set(writer.seqs), f"acknowledged seqs {acks} lost by SIGTERM; on disk: {writer.seqs}"
