"""The sender process a leading rank starts: `python -m distwal.leader DIR EPOCH DOMAIN OWNER PPID`.

It dies with its parent: PR_SET_PDEATHSIG on Linux, and EOF on stdin everywhere. The
parent may write "drain SECONDS" (ship what finished and dead writers left, then exit)
or "stop". On exit it prints why it ended.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading

import orjson

from .._config import Config
from .._layout import Identity
from .._preflight import check_open_sink
from .._signals import start_background_thread
from .lead import build_sender

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the stdin EOF below still ends us
    if os.getppid() != parent:
        os._exit(0)  # the parent died before prctl took effect


def main(argv: list[str]) -> int:
    root, epoch, domain, owner_json, parent = argv
    # Started from the elector thread, which blocks these signals; the mask survives exec.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    _die_with_parent(int(parent))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    config = Config.load(dir=root)
    sender = build_sender(config, int(epoch), orjson.loads(owner_json), domain, Identity.of_this_process())
    if int(epoch) == 1:
        # The directory's first leader: a job started without `distwal run` (which checks before
        # CMD starts) learns at its first second, not after training, that its sink is wrong.
        ok, line = check_open_sink(sender.sink, config.sink)
        logging.getLogger("distwal").log(logging.INFO if ok else logging.WARNING, "distwal: %s", line)
    stop = threading.Event()
    deadline: list[float | None] = [None]

    def listen() -> None:
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["drain"] and len(words) == 2:
                deadline[0] = sender.clock() + float(words[1])
            elif words[:1] == ["stop"]:
                stop.set()
        stop.set()  # EOF: the parent is gone

    start_background_thread(listen, "distwal-commands")
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        outcome = sender.run(stop.is_set, lambda: deadline[0])
    finally:
        sender.close()
    print(outcome, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
