"""Process-wide hooks every writer relies on: exit, pool finalizers, SIGTERM, fork.

- atexit, and multiprocessing's (and multiprocess's) finalizers: pool workers leave
  through os._exit, where only their finalizers run. Each finishes the writers with
  DISTWAL_EXIT_TIMEOUT, so no exit hangs, and writes how the process ended (see _ends).
- SIGTERM (torchrun's way of stopping the survivors of a failed rank): make everything
  durable within about a second, then the previous handler or the default action. The
  handler runs even when the main thread is blocked in a wait (see _signals).
- fork: the child forgets the parent's writer state and files; it gets its own writer
  on its first log.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import Any, Protocol

from ._ends import notes
from ._signals import SigtermWatch

_SIGTERM_GRACE = 1.0  # seconds the SIGTERM handler waits for durability before chaining


class Hooked(Protocol):
    """What the hooks ask of a writer: one method per process event (distwal.Writer)."""

    def finish_at_exit(self, end: dict[str, Any]) -> bool:
        """Finish within the exit timeout; the finish mark says how the process ends."""

    def durable_soon(self, grace: float, signum: int) -> bool:
        """Make what was logged durable within `grace`; False if the interrupted thread
        holds the buffer (the writer then delivers `signum` again once it is written)."""

    def end_now(self, end: dict[str, Any] | None, grace: float) -> None:
        """The process ends without atexit: write the finish mark now."""

    def after_fork_in_child(self) -> None:
        """Forget the parent's files; a new writer starts on the child's first log."""


class Hooks:
    """Process-wide hooks: at exit, multiprocessing finalizers, SIGTERM, fork."""

    def __init__(self) -> None:
        self.writers: list[Hooked] = []
        self._previous_sigterm: Any = None
        self._installed_sigterm = False
        self._finalizers: set[str] = set()
        # Held while distwal starts a subprocess, and by any fork: a child forked meanwhile
        # (a pool worker) would keep the pipe subprocess reads to learn of the exec, and
        # Popen would wait for that child to exit.
        self.spawning = threading.Lock()
        self._watch = SigtermWatch(lambda: signal.getsignal(signal.SIGTERM) == self._on_sigterm)
        self._fork_mask: set[int | signal.Signals] = set()
        os.register_at_fork(
            before=self._before_fork,
            after_in_parent=self._after_fork_in_parent,
            after_in_child=self._after_fork_in_child,
        )
        atexit.register(self.at_exit)

    def attach(self, writer: Hooked) -> None:
        if writer not in self.writers:
            self.writers.append(writer)
        self._install_sigterm()
        notes.install()
        # Pool workers leave through os._exit: atexit never runs there, their finalizers do.
        for name in ("multiprocessing.util", "multiprocess.util"):
            util = sys.modules.get(name)
            if util is not None and name not in self._finalizers:
                util.Finalize(None, self.at_exit, exitpriority=100)
                self._finalizers.add(name)

    def detach(self, writer: Hooked) -> None:
        if writer in self.writers:
            self.writers.remove(writer)

    def at_exit(self) -> None:
        if not self.writers:
            return
        end = notes.end_at_exit()  # how the process ends: the finish marks say it
        for writer in list(self.writers):
            writer.finish_at_exit(end)

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if not self._installed_sigterm:
            try:
                self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
                self._installed_sigterm = True
            except (ValueError, OSError):
                return
        self._watch.start()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._watch.handled()
        # Take no lock here for long: the interrupted thread may hold it.
        for writer in list(self.writers):
            if not writer.durable_soon(_SIGTERM_GRACE, signum):
                return  # let log() finish; the flusher raises the signal again after writing
        previous = self._previous_sigterm
        if callable(previous):
            try:
                previous(signum, frame)
            except BaseException:
                notes.note_signal(signum)  # the handler ends the process by raising (sys.exit, ...)
                raise
        elif previous != signal.SIG_IGN:
            # The default action ends the process without atexit: the finish marks are
            # written here, or the writers would look lost.
            notes.note_signal(signum)
            for writer in list(self.writers):
                writer.end_now(notes.first, _SIGTERM_GRACE)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    def _before_fork(self) -> None:
        self.spawning.acquire()
        # A SIGTERM for the child waits until it has a wakeup pipe of its own (see SigtermWatch).
        self._fork_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def _after_fork_in_parent(self) -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, self._fork_mask)
        self.spawning.release()

    def _after_fork_in_child(self) -> None:
        self.spawning = threading.Lock()  # the parent's is held by the fork
        self._watch.after_fork_in_child()
        signal.pthread_sigmask(signal.SIG_SETMASK, self._fork_mask)
        self._finalizers.clear()
        notes.after_fork_in_child()
        for writer in self.writers:
            writer.after_fork_in_child()


hooks = Hooks()
