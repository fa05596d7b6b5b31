"""The directory layout: every file and folder name, and the identity a writer id encodes.

    <dir>/domain.json                     random id of this directory, fixed at creation
    <dir>/cursors.json                    how far the sink has acknowledged each writer (leader/cursor)
    <dir>/sender.json                     the leader's sink health, for status
    <dir>/writers/<writer-id>/meta.json   who wrote this folder (host, pid, rank, run, ...)
    <dir>/writers/<writer-id>/heartbeat.json   renewed by the writer; carries its durable watermark
    <dir>/writers/<writer-id>/finish.json      the finish mark: last seq and where it ends
    <dir>/writers/<writer-id>/00000000.wal     segments, in order
    <dir>/adopted/<writer-id>/            a dead writer's folder, moved aside until delivered
    <dir>/history/<writer-id>.json        tombstone of a removed writer
    <dir>/deadletters/<writer-id>.ndjson  envelopes the sink refused for good
    <dir>/quarantine/<writer-id>.<segment>.<start>.bin   a copy of a corrupt span that was skipped

The files' contents are in _marks (meta, heartbeat, finish, tombstone). Every name with
a variable part has a format_/parse_ pair. Everything inside the directory is opened
relative to a directory descriptor with O_NOFOLLOW, so a symlink planted there is never
followed (_files).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass

WRITERS = "writers"
ADOPTED = "adopted"  # folders of dead writers, moved aside by the leader until delivered
HISTORY = "history"  # tombstones of removed writers, for status
DEADLETTERS = "deadletters"  # envelopes the sink refused for good, one file per writer
QUARANTINE = "quarantine"  # copies of corrupt spans that were skipped
SENDER = "sender.json"  # the leader's sink health, for status
CURSORS = "cursors.json"  # the cursor book (leader/cursor)
DOMAIN = "domain.json"
META = "meta.json"
HEARTBEAT = "heartbeat.json"
FINISH = "finish.json"
SEGMENT_SUFFIX = ".wal"
TOMBSTONE_SUFFIX = ".json"
DEADLETTER_SUFFIX = ".ndjson"
QUARANTINE_SUFFIX = ".bin"

_SEGMENT_RE = re.compile(r"^([0-9a-f]{8})\.wal$")
_WRITER_ID_RE = re.compile(r"^[A-Za-z0-9._]{1,64}-[0-9a-f]{8}-\d+-\d+-\d+-[0-9a-f]{8}$")
_QUARANTINE_RE = re.compile(r"^(.+)\.([0-9a-f]{8})\.(\d+)\.bin$")


@dataclass(frozen=True)
class Modes:
    """Permission bits for what distwal creates: private by default, or shared with the group."""

    file: int
    dir: int

    @classmethod
    def for_config(cls, shared_group: bool) -> Modes:
        # setgid on directories keeps the group of everything created below them.
        return cls(file=0o660, dir=0o2770) if shared_group else cls(file=0o600, dir=0o700)


# -- names ---------------------------------------------------------------------------


def format_segment_name(index: int) -> str:
    return f"{index:08x}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    match = _SEGMENT_RE.fullmatch(name)
    return int(match.group(1), 16) if match else None


def format_tombstone_name(writer_id: str) -> str:
    return f"{writer_id}{TOMBSTONE_SUFFIX}"


def parse_tombstone_name(name: str) -> str | None:
    """The writer id a history/ file is the tombstone of; None for any other name."""
    writer_id = name[: -len(TOMBSTONE_SUFFIX)]
    return writer_id if name.endswith(TOMBSTONE_SUFFIX) and is_writer_id(writer_id) else None


def format_deadletter_name(writer_id: str) -> str:
    return f"{writer_id}{DEADLETTER_SUFFIX}"


def format_quarantine_name(writer_id: str, segment: int, start: int) -> str:
    """The copy of the corrupt bytes of `segment` from offset `start` on."""
    return f"{writer_id}.{segment:08x}.{start}{QUARANTINE_SUFFIX}"


def parse_quarantine_name(name: str) -> tuple[str, int, int] | None:
    """(writer id, segment, start) of a quarantine/ file; None for any other name."""
    match = _QUARANTINE_RE.fullmatch(name)
    if match is None or not is_writer_id(match.group(1)):
        return None
    return match.group(1), int(match.group(2), 16), int(match.group(3))


@dataclass(frozen=True)
class Identity:
    """What makes a process unique across hosts, containers, pid reuse and restarts."""

    host: str
    boot_id: str
    pid_ns: int
    pid: int
    create_time: float

    @classmethod
    def of_this_process(cls) -> Identity:
        import psutil  # only here: keep it off import time of the package

        pid = os.getpid()
        return cls(
            host=socket.gethostname(),
            boot_id=_read_boot_id(),
            pid_ns=_read_pid_ns(),
            pid=pid,
            create_time=psutil.Process(pid).create_time(),
        )


def format_writer_id(identity: Identity, suffix: str | None = None) -> str:
    """host-boot-pidns-pid-starttime-random: never a bare pid, never a rank."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", identity.host)[:64] or "_"
    suffix = suffix or secrets.token_hex(4)
    start_ms = int(identity.create_time * 1000)
    return f"{host}-{identity.boot_id[:8]}-{identity.pid_ns}-{identity.pid}-{start_ms}-{suffix}"


def is_writer_id(name: str) -> bool:
    return bool(_WRITER_ID_RE.fullmatch(name))


def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip().replace("-", "") or "0" * 8
    except OSError:
        return "0" * 8


def _read_pid_ns() -> int:
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
        return int(link.split("[", 1)[1].rstrip("]"))
    except (OSError, IndexError, ValueError):
        return 0
