"""distwal.read(): the records a directory's sink has stored, read back through that sink.

    for record in distwal.read("runs/exp42", rank=0):
        print(record["seq"], record["data"]["loss"])

The sink is the one the directory recorded (its first leader's), else the one this process
is configured for (DISTWAL_SINK, else <dir>/collected.db). Only records the sink has
acknowledged are there; what is still on disk is `distwal cat`'s.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from ._config import Config, _redact
from ._exceptions import ConfigError
from .leader.election import recorded_sink


def sink_of(dir: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """(absolute directory, sink URL) that `dir` ships to: the recorded sink, else the configured one."""
    config = Config.load(dir=dir)
    return config.dir, recorded_sink(config.dir) or config.sink


def read(
    dir: str | os.PathLike[str] | None = None,
    run: str | None = None,
    rank: int | None = None,
    since: float | None = None,
    sink: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the delivered records of `dir` as envelopes (writer, seq, ts, host, pid, rank, run,
    local_rank, attempt, data), ordered by ts, then writer and seq; `since` is a unix time.
    `sink` reads that sink URL instead of the directory's (e.g. the SQLite file of a
    `distwal serve`).

    Raises ConfigError naming the sink when distwal cannot read it back (an HTTP endpoint:
    read the store behind it). A sink file that does not exist yet holds no records.
    """
    root, url = (os.path.abspath(dir or "."), sink) if sink else sink_of(dir)
    scheme, _, path = url.partition("://")
    scheme = scheme.lower()
    if scheme in ("sqlite", "jsonl") and path.startswith("/") and not os.path.exists(path):
        return iter(())  # nothing delivered yet; opening the sink would create the file
    from .sinks import sink_from_url

    opened = sink_from_url(url)
    try:
        records = opened.read(run, rank, since)
    except NotImplementedError as exc:
        opened.close()
        raise ConfigError(
            f"{root} ships to {_redact(url)}: {exc}; read the store behind it instead "
            "(for `distwal serve`: distwal read --sink sqlite:///<absolute path of its --db file>)"
        ) from None
    return _closing(opened, records)


def _closing(sink: Any, records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    try:
        yield from records
    finally:
        sink.close()
