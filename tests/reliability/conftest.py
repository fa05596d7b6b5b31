"""Fixtures of the reliability tests: hermetic environment, and mounts that always go away.

Hostile-disk tests mount a small tmpfs (disk full), remount it read-only, or mount a FUSE
file system (bindfs). That takes root (CAP_SYS_ADMIN); without it those tests skip and
say why. Every mount is detached (`umount -l`) when its test ends, pass or fail, after
the test's in-process writers are finished, so nothing stays mounted under tmp_path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.procs import hermetic_environ

BINDFS_INSTALL = "apt-get install -y bindfs"


@pytest.fixture(autouse=True)
def _hermetic_environ(_finish_writers_and_restore_environ: None) -> Iterator[None]:
    """No distwal or launcher variable from the caller's shell; in-process writers never lead."""
    hermetic_environ()
    yield


def finish_in_process_writers(timeout: float = 5.0) -> None:
    import importlib

    from distwal import _api

    try:  # where the process-wide hooks live has moved before: find them either way
        writers = list(importlib.import_module("distwal._hooks").hooks.writers)
    except (ImportError, AttributeError):
        writers = list(importlib.import_module("distwal.writer.writer")._hooks.writers)
    if _api._current is not None and _api._current not in writers:
        writers.append(_api._current)
    for writer in writers:
        writer.finish(timeout=timeout)
    _api._current = None


class Mounts:
    """Mount helpers for one test; everything is unmounted at its end."""

    def __init__(self) -> None:
        self._mounted: list[tuple[str, subprocess.Popen[bytes] | None]] = []
        self.cleanups: list[object] = []  # callables run first at teardown (free ballast, ...)

    def tmpfs(self, path: str | os.PathLike[str], size: str) -> Path:
        """A tmpfs of `size` (e.g. "1m") at path (created); skips the test without the right to mount."""
        self._require_root()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}): needs root with CAP_SYS_ADMIN")
        self._mounted.append((str(path), None))
        return path

    def remount(self, path: str | os.PathLike[str], read_only: bool, timeout: float = 5.0) -> None:
        """Remount read-only or read-write; retried while the kernel says busy (a file open for writing)."""
        option = "remount,ro" if read_only else "remount,rw"
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(["mount", "-o", option, str(path)], capture_output=True, text=True, check=False)
            if result.returncode == 0:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"mount -o {option} {path} failed for {timeout}s: {result.stderr.strip()}")
            time.sleep(0.02)

    def bindfs(self, source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
        """A FUSE mount of `source` at `target` (bindfs, foreground, so this test owns its daemon)."""
        self._require_root()
        exe = shutil.which("bindfs")
        if exe is None:
            pytest.skip(f"bindfs is not installed (FUSE tests need it: {BINDFS_INSTALL})")
        if not os.path.exists("/dev/fuse"):
            pytest.skip("no /dev/fuse on this machine: FUSE tests cannot run")
        target = Path(target)
        target.mkdir(parents=True, exist_ok=True)
        # -f: stay in the foreground, so the daemon is our child and is always reaped.
        daemon = subprocess.Popen([exe, "-f", "--no-allow-other", str(source), str(target)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._mounted.append((str(target), daemon))
        deadline = time.monotonic() + 10
        while not os.path.ismount(target):
            if daemon.poll() is not None:
                err = daemon.stderr.read().decode(errors="replace").strip() if daemon.stderr else ""
                pytest.skip(f"bindfs could not mount here: {err}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"bindfs did not mount {target} within 10 s")
            time.sleep(0.02)
        return target

    @staticmethod
    def _require_root() -> None:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs or FUSE file system needs root")

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()  # type: ignore[operator]
            except Exception as exc:  # noqa: BLE001 - reported, teardown goes on
                print(f"cleanup failed: {exc!r}")
        try:
            finish_in_process_writers(timeout=3.0)
        finally:
            self._unmount_all()

    def _unmount_all(self) -> None:
        for path, daemon in reversed(self._mounted):
            subprocess.run(["mount", "-o", "remount,rw", path], capture_output=True, check=False)
            subprocess.run(["umount", "-l", path], capture_output=True, check=False)
            if daemon is not None:
                if daemon.poll() is None:
                    daemon.terminate()
                try:
                    daemon.wait(5)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
                if daemon.stderr is not None:
                    daemon.stderr.close()
        self._mounted.clear()


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    table = Mounts()
    try:
        yield table
    finally:
        table.close()
