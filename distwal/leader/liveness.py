"""Deciding that a writer is dead, only with proof ("fail closed": unreadable means alive).

Same kernel (boot id) and pid namespace: the process is gone, or its pid now belongs to a
process that started at another time. Anywhere else: its heartbeat has not changed for
lease_s, timed on the observer's own monotonic clock, so clock skew between hosts does
not matter. An observer whose own scans stalled resets its timers instead of adopting
everyone (NFS hiccup, SIGSTOP).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from .._layout import Identity
from .._marks import Meta

_CREATE_TIME_TOLERANCE = 0.5  # seconds: psutil rounds start times to clock ticks
_STALL_FRACTION = 3  # a scan gap longer than lease_s / 3 resets the timers
_THOROUGH_AFTER = 3.0  # seconds of heartbeat silence before a same-host writer gets the full probe


def probe_process(pid: int, create_time: float, thorough: bool) -> bool | None:
    """True: alive; False: proven dead; None: cannot tell (treated as alive).

    The quick probe is a signal 0 (about 1 us). The thorough one (psutil, about 40 us)
    also catches a pid reused by a newer process, and a zombie.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except (OSError, OverflowError, ValueError):
        return None  # not a pid this kernel has (a damaged or foreign meta): cannot tell
    if not thorough:
        return True
    import psutil

    try:
        process = psutil.Process(pid)
        started = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    except (psutil.AccessDenied, psutil.Error, OSError):
        return None
    return bool(abs(started - create_time) <= _CREATE_TIME_TOLERANCE)


@dataclass
class _Beat:
    token: Any
    changed_at: float
    changes: int = 0  # times we saw it change: more than 0 proves a live writer, for now


class LivenessJudge:
    """Remembers when each writer's heartbeat last changed and judges who is dead."""

    def __init__(
        self,
        me: Identity,
        lease_s: float,
        clock: Callable[[], float] = time.monotonic,
        probe: Callable[[int, float, bool], bool | None] = probe_process,
    ) -> None:
        self.me = me
        self.lease_s = lease_s
        self.clock = clock
        self.probe = probe
        self._beats: dict[str, _Beat] = {}
        self._probed: set[str] = set()  # writers already given the thorough probe once
        self._last_tick = clock()

    def tick(self) -> None:
        """Call once per scan: after a stall, nobody's silence is evidence."""
        now = self.clock()
        if now - self._last_tick > self.lease_s / _STALL_FRACTION:
            for beat in self._beats.values():
                beat.changed_at = now
        self._last_tick = now

    def same_kernel(self, meta: Meta) -> bool:
        return meta.boot_id == self.me.boot_id and meta.pid_ns == self.me.pid_ns

    def observe(self, writer_id: str, token: Any) -> None:
        """Record the writer's heartbeat token (anything that changes when it beats)."""
        beat = self._beats.get(writer_id)
        if beat is None:
            self._beats[writer_id] = _Beat(token, self.clock())
        elif beat.token != token:
            beat.token, beat.changed_at, beat.changes = token, self.clock(), beat.changes + 1

    def is_dead(self, writer_id: str, meta: Meta | None) -> bool:
        if meta is not None and self.same_kernel(meta):
            pid, started = meta.pid, meta.create_time
            if pid is None or started is None:
                return False
            # Beating means alive. At first sight and after a silence, look closer: the pid
            # may be reused, or a zombie its parent has not reaped yet.
            silent = self.silent_for(writer_id)
            thorough = writer_id not in self._probed or silent is None or silent >= _THOROUGH_AFTER
            self._probed.add(writer_id)
            return self.probe(pid, started, thorough) is False
        beat = self._beats.get(writer_id)
        return beat is not None and self.clock() - beat.changed_at >= self.lease_s

    def seen(self, writer_id: str) -> bool:
        return writer_id in self._beats

    def seen_beating(self, writer_id: str) -> bool:
        """True once we have seen this writer's heartbeat change with our own eyes."""
        beat = self._beats.get(writer_id)
        return beat is not None and beat.changes > 0

    def silent_for(self, writer_id: str) -> float | None:
        beat = self._beats.get(writer_id)
        return None if beat is None else self.clock() - beat.changed_at

    def forget(self, writer_id: str) -> None:
        self._beats.pop(writer_id, None)
        self._probed.discard(writer_id)
