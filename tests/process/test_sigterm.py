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


IDLE_MAIN = """
import distwal

w = distwal.init()

def loop(t):
    while True:
        w.log({"t": t})

for t in range(2):
    threading.Thread(target=loop, args=(t,), daemon=True).start()
emit("ready", w.id)
threading.Event().wait()  # the main thread idles in a wait only a signal to it interrupts
"""


def test_sigterm_ends_a_process_whose_main_thread_idles_while_others_log(tmp_path, seed):
    # Python runs handlers in the main thread only; a SIGTERM the kernel handed to one of
    # distwal's threads used to leave it pending for ever (about 2 % of rounds under load).
    rng = random.Random(seed)
    for round_ in range(25):
        with spawn(tmp_path, IDLE_MAIN, env=child_env(tmp_path / f"wal{round_}")) as child:
            child.wait_for("ready")
            time.sleep(rng.uniform(0, 0.02))  # a random moment of the logging, not a wait for a condition
            killed_at = child.kill(signal.SIGTERM)
            code = child.wait(timeout=10)
            took = time.time() - killed_at
        assert code == -signal.SIGTERM and took < 5, f"exit {code} after {took:.1f} s (seed={seed}, round {round_})"


SIGTERM_ON_ANOTHER_THREAD = """
import distwal

w = distwal.init()
w.log({"a": 1})
main = threading.main_thread()

def blocked_in_wait():
    with open(f"/proc/self/task/{main.native_id}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    return sys._current_frames()[main.ident].f_code.co_name == "wait" and state == "S"

def deliver_here():
    deadline = time.monotonic() + 10
    while not blocked_in_wait():
        assert time.monotonic() < deadline, "the main thread never blocked"
        time.sleep(0.01)
    emit("sending")
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # to this thread, not the main one
    threading.Event().wait()

threading.Thread(target=deliver_here, daemon=True).start()
threading.Event().wait()
"""


def test_a_sigterm_that_lands_on_another_thread_still_runs_the_handler(tmp_path, wal_dir):
    # The signal only marks the Python handler pending; the main thread, blocked in a wait
    # the signal did not interrupt, would never run it without distwal's nudge.
    with spawn(tmp_path, SIGTERM_ON_ANOTHER_THREAD, env=child_env(wal_dir)) as child:
        child.wait_for("sending")
        code = child.wait(timeout=10)
    assert code == -signal.SIGTERM, child.describe()
    assert only_writer(wal_dir).seqs == [1]


SOMEONE_ELSES_WAKEUP_FD = """
import asyncio
import distwal

async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)  # asyncio's wakeup fd, set before distwal starts
    mine = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(mine)
    w = distwal.init()
    w.log({"a": 1})
    emit("kept", int(signal.set_wakeup_fd(mine) == mine))
    emit("ready")
    await stop.wait()
    emit("stopped-by-asyncio")

asyncio.run(main())
"""


def test_a_wakeup_fd_set_by_asyncio_is_left_alone(tmp_path, wal_dir):
    with spawn(tmp_path, SOMEONE_ELSES_WAKEUP_FD, env=child_env(wal_dir)) as child:
        child.wait_for("ready")
        child.kill(signal.SIGTERM)
        code = child.wait(timeout=10)
    assert child.lines_with("kept")[0].parts[1] == "1", "distwal replaced asyncio's wakeup fd"
    assert child.lines_with("stopped-by-asyncio") and code == 0, child.describe()


THREAD_MASKS = """
import distwal, psutil

def blocked(path):
    for line in open(path):
        if line.startswith("SigBlk:"):
            mask = int(line.split()[1], 16)
            return sorted(s for s in (signal.SIGTERM, signal.SIGINT) if mask >> (s - 1) & 1)

w = distwal.init()
w.log({"a": 1})
w.flush()
deadline = time.monotonic() + 20
sender_up = os.path.join(os.environ["DISTWAL_DIR"], "sender.json")  # written by the sender's first cycle
while not (psutil.Process().children() and os.path.exists(sender_up)):
    assert time.monotonic() < deadline, "never led"
    time.sleep(0.05)
for t in threading.enumerate():
    emit("thread", t.name, *blocked(f"/proc/self/task/{t.native_id}/status"))
for p in psutil.Process().children():
    emit("child", p.pid, *blocked(f"/proc/{p.pid}/status"))
"""


def test_distwal_threads_never_take_sigterm_or_sigint_and_the_sender_process_does(tmp_path, wal_dir):
    with spawn(tmp_path, THREAD_MASKS, env=child_env(wal_dir, sender=True)) as child:
        assert child.wait() == 0, child.describe()
    threads = {line.parts[1]: line.parts[2:] for line in child.lines_with("thread")}
    ours = {name: mask for name, mask in threads.items() if name.startswith("distwal-")}
    assert {"distwal-flusher", "distwal-elector"} <= set(ours), threads
    assert all(mask == ["2", "15"] for mask in ours.values()), f"distwal threads that may take the signals: {ours}"
    assert threads["MainThread"] == [], "the main thread must take them"
    children = [line.parts[2:] for line in child.lines_with("child")]
    assert children and all(mask == [] for mask in children), f"the sender process blocks signals: {children}"


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
