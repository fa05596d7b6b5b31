"""Sinks: where the leader ships records. Look one up by URL with sink_from_url()."""

from __future__ import annotations

from .._exceptions import ConfigError, SinkError, SinkPaused, SinkRejected, SinkTooLarge, SinkUnavailable, StaleEpoch
from ._base import Batch, Chunk, MockSink, Sink

# A third-party sink needs nothing private: the interface and the errors it may raise
# (ConfigError for a URL it cannot use, the SinkError family for a batch it did not store).
__all__ = [
    "Batch",
    "Chunk",
    "ConfigError",
    "MockSink",
    "Sink",
    "SinkError",
    "SinkPaused",
    "SinkRejected",
    "SinkTooLarge",
    "SinkUnavailable",
    "StaleEpoch",
    "sink_from_url",
]


def sink_from_url(url: str) -> Sink:
    """The sink for `url`: http(s)://..., sqlite:///path/to.db, jsonl:///path/to/file.jsonl or
    otlp+http(s)://host:port/v1/logs or postgresql://[user@]host[:port]/db[?table=NAME&sslmode=...]."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme in ("http", "https"):
        from .http import HTTPSink

        return HTTPSink(url)
    if scheme in ("otlp+http", "otlp+https"):
        from .otlp import OTLPSink

        return OTLPSink(url)
    if scheme == "sqlite":
        from .sqlite import SQLiteSink

        return SQLiteSink(_local_path(url, rest))
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresSink

        return PostgresSink(url)
    if scheme == "jsonl":
        from .jsonl import JSONLSink

        return JSONLSink(_local_path(url, rest))
    if scheme in ("mlflow+http", "mlflow+https"):
        from .mlflow import MLflowSink

        return MLflowSink(url)
    raise ConfigError(
        f"no sink for {url.split('://')[0]!r} URLs: use http(s)://, sqlite:///, jsonl:///, otlp+http(s)://, postgresql:// or mlflow+http(s)://"
    )


def _local_path(url: str, rest: str) -> str:
    # sqlite:///abs/path -> rest "/abs/path"; a host part is not supported.
    if not rest.startswith("/"):
        raise ConfigError(f"{url!r}: write an absolute path with three slashes, e.g. sqlite:///tmp/records.db")
    return rest
