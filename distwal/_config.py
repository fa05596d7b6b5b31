"""Configuration: the Config dataclass, its defaults, and the DISTWAL_* variables.

Precedence: an explicit init() argument, then the environment, then the default.
Every bad value raises ConfigError with one line that names it and the fix.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Mapping

from ._env import is_multi_node, run_id_from_env
from ._exceptions import ConfigError

ENV_DIR = "DISTWAL_DIR"
ENV_SINK = "DISTWAL_SINK"
ENV_DURABILITY = "DISTWAL_DURABILITY"
ENV_DISABLE_SENDER = "DISTWAL_DISABLE_SENDER"
ENV_RUN_ID = "DISTWAL_RUN_ID"
ENV_TOKEN = "DISTWAL_TOKEN"  # read by HTTP sinks at use time; never stored in a Config
ENV_SERVICE_NAME = "DISTWAL_SERVICE_NAME"  # the OTLP sink's service.name resource attribute
ENV_LEASE_S = "DISTWAL_LEASE_S"
ENV_EXIT_TIMEOUT = "DISTWAL_EXIT_TIMEOUT"
ENV_MAX_PENDING_BYTES = "DISTWAL_MAX_PENDING_BYTES"
ENV_ON_FULL = "DISTWAL_ON_FULL"
ENV_SHARED_GROUP = "DISTWAL_SHARED_GROUP"

DEFAULT_DIR = ".distwal"
DEFAULT_DURABILITY = "interval"
DEFAULT_INTERVAL = 0.02  # seconds between group commits
DEFAULT_LEASE_S = 15.0  # seconds
DEFAULT_EXIT_TIMEOUT = 5.0  # seconds
DEFAULT_HEARTBEAT_INTERVAL = 1.0  # seconds
DEFAULT_MAX_BUFFER_BYTES = 64 << 20
DEFAULT_MAX_RECORD_BYTES = 1 << 20
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_ON_FULL = "block"

DURABILITY_MODES = ("sync", "interval", "none")
ON_FULL_POLICIES = ("block", "drop", "raise")
SINK_SCHEMES = ("http", "https", "sqlite", "jsonl", "otlp+http", "otlp+https", "postgresql", "postgres",
                "mlflow+http", "mlflow+https")
# Sinks whose client library is an optional extra: scheme -> (module, package, extra).
_SINK_EXTRAS = {
    "otlp+http": ("opentelemetry.proto", "opentelemetry-proto", "otlp"),
    "otlp+https": ("opentelemetry.proto", "opentelemetry-proto", "otlp"),
    "postgresql": ("psycopg", "psycopg", "postgres"),
    "postgres": ("psycopg", "psycopg", "postgres"),
}


@dataclass(frozen=True)
class Config:
    """Everything a writer needs to know. Built by Config.load(); immutable afterwards."""

    dir: str
    sink: str
    run_id: str
    durability: str = DEFAULT_DURABILITY
    interval: float = DEFAULT_INTERVAL
    on_full: str = DEFAULT_ON_FULL
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_pending_bytes: int | None = None
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    lease_s: float = DEFAULT_LEASE_S
    exit_timeout: float = DEFAULT_EXIT_TIMEOUT
    disable_sender: bool = False
    shared_group: bool = False

    @classmethod
    def load(
        cls,
        dir: str | os.PathLike[str] | None = None,
        sink: str | None = None,
        durability: str | None = None,
        env: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Config:
        """Resolve arguments, then the environment, then defaults, and validate the result."""
        env = os.environ if env is None else env
        fields = {f.name for f in dataclasses.fields(cls)} - {"dir", "sink", "durability"}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ConfigError(
                f"unknown init() option {unknown[0]!r}: valid options are {', '.join(sorted(fields))}"
            )

        if dir is None:
            dir = env.get(ENV_DIR) or None
        if dir is None:
            if is_multi_node(env):
                raise ConfigError(
                    "a multi-node job needs a shared directory: set DISTWAL_DIR to a path "
                    "every node sees (for example on NFS)"
                )
            dir = DEFAULT_DIR
        abs_dir = os.path.abspath(os.fspath(dir))
        sink = sink or env.get(ENV_SINK) or f"sqlite:///{os.path.join(abs_dir, 'collected.db')}"

        values: dict[str, Any] = {
            "durability": durability or env.get(ENV_DURABILITY) or DEFAULT_DURABILITY,
            "on_full": env.get(ENV_ON_FULL) or DEFAULT_ON_FULL,
            "lease_s": _number(env, ENV_LEASE_S, float, DEFAULT_LEASE_S),
            "exit_timeout": _number(env, ENV_EXIT_TIMEOUT, float, DEFAULT_EXIT_TIMEOUT),
            "max_pending_bytes": _number(env, ENV_MAX_PENDING_BYTES, int, None),
            "disable_sender": _flag(env, ENV_DISABLE_SENDER),
            "shared_group": _flag(env, ENV_SHARED_GROUP),
            "run_id": run_id_from_env(env),
        }
        values.update(options)
        if "max_record_bytes" not in options and "max_buffer_bytes" in options:
            values["max_record_bytes"] = min(DEFAULT_MAX_RECORD_BYTES, options["max_buffer_bytes"])
        config = cls(dir=abs_dir, sink=sink, **values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.durability not in DURABILITY_MODES:
            raise ConfigError(
                f"durability {self.durability!r} is not one of {', '.join(DURABILITY_MODES)}: "
                f"fix {ENV_DURABILITY} or the durability argument"
            )
        if self.on_full not in ON_FULL_POLICIES:
            raise ConfigError(
                f"on_full {self.on_full!r} is not one of {', '.join(ON_FULL_POLICIES)}: fix {ENV_ON_FULL}"
            )
        scheme = self.sink.split("://", 1)[0].lower() if "://" in self.sink else ""
        if scheme not in SINK_SCHEMES:
            raise ConfigError(
                f"{ENV_SINK} (or sink=) {_redact(self.sink)!r} is not a URL distwal can send to: use "
                "http(s)://..., sqlite:///path/to.db, jsonl:///path/to/file.jsonl, otlp+http(s)://host:4318/v1/logs, "
                "postgresql://host/db or mlflow+http(s)://host:5000"
            )
        extra = _SINK_EXTRAS.get(scheme)
        if extra is not None and not _installed(extra[0]):
            module, package, name = extra
            raise ConfigError(f"{ENV_SINK} {_redact(self.sink)!r} needs the {package} package: pip install 'distwal[{name}]'")
        for name in ("interval", "heartbeat_interval", "lease_s", "exit_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ConfigError(f"{_name(name)} must be a positive number of seconds, got {value!r}")
        for name in ("max_buffer_bytes", "max_record_bytes", "segment_bytes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"{_name(name)} must be a positive number of bytes, got {getattr(self, name)!r}")
        if self.max_pending_bytes is not None and self.max_pending_bytes <= 0:
            raise ConfigError(f"{ENV_MAX_PENDING_BYTES} must be positive, got {self.max_pending_bytes!r}")
        if self.max_record_bytes > self.max_buffer_bytes:
            raise ConfigError(
                f"max_record_bytes ({self.max_record_bytes}) exceeds max_buffer_bytes "
                f"({self.max_buffer_bytes}): a record could never fit; lower it or raise the buffer"
            )

    def export(self, environ: dict[str, str] | os._Environ[str] | None = None) -> None:
        """Publish the directory, sink and run id so child processes join the same job."""
        environ = os.environ if environ is None else environ
        environ[ENV_DIR] = self.dir
        environ[ENV_SINK] = self.sink
        environ[ENV_RUN_ID] = self.run_id


_ENV_OF = {"lease_s": ENV_LEASE_S, "exit_timeout": ENV_EXIT_TIMEOUT, "durability": ENV_DURABILITY,
           "on_full": ENV_ON_FULL, "max_pending_bytes": ENV_MAX_PENDING_BYTES}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _name(option: str) -> str:
    """How to name an option in a message: its variable too, when it has one."""
    env = _ENV_OF.get(option)
    return f"{option} ({env})" if env else option


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name}={env[name]!r} is not a yes/no value: set it to 1 or 0, or unset it")


def _number(env: Mapping[str, str], name: str, kind: type, default: Any) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a {kind.__name__}: set it to a number or unset it") from None
    return value


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


# Query parameters that hold a secret in some sink's URL (libpq's password=, a signed URL's
# sig=, an API's token=...). Compared in lower case; names containing one of _SECRET_PARTS count too.
_SECRET_PARAMS = frozenset({"pass", "pwd", "sig", "key", "apikey", "api_key", "auth", "authorization", "code"})
_SECRET_PARTS = ("password", "passwd", "token", "secret", "signature", "credential")


def _is_secret_param(name: str) -> bool:
    name = name.lower()
    return name in _SECRET_PARAMS or any(part in name for part in _SECRET_PARTS)


def _split_secrets(url: str, mask: str | None) -> str:
    """`url` with its password (user info) and secret query parameters masked, or removed if mask is None."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        # A database role name is no secret (and libpq needs it to find ~/.pgpass); elsewhere
        # the user part may itself be a token, so all of it goes.
        if scheme.lower() not in ("postgresql", "postgres") or not user:
            user = ""
        if mask is None:
            netloc = f"{user}@{host}" if user else host
        else:
            netloc = f"{user}:{mask}@{host}" if user and has_password else f"{user or mask}@{host}"
    if "?" in tail:
        path, query = tail.split("?", 1)
        query, hash_mark, fragment = query.partition("#")
        kept = []
        for pair in query.split("&"):
            name = pair.split("=", 1)[0]
            if not _is_secret_param(name):
                kept.append(pair)
            elif mask is not None:
                kept.append(f"{name}={mask}")
        tail = path + ("?" + "&".join(kept) if kept else "") + hash_mark + fragment
    return f"{scheme}://{netloc}{tail}"


def public_url(url: str) -> str:
    """The URL with its secrets removed (a password, token=..., password=...): what may be written
    to the directory and compared with another process's sink."""
    return _split_secrets(url, None)


def _redact(url: str) -> str:
    """A URL fit for a message, a log line or status: its secrets replaced by ***."""
    return _split_secrets(url, "***")
