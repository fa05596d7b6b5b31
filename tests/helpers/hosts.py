"""Simulated hosts on one machine: own pid namespace, own hostname, the same shared directory.

    with sim_host("nodeA") as host:                           # skips the test if unshare is refused
        with host.start_writer(tmp_path, env, "a", pid=4242) as rank:   # cluster.WRITER on nodeA, pid 4242 there
            rank.wait_for("ready")
            host.kill()                                       # SIGKILL the namespace's init: all of nodeA dies
        with host.start([sys.executable, "-m", "distwal", "status", wal], env, tmp_path) as cmd:  # any command
            ...

A host is `unshare --pid --uts --fork --mount-proc --kill-child` around a tiny init
(pid 1 there) that sets the hostname and reaps orphans. Commands join it with
`nsenter --target <init> --pid --uts --mount --wd <cwd>`: they get the host's pids (pid
collisions across hosts are real), its hostname, and its /proc (so psutil inside reads the
host's own processes). The mount namespace is a private copy of ours, so the test's
directories are the same files everywhere. The boot id is the machine's, shared by every
host, as containers on one node share it: liveness must key on boot id AND pid namespace.

`pid=N` makes the command run as pid N inside the host, through the host's
/proc/sys/kernel/ns_last_pid (what CRIU uses): a small launcher writes N-1 there and forks
until the child gets N (a pid still held by a zombie is retried until the deadline). That
forces pid collisions across hosts, and a pid reused on the same host after a death. Start
one command at a time on a host when one of them wants a pid (wait for its first line):
another command forking on that host in between could take the pid.

FUSE flavour: SimHost(name, fuse=FuseMount(dir, timeout)) mounts `dir` over itself with
bindfs (`-o attr_timeout=T,entry_timeout=T,kernel_cache`) in the host's own mount
namespace, so every host sees the same path through its own FUSE mount, as NFS clients
do: POSIX locks taken there do not reach the other hosts (the kernel keeps FUSE locks per
mount when the filesystem does not implement them), and another host's renames and
appends are seen up to T seconds late. The bindfs daemon runs inside the host: killing
the host unmounts it.

Killing: host.kill() SIGKILLs the host's init; the kernel then kills every process in the
namespace and, before init's exit completes, waits for all of them, so when kill() returns
nothing on that host runs anymore. A command's Child is the `nsenter` process outside the
host; kill() on it signals its whole process group (nsenter, the launcher, the command).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from .procs import PRELUDE, Child

UNSHARE = shutil.which("unshare")
NSENTER = shutil.which("nsenter")
BINDFS = shutil.which("bindfs")

_INIT = r'''
import os, socket, sys, time
socket.sethostname(sys.argv[1])
os.write(1, b"up\n")
while True:  # pid 1 of the host: reap the orphans (a command whose launcher was killed first)
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(0.02)
'''

_LAUNCH = r'''
import os, sys, time
want, argv = int(sys.argv[1]), sys.argv[2:]
if not want:
    os.execv(argv[0], argv)
deadline = time.monotonic() + 10
while True:
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(want - 1))
    pid = os.fork()
    if pid == 0:
        if os.getpid() != want:
            os._exit(99)
        os.execv(argv[0], argv)
    if pid == want:
        break
    os.waitpid(pid, 0)
    if time.monotonic() > deadline:
        sys.exit(f"launcher: pid {want} stayed taken on this host")
    time.sleep(0.02)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
'''


@functools.lru_cache(maxsize=None)
def unshare_problem() -> str | None:
    """Why simulated hosts cannot run here (None: they can), probed once per session."""
    if UNSHARE is None or NSENTER is None:
        return "unshare/nsenter (util-linux) not installed"
    probe = "import socket; socket.sethostname('probe'); open('/proc/sys/kernel/ns_last_pid', 'w').write('100')"
    try:
        result = subprocess.run(
            [UNSHARE, "--pid", "--uts", "--fork", "--mount-proc", sys.executable, "-c", probe],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare --pid --uts --fork --mount-proc failed to run: {exc}"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"unshare --pid --uts --fork --mount-proc is not permitted here (needs CAP_SYS_ADMIN): {last}"
    return None


@functools.lru_cache(maxsize=None)
def fuse_problem() -> str | None:
    """Why FUSE-mounted simulated hosts cannot run here (None: they can), probed once."""
    problem = unshare_problem()
    if problem is not None:
        return problem
    if BINDFS is None:
        return "bindfs is not installed (Debian: apt-get install bindfs)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (FUSE is not available in this kernel or container)"
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fuse-probe-") as tmp:
        script = f"{BINDFS} {tmp} {tmp} && touch {tmp}/probe && fusermount -u {tmp}"
        try:
            result = subprocess.run([UNSHARE or "unshare", "--mount", "sh", "-c", script], capture_output=True,
                                    text=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bindfs failed to run: {exc}"
        if result.returncode != 0:
            return f"bindfs cannot mount here: {result.stderr.strip()[-200:]}"
    return None


def require_fuse_hosts() -> None:
    """Skip the calling test, with the reason, when FUSE-mounted hosts are not available."""
    problem = fuse_problem()
    if problem is not None:
        pytest.skip(f"FUSE-mounted simulated hosts unavailable: {problem}")


@dataclass(frozen=True)
class FuseMount:
    """The shared directory as one host's NFS-like client mount sees it (bindfs, see above)."""

    path: str
    timeout: float = 1.0  # attr_timeout and entry_timeout, seconds (NFS: actimeo)
    kernel_cache: bool = True

    def options(self) -> str:
        opts = f"attr_timeout={self.timeout},entry_timeout={self.timeout}"
        return opts + (",kernel_cache" if self.kernel_cache else "")


def require_sim_hosts() -> None:
    """Skip the calling test, with the reason, when simulated hosts are not available."""
    problem = unshare_problem()
    if problem is not None:
        pytest.skip(f"simulated hosts unavailable: {problem}")


def free_pid_on_main_host(gap: int = 200) -> int:
    """A pid no process has in our own pid namespace, and the last one it will hand out soon.

    Pids are allocated cyclically upwards from /proc/sys/kernel/ns_last_pid (wrapping at
    pid_max), so the free pid just *below* the last one allocated (minus `gap`) is the one the
    allocator reaches last. Still check it (psutil.pid_exists) where it matters.
    """
    import psutil

    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    with open("/proc/sys/kernel/ns_last_pid") as f:
        last = int(f.read())
    used = set(psutil.pids())
    for step in range(gap, pid_max):
        pid = (last - step) % pid_max
        if pid > 300 and pid not in used:
            return pid
    raise RuntimeError("no free pid found")


class SimHost:
    """One simulated host: an init in its own pid and UTS namespace; start commands into it."""

    def __init__(self, name: str, fuse: FuseMount | None = None) -> None:
        self.name = name
        self.fuse = fuse
        self.init: Child | None = None
        self.init_pid = 0  # the host's pid 1, as our namespace numbers it
        self.killed_at: float | None = None

    # -- lifecycle --------------------------------------------------------------------

    def boot(self, timeout: float = 20.0) -> SimHost:
        import psutil

        assert UNSHARE is not None
        popen = subprocess.Popen(
            [UNSHARE, "--pid", "--uts", "--fork", "--mount-proc", "--kill-child",
             sys.executable, "-c", _INIT, self.name],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        self.init = Child(popen, Path(f"<init of simulated host {self.name}>"))
        self.init.wait_for("up", timeout=timeout)
        children = psutil.Process(popen.pid).children()
        assert len(children) == 1, f"unshare {popen.pid} should have exactly its init as child: {children}"
        self.init_pid = children[0].pid
        if self.fuse is not None:
            self._mount(self.fuse, timeout)
        return self

    def _mount(self, fuse: FuseMount, timeout: float) -> None:
        """bindfs `fuse.path` over itself inside this host (its daemon lives and dies with the host)."""
        assert NSENTER is not None and BINDFS is not None, "bindfs is not installed"
        os.makedirs(fuse.path, mode=0o700, exist_ok=True)
        result = subprocess.run(
            [NSENTER, f"--target={self.init_pid}", "--pid", "--mount", BINDFS, "-o", fuse.options(),
             fuse.path, fuse.path],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, f"bindfs on {self.name} failed: {result.stderr.strip()}"
        probe = subprocess.run(
            [NSENTER, f"--target={self.init_pid}", "--mount", "stat", "-f", "-c", "%T", fuse.path],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        assert "fuse" in probe.stdout, f"{fuse.path} on {self.name} is not a FUSE mount: {probe.stdout.strip()}"

    def alive(self) -> bool:
        return self.init is not None and self.init.popen.poll() is None

    def kill(self, timeout: float = 20.0) -> float:
        """SIGKILL the host's init: everything on the host dies. Returns time.time() just before.

        Returns once the kernel has torn the namespace down (unshare saw its init die),
        so nothing on the host runs any more.
        """
        assert self.init is not None
        self.killed_at = time.time()
        try:
            os.kill(self.init_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.init.popen.wait(timeout)
        return self.killed_at

    def shutdown(self) -> None:
        if self.init is None:
            return
        if self.alive():
            try:
                self.kill()
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        self.init.reap()

    # -- commands ---------------------------------------------------------------------

    def argv(self, command: list[str], cwd: str | os.PathLike[str]) -> list[str]:
        """The argv that runs `command` on this host (for callers that spawn it themselves)."""
        return self._argv(command, os.fspath(cwd), None)

    def _argv(self, command: list[str], cwd: str, pid: int | None) -> list[str]:
        assert NSENTER is not None and self.init_pid, "boot() the host first"
        return [NSENTER, f"--target={self.init_pid}", "--pid", "--uts", "--mount", f"--wd={cwd}",
                sys.executable, "-c", _LAUNCH, str(pid or 0), *command]

    @contextmanager
    def start(self, command: list[str], env: dict[str, str], cwd: str | os.PathLike[str],
              pid: int | None = None, label: str | None = None) -> Iterator[Child]:
        """Run `command` (argv; argv[0] an absolute path) on this host; always reaped.

        pid: run it as that pid inside the host (see the module docstring).
        """
        popen = subprocess.Popen(
            self._argv(command, os.fspath(cwd), pid), env=env, cwd=os.fspath(cwd),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        child = HostChild(popen, Path(label or " ".join(command)), self)
        try:
            yield child
        finally:
            child.reap()

    @contextmanager
    def spawn(self, workdir: str | os.PathLike[str], script: str, *args: str, env: dict[str, str],
              name: str = "child.py", pid: int | None = None) -> Iterator[Child]:
        """procs.spawn() on this host: PRELUDE + `script` in a fresh python, cwd=workdir."""
        path = Path(workdir) / name
        path.write_text(PRELUDE + textwrap.dedent(script))
        with self.start([sys.executable, str(path), *args], env, workdir, pid=pid,
                        label=f"{path} on {self.name}") as child:
            yield child

    @contextmanager
    def start_writer(self, workdir: str | os.PathLike[str], env: dict[str, str], tag: str,
                     pid: int | None = None, prelude: str = "", **opts: object) -> Iterator[Child]:
        """cluster.WRITER (rank `tag`) on this host; `prelude` runs before it (before distwal's import)."""
        from .cluster import WRITER, writer_args

        with self.spawn(workdir, prelude + WRITER, writer_args(tag, **opts), env=env,
                        name=f"rank_{tag}_{self.name}.py", pid=pid) as child:
            yield child


class HostChild(Child):
    """A command on a simulated host; self.pid is its `nsenter` outside the host."""

    def __init__(self, popen: subprocess.Popen[bytes], script_path: Path, host: SimHost) -> None:
        super().__init__(popen, script_path)
        self.host = host

    def kill(self, sig: int = signal.SIGKILL) -> float:
        """Signal the command's whole process group: nsenter, the launcher and the command."""
        self.killed_at = time.time()
        self.kill_group(sig)
        return self.killed_at


# -- watching writer folders (reliability tests) ---------------------------------------------


def where_is(wal_dir: str | os.PathLike[str], writer_id: str) -> str | None:
    """"writers", "adopted" or "history" (a tombstone only): where the writer's folder is now."""
    root = Path(wal_dir)
    for sub in ("writers", "adopted"):
        if (root / sub / writer_id).is_dir():
            return sub
    if (root / "history" / f"{writer_id}.json").exists():
        return "history"
    return None


def wait_moved_from_writers(wal_dir: str | os.PathLike[str], since: dict[str, float], timeout: float,
                            context: str = "") -> dict[str, tuple[float, str | None]]:
    """Poll (every 10 ms) until each writers/<id> of `since` is gone.

    Returns {id: (seconds from since[id] (a time.time()) to when it was seen gone, where it went)}.
    """
    deadline = time.monotonic() + timeout
    root = Path(wal_dir)
    moved: dict[str, tuple[float, str | None]] = {}
    while True:
        for writer_id, start in since.items():
            if writer_id not in moved and not (root / "writers" / writer_id).is_dir():
                moved[writer_id] = (time.time() - start, where_is(wal_dir, writer_id))
        if len(moved) == len(since):
            return moved
        if time.monotonic() >= deadline:
            late = {w: f"{time.time() - s:.2f}s" for w, s in since.items() if w not in moved}
            raise AssertionError(f"still in writers/ after {context}: {late}")
        time.sleep(0.01)


def assert_stays_in_writers(wal_dir: str | os.PathLike[str], writer_ids: list[str], seconds: float,
                            context: str = "") -> None:
    """Watch for `seconds` (every 20 ms; the watch is the scenario): each folder stays in writers/."""
    started = time.monotonic()
    root = Path(wal_dir)
    while True:
        for writer_id in writer_ids:
            if not (root / "writers" / writer_id).is_dir():
                raise AssertionError(
                    f"live writer {writer_id} left writers/ (now in {where_is(wal_dir, writer_id)}) "
                    f"{time.monotonic() - started:.2f}s into the watch {context}"
                )
        if time.monotonic() - started >= seconds:
            return
        time.sleep(0.02)


@contextmanager
def sim_host(name: str, fuse: FuseMount | None = None) -> Iterator[SimHost]:
    """A booted simulated host named `name`, shut down (everything on it killed) on exit.

    Skips the test, saying why, when unshare (or, with `fuse`, bindfs) is not usable here.
    """
    if fuse is not None:
        require_fuse_hosts()
    require_sim_hosts()
    host = SimHost(name, fuse)
    try:
        yield host.boot()
    finally:
        host.shutdown()


__all__ = [
    "FuseMount", "HostChild", "SimHost", "fuse_problem", "require_fuse_hosts", "assert_stays_in_writers", "free_pid_on_main_host", "require_sim_hosts", "sim_host",
    "unshare_problem", "wait_moved_from_writers", "where_is",
]
