"""Making sure SIGTERM reaches its Python handler.

CPython runs a Python signal handler in the main thread, at its next bytecode boundary.
A main thread blocked in a wait (Event.wait, a pool worker's queue, a barrier) gets there
only if the signal interrupts that wait. It does not when the signal lands on another
thread, or just before the wait begins (CPython has noted it, the wait has not started).
Without distwal, SIGTERM's default action needs no Python and ends the process at once.
With distwal's handler installed, that SIGTERM would stay pending for ever. Under load
this happened in 3 of 150 rounds. torchrun then SIGKILLs the rank after its grace period,
losing what the handler was there to save.

Two measures:
- our threads block SIGTERM and SIGINT, so the kernel never hands them one
  (start_background_thread);
- SigtermWatch learns of every SIGTERM from the wakeup fd. The C-level handler writes the
  signal number there, whatever Python does next. When the Python handler has not run
  shortly after, SigtermWatch interrupts the main thread with pthread_kill.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from typing import Any, Callable

_PROCESS_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_NUDGE_AFTER = 0.2  # seconds a SIGTERM may wait for its handler before the main thread is nudged


def start_background_thread(target: Callable[[], Any], name: str) -> threading.Thread:
    """Start a daemon thread that never receives SIGTERM or SIGINT.

    A new thread inherits its creator's mask, so the signals are blocked around start():
    they never reach the thread, not even before its first instruction.
    """
    thread = threading.Thread(target=target, name=name, daemon=True)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _PROCESS_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread


class SigtermWatch:
    """Interrupts the main thread when a SIGTERM reached the process but not its handler.

    `handled()` must be called at the start of the handler; `is_ours()` says whether the
    installed handler is still distwal's (another one is left alone).
    """

    def __init__(self, is_ours: Callable[[], bool]) -> None:
        self._is_ours = is_ours
        self._received = 0  # SIGTERMs seen on the wakeup fd
        self._handled = 0  # runs of the handler (or nudges that will bring one)
        self._fds: tuple[int, int] | None = None

    def start(self) -> None:
        """Route signal numbers to a pipe and watch it (main thread only, like set_wakeup_fd).

        A wakeup fd set by someone else (asyncio) is kept, and then nothing is watched.
        """
        if self._fds is not None or threading.current_thread() is not threading.main_thread():
            return
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except ValueError:
            previous = None
        if previous != -1:
            if previous is not None:
                signal.set_wakeup_fd(previous)
            os.close(read_fd)
            os.close(write_fd)
            return
        self._fds = (read_fd, write_fd)
        start_background_thread(lambda: self._run(read_fd), "distwal-signals")

    def handled(self) -> None:
        self._handled += 1

    def after_fork_in_child(self) -> None:
        """Leave the parent's pipe: its watcher must never see this process's signals."""
        if self._fds is None:
            return
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            return  # cannot unset it: keep the fds open, so no other file ever takes their numbers
        for fd in self._fds:
            os.close(fd)
        self._fds = None
        self._received = self._handled = 0
        self.start()  # the forking thread is this process's main thread now

    def _run(self, read_fd: int) -> None:
        while True:
            select.select([read_fd], [], [])
            try:
                seen = os.read(read_fd, 512).count(signal.SIGTERM)
            except BlockingIOError:
                continue
            except OSError:
                return  # closed after a fork
            if not seen:
                continue
            self._received += seen
            deadline = time.monotonic() + _NUDGE_AFTER
            while self._handled < self._received and time.monotonic() < deadline:
                time.sleep(0.01)
            if self._handled < self._received and self._is_ours():
                self._handled = self._received  # the one run the nudge brings covers them all
                try:
                    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
                except (OSError, ValueError):
                    return  # the main thread has ended: so has the process, nearly
