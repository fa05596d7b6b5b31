"""How a writer ended: what a process notes about itself, and what a reader infers.

Every writer row of status, and every writer a sink is told is done, carries an end:

    {"reason": "finished" | "exception" | "exit" | "signal" | "lost",
     "detail": str, "code": int | None, "signal": "SIGTERM" | ... | None, "ts": float | None}

A process records its own end in its finish mark (key "end"). EndNotes keeps the first
thing that ends the process: an uncaught exception (sys.excepthook for the main thread,
threading.excepthook for the others), a catchable signal (SIGTERM through distwal's
handler; SIGINT arrives as KeyboardInterrupt), or sys.exit(code). A multiprocessing
worker leaves through os._exit after running its finalizers while its exception (or
SystemExit) is still being raised: sys.exc_info() there says how it ended. A writer
whose folder has no finish mark once it is gone (SIGKILL, the OOM killer, a dead host)
is `lost`, and its `ts` is its last sign of life: its last record or heartbeat.

Only the first note counts: torchrun stops the survivors of a failed rank with SIGTERM,
and a signal handler that raises must not hide the signal behind its exception.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable

from . import _files
from ._marks import Finish, Heartbeat
from ._segment import last_ts_on_disk

REASONS = ("finished", "exception", "exit", "signal", "lost")
LOST_DETAIL = "gone without a finish mark (SIGKILL, the OOM killer, a dead host)"
_DETAIL_CHARS = 200  # an exception's first line is cut here: a finish mark stays small


def make_end(
    reason: str, detail: str, code: int | None = None, signal: str | None = None, ts: float | None = None
) -> dict[str, Any]:
    return {"reason": reason, "detail": detail, "code": code, "signal": signal,
            "ts": time.time() if ts is None and reason != "lost" else ts}


def describe_exception(exc_type: type[BaseException], exc: BaseException | None) -> str:
    """`Type: first line of the message` (the type alone when the message is empty)."""
    name = exc_type.__qualname__
    if exc_type.__module__ not in ("builtins", "__main__"):
        name = f"{exc_type.__module__}.{name}"
    text = str(exc) if exc is not None else ""
    first = text.strip().splitlines()[0] if text.strip() else ""
    detail = f"{name}: {first}" if first else name
    return detail if len(detail) <= _DETAIL_CHARS else detail[: _DETAIL_CHARS - 1] + "…"


def exit_code_of(code: Any) -> int:
    """The process exit code sys.exit(code) gives: None is 0, an int itself, anything else 1."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def end_of_exit(code: int, ts: float | None = None) -> dict[str, Any]:
    if code == 0:
        return make_end("finished", "exit code 0", code=0, ts=ts)
    return make_end("exit", f"exit code {code}", code=code, ts=ts)


def end_of_signal(signum: int, code: int | None = None, ts: float | None = None) -> dict[str, Any]:
    name = signal_name(signum)
    return make_end("signal", name, code=code, signal=name, ts=ts)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class EndNotes:
    """The process's own account of how it is ending (one per process; see the module docstring)."""

    def __init__(self) -> None:
        self.first: dict[str, Any] | None = None  # the first exception or signal noted
        # A thread's uncaught exception does not end the process: it is the end only when
        # nothing else is (the process then exits as if all went well).
        self.thread_exception: dict[str, Any] | None = None
        self.exit_code: int | None = None  # from the last sys.exit() call
        self.exit_ts: float | None = None
        self._installed = False

    def install(self) -> None:
        """Chain to sys.excepthook, threading.excepthook and sys.exit (once per process)."""
        if self._installed:
            return
        self._installed = True
        previous_hook = sys.excepthook
        previous_thread_hook = threading.excepthook
        previous_exit = sys.exit

        def excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
            self.note_exception(exc_type, exc, None)
            previous_hook(exc_type, exc, tb)

        def thread_excepthook(args: Any) -> None:
            if args.exc_type is not SystemExit:  # threading ignores SystemExit in a thread
                self.note_exception(args.exc_type, args.exc_value, args.thread)
            previous_thread_hook(args)

        def exit(code: Any = None) -> None:  # stands in for sys.exit
            # sys.exit is the one way to learn the code: atexit handlers are not told it.
            self.exit_code, self.exit_ts = exit_code_of(code), time.time()
            previous_exit(code)

        sys.excepthook = excepthook
        threading.excepthook = thread_excepthook
        sys.exit = exit  # type: ignore[assignment]

    def note_exception(
        self, exc_type: type[BaseException], exc: BaseException | None, thread: threading.Thread | None
    ) -> None:
        if thread is not None and thread is not threading.main_thread():
            if self.thread_exception is None:
                detail = f"{describe_exception(exc_type, exc)} (in thread {thread.name})"
                self.thread_exception = make_end("exception", detail)
            return
        if self.first is not None:
            return
        if issubclass(exc_type, KeyboardInterrupt):  # what Python's SIGINT handler raises
            self.first = end_of_signal(signal.SIGINT)
            return
        self.first = make_end("exception", describe_exception(exc_type, exc), code=1)

    def note_signal(self, signum: int) -> None:
        if self.first is None:
            self.first = end_of_signal(signum)

    def end_at_exit(self) -> dict[str, Any]:
        """The end to write in the finish mark at interpreter exit (or in a worker's finalizers)."""
        exc_type, exc, _ = sys.exc_info()  # set in a multiprocessing worker's finalizers
        if self.first is None and exc_type is not None and exc_type is not SystemExit:
            self.note_exception(exc_type, exc, None)
        if self.first is not None:
            return dict(self.first)
        if exc_type is SystemExit:
            end = end_of_exit(exit_code_of(getattr(exc, "code", None)))
        elif self.exit_code is not None:
            end = end_of_exit(self.exit_code, self.exit_ts)
        else:
            end = end_of_exit(0)
        if end["reason"] == "finished" and self.thread_exception is not None:
            return {**self.thread_exception, "code": end["code"]}
        return end

    def after_fork_in_child(self) -> None:
        """A forked child's end is its own (the hooks stay installed: they are process-wide)."""
        self.first, self.thread_exception, self.exit_code, self.exit_ts = None, None, None, None


def end_in_flight() -> dict[str, Any] | None:
    """The end an exception being raised right now means (finish() in a `finally:` block
    or a context manager's exit), None when there is none."""
    exc_type, exc, _ = sys.exc_info()
    if exc_type is None:
        return None
    if issubclass(exc_type, SystemExit):
        return end_of_exit(exit_code_of(getattr(exc, "code", None)))
    if issubclass(exc_type, KeyboardInterrupt):
        return end_of_signal(signal.SIGINT)
    return make_end("exception", describe_exception(exc_type, exc))


# -- what a reader infers -------------------------------------------------------------------


def recorded_end(end: dict[str, Any] | None, ts: float | None = None) -> dict[str, Any]:
    """The end a finish mark (or a tombstone) records; without one (older writers) it means
    finished, at `ts` (the mark's time)."""
    if not isinstance(end, dict) or end.get("reason") not in REASONS:
        return make_end("finished", "finish mark", ts=ts)
    code, sig, when = end.get("code"), end.get("signal"), end.get("ts")
    return {
        "reason": end["reason"],
        "detail": str(end.get("detail") or end["reason"])[: _DETAIL_CHARS + 40],
        "code": code if type(code) is int else None,
        "signal": sig if isinstance(sig, str) else None,
        "ts": float(when) if isinstance(when, (int, float)) and not isinstance(when, bool) else ts,
    }


def last_sign_of_life(dir_fd: int | None, tag: int, heartbeat: Heartbeat | None) -> float | None:
    """The later of the last heartbeat and the last record on disk (unix time), None if neither."""
    signs = []
    if heartbeat is not None and heartbeat.ts is not None:
        signs.append(heartbeat.ts)
    try:
        record_ts = last_ts_on_disk(dir_fd, writer=tag) if dir_fd is not None else None
    except OSError:
        record_ts = None
    if record_ts is not None:
        signs.append(record_ts)
    return max(signs) if signs else None


def writer_end(finish: Finish | None, gone: bool, last_sign: Callable[[], float | None]) -> dict[str, Any] | None:
    """How a writer ended: its finish mark's end, `lost` if it is gone without one, else None."""
    if finish is not None:
        return recorded_end(finish.end, finish.ts)
    if gone:
        return make_end("lost", LOST_DETAIL, ts=last_sign())
    return None


def folder_last_sign(path: str, tag: int, heartbeat: Heartbeat | None) -> float | None:
    """last_sign_of_life of the writer folder at `path` (the heartbeat alone if it cannot be opened)."""
    try:
        fd = _files.open_dir(path)
    except OSError:
        return last_sign_of_life(None, tag, heartbeat)
    try:
        return last_sign_of_life(fd, tag, heartbeat)
    finally:
        os.close(fd)


def first_failure(rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The earliest-ending row whose end is not `finished` (an unknown time sorts last)."""
    failed = [r for r in rows if isinstance(r.get("end"), dict) and r["end"]["reason"] != "finished"]
    if not failed:
        return None
    row = min(failed, key=lambda r: (r["end"]["ts"] is None, r["end"]["ts"] or 0.0))
    end = row["end"]
    return {"writer": row.get("writer"), "rank": row.get("rank"), "host": row.get("host"),
            "reason": end["reason"], "detail": end["detail"], "ts": end["ts"]}


notes = EndNotes()
