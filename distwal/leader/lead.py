"""The one way in to leadership: `with lead(dir) as sender:`.

    with lead("/shared/run1", "http://collector:8080/ingest", kind="drain", timeout=60) as sender:
        sender.roster.discover()
        marks = sender.roster.pending_marks()
        deadline = sender.clock() + 300
        outcome = sender.run(lambda: False, lambda: deadline, marks)  # "drained", "deadline", ...

lead() takes leadership of a directory as any contender does (the lock, the lease, the
next epoch: Elector.acquire), waiting up to `timeout`, builds the sender, and on exit
closes it, releases the lease and drops the lock. `distwal drain`, the tests and the
benchmarks lead this way. A process whose leadership an Elector keeps (a rank's sender
process, `distwal run`'s sidecar thread) builds its sender with build_sender(), as lead() does.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator

from .._config import Config
from .._exceptions import LeaderTimeout
from .._files import ensure_domain
from .._layout import Identity, Modes
from ..sinks import Sink
from .election import LeaseKeeper, release_lease
from .elector import Elector, Leadership, owner_of
from .liveness import LivenessJudge
from .sender import Sender

POLL = 0.2  # seconds between attempts to take leadership
DEFAULT_TIMEOUT = 60.0  # seconds lead() waits for leadership


def build_sender(
    config: Config,
    epoch: int,
    owner: dict[str, Any],
    domain: str,
    identity: Identity,
    sink: Sink | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Sender:
    """A Sender for `config.dir` at `epoch`, with the sink (built from config.sink unless
    given) and the liveness rules of `config`."""
    from ..sinks import sink_from_url

    modes = Modes.for_config(config.shared_group)
    lease = LeaseKeeper(config.dir, epoch, owner, config.lease_s, modes, clock)
    judge = LivenessJudge(identity, config.lease_s, clock)
    return Sender(config.dir, sink if sink is not None else sink_from_url(config.sink), config.sink, lease, judge,
                  domain, modes, clock=clock)


@contextmanager
def lead(
    where: str | Config,
    sink: str | None = None,
    *,
    using: Sink | None = None,
    kind: str = "lead",
    timeout: float = DEFAULT_TIMEOUT,
    waiting: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Sender]:
    """Lead a directory for the length of a with block; yield its Sender.

    `where` is the directory (its settings from the environment, as Config.load reads
    them) or a Config. `sink` is the sink's URL (else the config's): what the directory
    records and status shows. `using` is a Sink already built for that URL (a MockSink in
    tests, an HTTPSink without gzip in a benchmark); once leadership comes, the sender
    owns it and closes it on exit. `kind` names the leader in the lease and in status.
    `waiting` is called after each attempt that did not lead (to say why, or to give up
    by raising). Raises LeaderTimeout when leadership did not come within `timeout`
    seconds of `clock` (at least one attempt is made). Two leaders of one kind in one
    process are one owner: the second takes over from the first.
    """
    if isinstance(where, Config):
        config = replace(where, sink=sink) if sink is not None else where
    else:
        config = Config.load(dir=where, sink=sink)
    modes = Modes.for_config(config.shared_group)
    domain = ensure_domain(config.dir, modes)
    identity = Identity.of_this_process()
    owner = owner_of(identity, kind)
    elector = Elector(config, identity, owner, domain, start=_hosted_by_lead, clock=clock)
    _acquire(elector, timeout, waiting, clock)
    try:
        sender = build_sender(config, elector.epoch, owner, domain, identity, using, clock)
    except BaseException:
        _step_down(elector)
        raise
    try:
        yield sender
    finally:
        try:
            sender.close()
        finally:
            _step_down(elector)


def _acquire(elector: Elector, timeout: float, waiting: Callable[[], None] | None, clock: Callable[[], float]) -> None:
    deadline = clock() + timeout
    try:
        while not elector.acquire():
            if waiting is not None:
                waiting()
            if clock() >= deadline:
                raise LeaderTimeout(f"could not take leadership of {elector.config.dir} within {timeout:.0f}s")
            time.sleep(POLL)
    except BaseException:
        elector.lock.release()  # the lock may be ours while the lease is someone else's
        raise


def _step_down(elector: Elector) -> None:
    release_lease(elector.config.dir, elector.epoch, elector.modes)
    elector.lock.release()


def _hosted_by_lead(epoch: int) -> Leadership:
    raise RuntimeError("lead() hosts its sender in the with block; it never starts one")
