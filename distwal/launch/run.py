"""`distwal run -- CMD`: the sidecar that wraps a job and is its preferred leader.

It exports DISTWAL_DIR, DISTWAL_SINK and DISTWAL_RUN_ID (and itself as the preferred
leader) to CMD's processes, leads while it lives (ranks defer to it, and take over if it
dies), forwards SIGINT and SIGTERM to CMD's process group, and once CMD exits drains
what the ranks left until everything is delivered or the drain timeout passes. It exits
with CMD's exit code.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import time
from typing import Any, Callable

from .._config import Config, _redact
from .._files import ensure_domain, prepare_dir
from .._layout import Identity, Modes
from .._preflight import check_sink
from ..leader.elector import Elector, ThreadLeadership, owner_of
from ..leader.lead import build_sender
from ..leader.rank import ENV_PREFERRED, format_preferred

logger = logging.getLogger("distwal")

DEFAULT_DRAIN_TIMEOUT = 120.0  # seconds
_FORWARDED = (signal.SIGINT, signal.SIGTERM)


def run_command(
    config: Config,
    command: list[str],
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    progress: Callable[[dict[str, Any]], None] | None = None,
    say: Callable[[str], None] = logger.warning,
) -> int:
    """Run `command` as a job whose ranks log into config.dir; return its exit code.

    `say` gets the lines meant for the user: the sink check before CMD starts, and after
    the drain what was delivered where, or what is left and the command that finishes it.
    """
    rdzv_id = torchrun_rdzv_id(command)
    if rdzv_id and not any(os.environ.get(name, "").strip() for name in _RUN_ID_SOURCES):
        # Every node runs its own `distwal run`: a run id made up here would split the job
        # in one run per node. torchrun's rendezvous id is the one every node shares.
        config = dataclasses.replace(config, run_id=rdzv_id)
    modes = Modes.for_config(config.shared_group)
    prepare_dir(config.dir, modes)
    domain = ensure_domain(config.dir, modes)
    ok, line = check_sink(config.sink)
    say(line if ok else f"{line}; the job starts anyway and its records wait in {config.dir}")
    identity = Identity.of_this_process()
    owner = owner_of(identity, "sidecar")
    elector = Elector(
        config, identity, owner, domain,
        start=lambda epoch: ThreadLeadership(build_sender(config, epoch, owner, domain, identity)),
    )
    elector.contend()  # lead from the start when we can, so ranks defer at once
    elector.start()

    env = dict(os.environ)
    config.export(env)
    env[ENV_PREFERRED] = format_preferred(identity)
    try:
        child = subprocess.Popen(command, env=env, start_new_session=True)
    except OSError as exc:
        elector.stop()
        say(f"cannot start {command[0]!r}: {exc.strerror}")
        return 127
    previous = {signum: signal.signal(signum, _forward_to(child)) for signum in _FORWARDED}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    started = time.monotonic()
    drained, state = _drain(elector, drain_timeout, progress)
    say(delivery_line(config, drained, state, time.monotonic() - started, drain_timeout))
    return code if code >= 0 else 128 - code


def delivery_line(config: Config, drained: bool, state: dict[str, Any], seconds: float, timeout: float) -> str:
    """After the drain: what was delivered where, or what is left and the command that finishes it."""
    sink = _redact(config.sink)
    acked, writers = state.get("acked_records", 0), state.get("writers", 0)
    if drained:
        return f"delivered {_count(acked, 'record')} of {_count(writers, 'writer')} to {sink} in {seconds:.1f} s"
    left = state.get("pending_records")
    what = f"{left} records" if left else "records"
    why = f" (sink {state['state']}: {state['last_error']})" if state.get("last_error") else ""
    return (f"not everything was delivered within {timeout:.0f}s: {what} left in {config.dir}{why}; "
            f"{acked} delivered to {sink}. Finish with: distwal drain {config.dir}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


_RUN_ID_SOURCES = ("DISTWAL_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID")  # what run_id_from_env reads
_TORCHRUN_FLAGS = {"--standalone", "--no-python", "--no_python", "-m", "--module", "--run-path", "--run_path"}


def torchrun_rdzv_id(command: list[str]) -> str | None:
    """The `--rdzv-id` of a torchrun command (its own options, before the script), or None."""
    if not command or os.path.basename(command[0]) != "torchrun":
        return None
    args = iter(command[1:])
    for arg in args:
        if not arg.startswith("-"):
            return None  # the training script: what follows is its own arguments
        name, has_value, value = arg.partition("=")
        if name in ("--rdzv-id", "--rdzv_id"):
            found = value if has_value else next(args, "")
            return found if found and found != "none" else None
        if not has_value and name not in _TORCHRUN_FLAGS:
            next(args, None)  # this option's value
    return None


def _forward_to(child: subprocess.Popen[bytes]) -> Callable[[int, Any], None]:
    def forward(signum: int, frame: Any) -> None:
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    return forward


def _drain(
    elector: Elector, timeout: float, progress: Callable[[dict[str, Any]], None] | None
) -> tuple[bool, dict[str, Any]]:
    """After the job: become the leader if needed, then ship until drained or the timeout.

    Returns whether everything was delivered, and the sender's figures for the last line."""
    deadline = time.monotonic() + timeout
    while elector.leadership is None and time.monotonic() < deadline:
        time.sleep(0.1)  # the elector thread contends; the ranks are gone, so it will win
    leadership = elector.leadership
    if not isinstance(leadership, ThreadLeadership):
        elector.stop()
        return False, {}
    sender = leadership.sender
    leadership.request_drain(max(0.0, deadline - time.monotonic()))
    while leadership.alive():
        if progress is not None:
            progress(sender.progress())
        time.sleep(0.2)
    outcome = leadership.outcome
    state: dict[str, Any] = {**sender.progress(), "state": sender.health.state, "last_error": sender.health.last_error}
    state["writers"] = sender.health.retired + state["writers"]  # retired ones are no longer tracked
    elector.stop()
    return outcome == "drained", state
