"""A rank's part in the election: the elector init() gives each writer, and the preferred leader.

`distwal run` starts a sidecar that leads for the ranks of its node and names it in the
ranks' environment (ENV_PREFERRED); a rank's elector defers to it while it runs.
"""

from __future__ import annotations

import os

from .._config import Config
from .._layout import Identity
from .elector import Elector, ProcessLeadership, owner_of
from .liveness import probe_process

ENV_PREFERRED = "DISTWAL_PREFERRED_LEADER"  # "boot_id:pid_ns:pid:create_time" of the sidecar


def format_preferred(identity: Identity) -> str:
    return f"{identity.boot_id}:{identity.pid_ns}:{identity.pid}:{identity.create_time}"


def preferred_alive(value: str, me: Identity) -> bool:
    """True while the preferred leader named by `value` runs (only provable on our kernel)."""
    try:
        boot_id, pid_ns, pid, create_time = value.split(":")
        if boot_id != me.boot_id or int(pid_ns) != me.pid_ns:
            return False  # another host's sidecar: our own node has its own, or none
        # thorough: a killed sidecar nobody reaped yet is a zombie, and zombies do not lead
        return probe_process(int(pid), float(create_time), thorough=True) is not False
    except ValueError:
        return False


def start_elector(config: Config, identity: Identity, writer_id: str, rank: int | None, domain: str) -> Elector:
    """The running elector of the rank whose writer is `writer_id`: when it wins, the sender
    runs in a fresh interpreter (ProcessLeadership) that dies with the rank."""
    owner = owner_of(identity, "rank", writer_id, rank=rank)
    preferred = os.environ.get(ENV_PREFERRED, "")

    def may_lead() -> bool:  # defer to a live `distwal run` sidecar
        return not preferred or not preferred_alive(preferred, identity)

    def start(epoch: int) -> ProcessLeadership:
        return ProcessLeadership(config, epoch, owner, domain)

    return Elector(config, identity, owner, domain, start, may_lead).start()
